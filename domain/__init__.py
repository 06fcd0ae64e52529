"""The domain: the experiment spec, its task graph, placement, task states and endings, and the
scheduler's pure logic. It imports nothing of ours but itself (`make lint` checks)."""
