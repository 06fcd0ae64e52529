"""Use cases: what the doors (CLI, REST API, Prefect flows and workers) ask of the system —
submit, lifecycle, credentials, resources, authorisation — composed from the domain and the
adapters. Doors import these, never the adapters directly (`make lint` checks)."""
