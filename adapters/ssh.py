"""SSH (paramiko): a login node or bare-metal host reached with a key from OpenBao.

Host keys are pinned: the block carries the host's public key, and a host that presents any
other key, or that we hold no key for, is refused (never auto-accepted). The private key comes
from OpenBao as text and lives only in memory; it is never written to disk.
"""

from __future__ import annotations

import base64
import io
import select
import threading
import time
from dataclasses import dataclass
from typing import BinaryIO

import paramiko

from airavata_prefect.adapters.hosts import CommandResult, HostError, Stdin

_KEY_TYPES: tuple[type[paramiko.PKey], ...] = (paramiko.Ed25519Key, paramiko.ECDSAKey,
                                                paramiko.RSAKey)


@dataclass(frozen=True)
class SSHEndpoint:
    host: str
    port: int
    username: str
    host_key: str  # "ssh-ed25519 AAAA..." (the public key: not a secret)

    @property
    def name(self) -> str:
        return f"{self.username}@{self.host}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


class HostKeyRefused(HostError):
    """The server's host key is not the pinned one."""


def load_private_key(text: str, passphrase: str | None = None) -> paramiko.PKey:
    """Any OpenSSH/PEM private key held as text (never a file)."""
    for cls in _KEY_TYPES:
        try:
            return cls.from_private_key(io.StringIO(text), password=passphrase)
        except paramiko.PasswordRequiredException:
            raise HostError("the SSH private key is encrypted and no passphrase was "
                            "given") from None
        except (paramiko.SSHException, ValueError):
            continue
    raise HostError("the SSH private key could not be read (expected an OpenSSH or PEM "
                    "ed25519, ECDSA or RSA key)")


def _pinned_key(endpoint: SSHEndpoint) -> paramiko.PKey:
    parts = endpoint.host_key.split()
    if len(parts) < 2:
        raise HostError(f"host key for {endpoint.name} must be 'TYPE BASE64', got "
                        f"{endpoint.host_key[:40]!r}")
    try:
        return paramiko.PKey.from_type_string(parts[0], base64.b64decode(parts[1]))
    except Exception:
        raise HostError(f"host key for {endpoint.name} is not a valid {parts[0]} public "
                        "key") from None


class SSHHost:
    """One SSH connection; commands run on channels of it. Reconnects when it drops."""

    def __init__(self, endpoint: SSHEndpoint, private_key: str, *,
                 passphrase: str | None = None, timeout: float = 15.0) -> None:
        self.endpoint = endpoint
        self.name = endpoint.name
        self._key = load_private_key(private_key, passphrase)
        self._pinned = _pinned_key(endpoint)
        self._timeout = timeout
        self._client: paramiko.SSHClient | None = None
        self._lock = threading.Lock()

    def _connect(self) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        client.get_host_keys().add(self.endpoint.known_hosts_name, self._pinned.get_name(),
                                   self._pinned)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(self.endpoint.host, port=self.endpoint.port,
                           username=self.endpoint.username, pkey=self._key,
                           timeout=self._timeout, banner_timeout=self._timeout,
                           auth_timeout=self._timeout, look_for_keys=False, allow_agent=False)
        except paramiko.BadHostKeyException:
            client.close()
            raise HostKeyRefused(f"{self.name} presented a host key that differs from the "
                                 "pinned one: refusing to connect") from None
        except paramiko.AuthenticationException:
            client.close()
            raise HostError(f"{self.name} refused our key (authentication failed)") from None
        except paramiko.SSHException as exc:
            client.close()
            if "not found in known_hosts" in str(exc):
                raise HostKeyRefused(f"{self.name} presented a host key of another type than "
                                     "the pinned one: refusing to connect") from None
            raise HostError(f"SSH to {self.name} failed: {exc}") from None
        except OSError as exc:
            client.close()
            raise HostError(f"cannot reach {self.name}: {exc.strerror or exc}") from None
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(15)
        return client

    def client(self) -> paramiko.SSHClient:
        with self._lock:
            transport = self._client.get_transport() if self._client else None
            if self._client is None or transport is None or not transport.is_active():
                if self._client is not None:
                    self._client.close()
                self._client = self._connect()
            return self._client

    def run(self, command: str, *, stdin: Stdin | None = None,
            timeout: float | None = None, stdout: BinaryIO | None = None) -> CommandResult:
        start = stdin.tell() if stdin is not None and not isinstance(stdin, bytes) else 0
        out_start = stdout.tell() if stdout is not None else 0
        for attempt in (0, 1):  # one reconnect: a dropped connection is not a failed command
            try:
                if stdin is not None and not isinstance(stdin, bytes):
                    stdin.seek(start)  # the retry sends the file from its start again
                if stdout is not None:  # and writes its output afresh
                    stdout.seek(out_start)
                    stdout.truncate()
                return self._run_once(command, stdin, timeout, stdout)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                if attempt:
                    raise HostError(f"SSH to {self.name} dropped: {exc}") from None
                self.drop()
        raise AssertionError("unreachable")

    def _run_once(self, command: str, stdin: Stdin | None, timeout: float | None,
                  stdout: BinaryIO | None = None) -> CommandResult:
        transport = self.client().get_transport()
        assert transport is not None
        chan = transport.open_session(timeout=self._timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            chan.exec_command(command)
            if isinstance(stdin, bytes):
                chan.sendall(stdin)
            elif stdin is not None:
                while chunk := stdin.read(1 << 20):  # streamed: never the whole file in memory
                    chan.sendall(chunk)
            chan.shutdown_write()
            out, err = bytearray(), bytearray()
            # Drain both streams while waiting, so a full stderr window cannot stall the remote.
            # Read until the channel's EOF, which ends both streams: the exit status may come
            # before the last of stderr.
            while not (chan.eof_received and chan.exit_status_ready()) or chan.recv_ready() \
                    or chan.recv_stderr_ready():
                if deadline is not None and time.monotonic() > deadline:
                    raise HostError(f"command on {self.name} timed out after {timeout} s: "
                                    f"{command[:80]}")
                select.select([chan], [], [], 0.05)
                while chan.recv_ready():
                    if stdout is not None:
                        stdout.write(chan.recv(1 << 16))
                    else:
                        out += chan.recv(1 << 16)
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(1 << 16)
            return CommandResult(chan.recv_exit_status(), bytes(out), bytes(err))
        finally:
            chan.close()

    def sftp(self) -> paramiko.SFTPClient:
        return self.client().open_sftp()

    def drop(self) -> None:
        """Forget the connection (the next command reconnects)."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def close(self) -> None:
        self.drop()


__all__ = ["HostKeyRefused", "SSHEndpoint", "SSHHost", "load_private_key"]
