"""Bundles on the worker's side: open the resource with short-lived secrets, stage, launch,
follow, collect, and report every instance's state to the store."""
