"""The CLI's server mode: a client of the REST API. Its address comes from AIRAVATA_API_URL or
`airavata config set server URL` (`home`/cli/config.json); its tokens from `airavata auth
login`, kept in `home`/cli/token.json (0600). An expired access token is refreshed once, on
its own. In server mode the CLI talks to this API only: never to the database, OpenBao or
SpiceDB."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from airavata_prefect.usecases.settings import Settings

TIMEOUT = httpx.Timeout(60.0, connect=10.0)


class RemoteError(Exception):
    """The API refused or failed: its envelope's message, and the exit status it maps to."""

    def __init__(self, status: int, code: str, message: str, correlation_id: str = "") -> None:
        self.status, self.code, self.correlation_id = status, code, correlation_id
        super().__init__(message)

    @property
    def exit_code(self) -> int:
        if self.status in (401, 403):
            return 4
        if self.code == "no_placement":
            return 3
        if self.status in (400, 404, 409, 413, 422):
            return 2
        return 1


def _cli_dir(settings: Settings) -> Path:
    return Path(settings.home) / "cli"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_private(path: Path, data: dict[str, Any]) -> None:
    """Written 0600 from the start (never readable by others, not even for a moment)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def config(settings: Settings) -> dict[str, Any]:
    return _read_json(_cli_dir(settings) / "config.json")


def set_config(settings: Settings, key: str, value: str | None) -> None:
    data = config(settings)
    if value is None:
        data.pop(key, None)
    else:
        data[key] = value
    _write_private(_cli_dir(settings) / "config.json", data)


def server_url(settings: Settings) -> str | None:
    url = settings.api_url or config(settings).get("server")
    return str(url).rstrip("/") if url else None


def _error(r: httpx.Response) -> RemoteError:
    try:
        body = r.json()["error"]
        return RemoteError(r.status_code, str(body.get("code", "error")),
                           str(body.get("message", r.text)), str(body.get("correlation_id", "")))
    except (ValueError, KeyError, TypeError, AttributeError):
        return RemoteError(r.status_code, "error", f"HTTP {r.status_code}: {r.text[:300]}")


class ApiClient:
    def __init__(self, settings: Settings, base: str) -> None:
        self.settings = settings
        self.base = base
        self.api = base if base.endswith("/api/v1") else base + "/api/v1"
        self.token_file = _cli_dir(settings) / "token.json"
        self._http = httpx.Client(timeout=TIMEOUT)

    def close(self) -> None:
        self._http.close()

    # -- tokens ------------------------------------------------------------------------------

    def tokens(self) -> dict[str, Any]:
        data = _read_json(self.token_file)
        return data if data.get("server") == self.api else {}

    def save_tokens(self, username: str, body: dict[str, Any]) -> None:
        _write_private(self.token_file, {"server": self.api, "username": username,
                                         "access_token": body["access_token"],
                                         "refresh_token": body["refresh_token"]})

    def forget(self) -> None:
        self.token_file.unlink(missing_ok=True)

    def _refresh(self) -> bool:
        saved = self.tokens()
        if not saved.get("refresh_token"):
            return False
        r = self._http.post(f"{self.api}/auth/refresh",
                            json={"refresh_token": saved["refresh_token"]})
        if r.status_code != 200:
            return False
        self.save_tokens(saved.get("username", ""), r.json())
        return True

    # -- calls -------------------------------------------------------------------------------

    def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        token = self.tokens().get("access_token")
        headers = {**kw.pop("headers", {}), **({"Authorization": f"Bearer {token}"}
                                              if token else {})}
        try:
            return self._http.request(method, self.api + path, headers=headers, **kw)
        except httpx.HTTPError as exc:
            raise RemoteError(0, "unavailable", f"the API at {self.api} does not answer: "
                              f"{type(exc).__name__}") from None

    def call(self, method: str, path: str, *, anonymous: bool = False, **kw: Any) -> Any:
        """The JSON answer (None for 204); RemoteError for any refusal or failure."""
        if not anonymous and not self.tokens().get("access_token"):
            raise RemoteError(401, "unauthenticated", f"not signed in to {self.api}: "
                              "run `airavata auth login`")
        r = self._send(method, path, **kw)
        if r.status_code == 401 and not anonymous and self._refresh():
            r = self._send(method, path, **kw)
        if r.status_code >= 400:
            err = _error(r)
            if r.status_code == 401 and not anonymous:
                err = RemoteError(401, err.code, f"{err}: run `airavata auth login`",
                                  err.correlation_id)
            raise err
        if r.status_code == 204 or not r.content:
            return None
        ctype = r.headers.get("content-type", "")
        return r.json() if ctype.startswith("application/json") else r.text

    @contextmanager
    def download(self, path: str, params: dict[str, Any] | None = None,
                 chunk: int = 1 << 20) -> Iterator[Iterator[bytes]]:
        """A binary answer as it arrives, chunk by chunk (`call` reads whole answers)."""
        if not self.tokens().get("access_token"):
            raise RemoteError(401, "unauthenticated", f"not signed in to {self.api}: "
                              "run `airavata auth login`")
        try:
            for attempt in (1, 2):  # an expired access token is refreshed once
                headers = {"Authorization": f"Bearer {self.tokens().get('access_token', '')}"}
                with self._http.stream("GET", self.api + path, params=params, headers=headers,
                                       timeout=httpx.Timeout(60.0, read=None)) as r:
                    if r.status_code == 401 and attempt == 1 and self._refresh():
                        continue
                    if r.status_code >= 400:
                        r.read()
                        raise _error(r)
                    yield r.iter_bytes(chunk)
                    return
        except httpx.HTTPError as exc:
            raise RemoteError(0, "unavailable", f"the API at {self.api} failed while sending "
                              f"{path}: {type(exc).__name__}") from None

    def stream(self, path: str, params: dict[str, Any] | None = None
               ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Server-Sent Events as (event, data) until the server closes the stream."""
        token = self.tokens().get("access_token")
        headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
        with self._http.stream("GET", self.api + path, headers=headers, params=params,
                               timeout=httpx.Timeout(60.0, read=None)) as r:
            if r.status_code >= 400:
                r.read()
                raise _error(r)
            event, data = "message", ""
            for line in r.iter_lines():
                if not line:
                    if data:
                        yield event, json.loads(data)
                    event, data = "message", ""
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data += line[5:].strip()


def client(settings: Settings) -> ApiClient | None:
    """The API client when the CLI is in server mode, else None (local mode)."""
    base = server_url(settings)
    return ApiClient(settings, base) if base else None


__all__ = ["ApiClient", "RemoteError", "client", "config", "server_url", "set_config"]
