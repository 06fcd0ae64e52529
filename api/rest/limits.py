"""Per-identity rate limits (sliding window, in this process): sign-in attempts and writes."""

from __future__ import annotations

import math
import threading
import time
from collections import deque

from airavata_prefect.usecases.errors import RateLimited


class Limiter:
    def __init__(self, window: float = 60.0) -> None:
        self.window = window
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str, limit: int, what: str) -> None:
        """Count one attempt under `key`; RateLimited when it is over `limit` per window."""
        now = time.monotonic()
        with self._lock:
            hits = self._hits.setdefault(key, deque())
            while hits and hits[0] <= now - self.window:
                hits.popleft()
            if len(hits) >= limit:
                retry = max(1, math.ceil(hits[0] + self.window - now))
                raise RateLimited(f"too many {what}: at most {limit} a minute; "
                                  f"retry in {retry} s", retry)
            hits.append(now)
            if len(self._hits) > 100_000:  # forget idle keys rather than grow without bound
                for k in [k for k, v in self._hits.items() if not v][:50_000]:
                    del self._hits[k]


__all__ = ["Limiter"]
