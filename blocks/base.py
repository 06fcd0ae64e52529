"""The base of our block types."""

from __future__ import annotations

from prefect.blocks.core import Block


class AiravataBlock(Block):
    """Our blocks are configuration, read on every plan and bundle. Prefect would emit an event
    for each load; our own audit trail records what matters (who used which credential), and
    a command line that waits at exit to deliver load events is a slower one."""

    def _event_method_called_resources(self) -> None:
        return None
