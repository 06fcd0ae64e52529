"""The compute kinds, for the doors that serve them (Prefect worker types, templates, help).
Each kind is its block class (blocks/compute.py); this is how a door reaches them."""

from __future__ import annotations

from typing import Any

from airavata_prefect.blocks import COMPUTE_KINDS, ComputeBlock


def compute_kinds() -> dict[str, type[ComputeBlock]]:
    return dict(COMPUTE_KINDS)


def base_job_templates() -> dict[str, dict[str, Any]]:
    """Each kind's work pool base job template, by kind."""
    return {name: kind.base_job_template() for name, kind in COMPUTE_KINDS.items()}


__all__ = ["ComputeBlock", "base_job_templates", "compute_kinds"]
