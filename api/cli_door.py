"""One command, two doors: in server mode the REST API answers (api/client.py), in local mode
the use cases do, as the OS login. Both answers come back in the API's JSON shape, so a
command prints (and `--json` emits) the same thing either way."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any, TypeVar

from airavata_prefect.api.client import ApiClient, client
from airavata_prefect.usecases.context import Context, open_context
from airavata_prefect.usecases.settings import get_settings

T = TypeVar("T")


def either(remote: Callable[[ApiClient], T], local: Callable[[Context], T]) -> T:
    """`remote(api)` in server mode, else `local(ctx)` with the local context open."""
    api = client(get_settings())
    if api is not None:
        try:
            return remote(api)
        finally:
            api.close()
    with open_context() as ctx:
        return local(ctx)


def plain(obj: Any) -> Any:
    """A use case's record as the API's JSON shows it (properties marked in `extra` too)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: plain(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    return obj


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def default_project() -> str:
    return get_settings().project


__all__ = ["default_project", "either", "plain", "print_json"]
