"""/resources and /credentials (built next)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["resources"])
