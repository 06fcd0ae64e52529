"""The experiment domain (spec, graph, states) and the Prefect flows that run it."""
