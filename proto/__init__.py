"""Placeholder package: see the issue that introduces it (layout in DESIGN.md)."""
