"""Our lifecycle events (domain/events.py) into Prefect's event system, and back out of it.

Sending never blocks and never raises into the caller: `emit` queues the event (a bounded
queue; when it is full the oldest is dropped) and one daemon thread per process sends what is
queued in batches, as Prefect events (`prefect.events.Event`), through the Prefect API's
`POST /events` (the same pipeline the websocket events client feeds: persisted, and seen by
automations). When the API does not answer, a warning is logged once (again only after it
answered in between), the batch is kept and tried again with back-off, and the process exits
without waiting for it. At exit, whatever is queued gets a few seconds to go out.

Nothing is sent while PREFECT_API_URL is unset (this machine alone, without Prefect): never
to a temporary server of Prefect's own, which `prefect.events.emit_event` would start.

Reading back (`read_events`, `read_logs`) raises EventsUnavailable with one line when the API
does not answer."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx

from airavata_prefect.domain.events import LifecycleEvent, SeenEvent, correlation_resource

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient

log = logging.getLogger("airavata.events")

MAX_QUEUED = 10_000  # events waiting to be sent; beyond it the oldest are dropped
BATCH = 200  # events per request
SEND_TIMEOUT = 5.0  # seconds per request
MAX_BACKOFF = 30.0  # seconds between tries while the API does not answer
EXIT_SECONDS = 3.0  # what is queued at exit gets this long to go out
READ_TIMEOUT = 15.0
EVENTS_PAGE = 50  # the most the events API returns per page
LOGS_PAGE = 200  # the most the logs API returns per request


class EventsUnavailable(RuntimeError):
    """The Prefect API could not be read; the message says where it was looked for."""


def api_url() -> str | None:
    """The Prefect API events go to (the environment's, as adapters/prefect_api.py reads it)."""
    return os.environ.get("PREFECT_API_URL") or None


def _client(url: str, timeout: float) -> SyncPrefectClient:
    """A client of the API at `url`, with Prefect's own authentication and TLS settings, and
    never a temporary server (get_client makes one when no URL is configured)."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_KEY

    return SyncPrefectClient(url, auth_string=PREFECT_API_AUTH_STRING.value(),
                             api_key=PREFECT_API_KEY.value(),
                             httpx_settings={"timeout": timeout})


def to_prefect(event: LifecycleEvent) -> Any:
    """The Prefect event of one of ours (validated by Prefect's own schema)."""
    from prefect.events import Event, RelatedResource, Resource

    return Event(id=event.id, occurred=event.occurred, event=event.name,
                 resource=Resource(event.resource()),
                 related=[RelatedResource(r) for r in event.related()],
                 payload=event.payload())


class _Rejected(Exception):
    """The API refused the batch (4xx): sending it again would not help."""


class _Sender:
    """The queue and the one thread that empties it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.queue: deque[LifecycleEvent] = deque()
        self.sending = 0  # taken from the queue, not yet sent (or given up)
        self.down = False  # the last try failed: flush does not wait for it
        self.retry_now = False  # a flush wants the next try now, not after the back-off
        self.exiting = False  # at exit: what fails is counted once, not warned about
        self.warned: set[str] = set()
        self.thread: threading.Thread | None = None
        self.client: SyncPrefectClient | None = None
        self.client_url: str | None = None

    def warn_once(self, what: str, message: str, *args: object) -> None:
        if what not in self.warned and not self.exiting:
            self.warned.add(what)
            log.warning(message, *args)

    def put(self, event: LifecycleEvent) -> None:
        with self.lock:
            if len(self.queue) >= MAX_QUEUED:
                self.queue.popleft()
                self.warn_once("full", "Prefect events: more than %d waiting to be sent; the "
                               "oldest are dropped", MAX_QUEUED)
            self.queue.append(event)
            if self.thread is None or not self.thread.is_alive():
                if self.thread is None:
                    atexit.register(_at_exit, self)
                self.thread = threading.Thread(target=self.run, name="airavata-events",
                                               daemon=True)
                self.thread.start()
            self.changed.notify_all()

    def run(self) -> None:
        with contextlib.suppress(Exception):  # before the first batch needs it
            import prefect.events  # noqa: F401
        backoff = 0.0
        while True:
            with self.lock:
                while not self.queue:
                    self.changed.wait()
                batch = [self.queue.popleft() for _ in range(min(BATCH, len(self.queue)))]
                self.sending = len(batch)
            try:
                try:
                    self.send(batch)
                except _Rejected as exc:  # it answered: not an outage
                    self.warn_once("rejected", "Prefect events: the API refused %d event(s): "
                                   "%s", len(batch), exc)
                backoff = 0.0
                with self.lock:
                    self.down = False
                    self.warned.discard("down")  # a later outage is worth a warning again
            except Exception as exc:
                self.close_client()
                self.warn_once("down", "Prefect events are not being sent: the Prefect API at "
                               "%s does not answer (%s); trying again", api_url(),
                               _reason(exc))
                with self.lock:
                    self.down = True
                    room = MAX_QUEUED - len(self.queue)
                    self.queue.extendleft(reversed(batch[:max(room, 0)]))
                backoff = min(MAX_BACKOFF, max(1.0, backoff * 2))
            finally:
                with self.lock:
                    self.sending = 0
                    self.changed.notify_all()
            if backoff:  # until the back-off ends, or a flush asks to try now
                with self.lock:
                    self.changed.wait_for(lambda: self.retry_now, timeout=backoff)
                    self.retry_now = False

    def send(self, batch: list[LifecycleEvent]) -> None:
        url = api_url()
        if url is None:
            return  # unset since: nowhere to send them
        import prefect.events  # noqa: F401  (failing, e.g. at exit, keeps the batch)

        docs = []
        for event in batch:
            try:
                docs.append(to_prefect(event).model_dump(mode="json"))
            except Exception as exc:  # a bug of ours: that event, not the others
                self.warn_once(f"invalid:{event.type}", "Prefect events: %s not sent: %s",
                               event.type, exc)
        if not docs:
            return
        if self.client is None or self.client_url != url:
            self.close_client()
            self.client = _client(url, SEND_TIMEOUT).__enter__()
            self.client_url = url
        try:
            self.client.request("POST", "/events", json=docs)
        except httpx.HTTPStatusError as exc:
            if 400 <= exc.response.status_code < 500 and exc.response.status_code != 429:
                raise _Rejected(f"HTTP {exc.response.status_code}: "
                                f"{exc.response.text[:300]}") from None
            raise

    def close_client(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.__exit__(None, None, None)
        self.client, self.client_url = None, None

    def flush(self, timeout: float, *, retry: bool = True) -> bool:
        """Wait until everything queued is sent; False at the deadline. While the API did not
        answer, `retry` has it tried again now (else: False at once, as at exit)."""
        deadline = time.monotonic() + timeout
        with self.lock:
            if self.down and retry:
                self.retry_now = True
                self.changed.notify_all()
            while self.queue or self.sending:
                left = deadline - time.monotonic()
                if (self.down and not retry) or left <= 0:
                    return False
                self.changed.wait(min(left, 0.1))
        return True


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _at_exit(sender: _Sender) -> None:
    if sender is not _sender:
        return  # a sender from before a fork
    sender.exiting = True
    if not sender.flush(EXIT_SECONDS, retry=False):
        with sender.lock:
            left = len(sender.queue) + sender.sending
        if left:
            log.warning("Prefect events: %d event(s) not sent at exit", left)


_sender = _Sender()


def _after_fork() -> None:
    global _sender
    _sender = _Sender()  # the thread (and the lock it may have held) stayed in the parent


os.register_at_fork(after_in_child=_after_fork)


def emit(event: LifecycleEvent) -> None:
    """Queue the event for Prefect; returns at once, never raises."""
    try:
        if api_url() is None:
            return
        _sender.put(event)
    except Exception as exc:  # pragma: no cover - a queue append does not fail
        log.debug("event %s not queued: %s", event.type, exc)


def discard_pending() -> int:
    """Drop what is queued, unsent, and stay quiet at exit (a test session ending, whose
    Prefect server may be gone before its last events were sent). How many were dropped."""
    with _sender.lock:
        dropped = len(_sender.queue)
        _sender.queue.clear()
        _sender.exiting = True
    return dropped


def flush(timeout: float = 10.0, *, retry: bool = True) -> bool:
    """Wait (at most `timeout` s) until every queued event is sent. True when they were. An
    API that did not answer is tried again now (`retry`), else it is not waited for."""
    return _sender.flush(timeout, retry=retry)


# -- reading back --------------------------------------------------------------------------------


def _unavailable(url: str, exc: BaseException) -> EventsUnavailable:
    if isinstance(exc, httpx.HTTPStatusError):
        why = f"HTTP {exc.response.status_code}"
    else:
        why = _reason(exc)
    return EventsUnavailable(f"the Prefect API at {url} does not answer ({why})")


def _url() -> str:
    url = api_url()
    if url is None:
        raise EventsUnavailable("PREFECT_API_URL is not set (start the embedded default with "
                                "`airavata server start`)")
    return url


def read_events(correlation_id: str, *, limit: int = 1000) -> list[SeenEvent]:
    """Every event related to the correlation id's resource, oldest first (at most `limit`)."""
    from prefect.events.filters import EventFilter, EventOrder, EventRelatedFilter

    url = _url()
    wanted = EventFilter(related=EventRelatedFilter(id=[correlation_resource(correlation_id)]),
                         order=EventOrder.ASC)
    docs: list[dict[str, Any]] = []
    try:
        with _client(url, READ_TIMEOUT) as client:
            page = client.read_events(wanted, limit=min(EVENTS_PAGE, limit))
            docs += [e.model_dump(mode="json") for e in page.events]
            while page.next_page and len(docs) < limit:
                page = client.read_events_page(str(page.next_page))
                docs += [e.model_dump(mode="json") for e in page.events]
    except (httpx.HTTPError, OSError) as exc:
        raise _unavailable(url, exc) from None
    return [SeenEvent.from_json(d) for d in docs[:limit]]


@dataclass(frozen=True)
class PrefectLog:
    """A flow or task run's log line as the Prefect API keeps it."""

    at: datetime
    level: int
    name: str  # the logger's
    message: str
    flow_run_id: str | None
    task_run_id: str | None


MAX_LOG_SCAN = 20_000  # log lines of the given flow runs read, at most


def read_logs(text: str, flow_run_ids: Collection[str], *, limit: int = 500
              ) -> list[PrefectLog]:
    """The log lines of these flow runs (and their task runs) that contain `text`, oldest
    first (at most `limit`, of at most MAX_LOG_SCAN read). Matched here rather than by the
    server's text search, which fails on the SQLite of the embedded default (no `concat`
    before SQLite 3.44) and scans every run's logs on a big server."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    ids = sorted({i for i in flow_run_ids if _is_uuid(i)})
    if not ids:
        return []
    url = _url()
    wanted = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[uuid.UUID(i) for i in ids]))
    out: list[PrefectLog] = []
    seen = 0
    try:
        with _client(url, READ_TIMEOUT) as client:
            while len(out) < limit and seen < MAX_LOG_SCAN:
                batch = client.read_logs(wanted, limit=LOGS_PAGE, offset=seen,
                                         sort=LogSort.TIMESTAMP_ASC)
                seen += len(batch)
                out += [PrefectLog(
                    at=(line.timestamp if line.timestamp.tzinfo else
                        line.timestamp.replace(tzinfo=UTC)),
                    level=line.level, name=line.name, message=line.message,
                    flow_run_id=str(line.flow_run_id) if line.flow_run_id else None,
                    task_run_id=str(line.task_run_id) if line.task_run_id else None)
                    for line in batch if text in line.message]
                if len(batch) < LOGS_PAGE:
                    break
    except (httpx.HTTPError, OSError) as exc:
        raise _unavailable(url, exc) from None
    return out[:limit]


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


__all__ = ["EventsUnavailable", "PrefectLog", "api_url", "discard_pending", "emit", "flush",
           "read_events",
           "read_logs", "to_prefect"]
