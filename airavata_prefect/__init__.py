"""Airavata Scheduler on Prefect: experiment orchestration for research computing.

One import name for the whole distribution: the repository's top-level folders (`domain/`,
`usecases/`, `adapters/`, `blocks/`, `flows/`, `agent/`, `api/`, `proto/`) are its subpackages,
linked here, so `pip install` adds `airavata_prefect` and nothing else to site-packages.
"""
