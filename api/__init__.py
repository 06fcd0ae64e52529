"""The REST API, the scheduler service for agents, and the `airavata` CLI."""
