"""Correlation ids: one per request or command, in every audit row, log line and API error."""

from __future__ import annotations

import contextvars
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("correlation_id",
                                                                       default=None)


def correlation_id() -> str:
    """The current id, made on first use."""
    value = _current.get()
    if value is None:
        value = uuid.uuid4().hex[:16]
        _current.set(value)
    return value


@contextmanager
def correlated(value: str | None = None) -> Iterator[str]:
    token = _current.set(value or uuid.uuid4().hex[:16])
    try:
        yield _current.get() or ""
    finally:
        _current.reset(token)


class CorrelationFilter(logging.Filter):
    """Adds `correlation_id` to log records (use %(correlation_id)s in formats)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.correlation_id = correlation_id()
        return True


LOG_FORMAT = "%(asctime)s %(levelname)s [%(correlation_id)s] %(name)s: %(message)s"


def log_to_stderr(level: int = logging.INFO) -> None:
    """Our `airavata.*` loggers to stderr, each line with its correlation id (idempotent)."""
    logger = logging.getLogger("airavata")
    if any(getattr(h, "_airavata", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(CorrelationFilter())
    handler._airavata = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
