"""Prefect worker types and the pilot agent that runs on compute nodes."""
