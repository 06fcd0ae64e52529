"""The scheduler service's TLS files (adapters/tls.py) on a real gRPC server: a client trusting
the service's CA gets an answer; one trusting another CA, or speaking plaintext, gets none. The
CA is made once and kept; the server certificate is reissued from it when it must change."""

from __future__ import annotations

import stat
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from airavata_prefect.adapters import tls
from airavata_prefect.adapters.tls import TlsFileError, TlsFiles, ensure_service_tls, site_tls

_METHOD = "/airavata.test.Echo/Echo"


def _identity(b: bytes) -> bytes:
    return b


def _echo(request: bytes, context: Any) -> bytes:
    return b"echo:" + request


@contextmanager
def _server(files: TlsFiles) -> Iterator[int]:
    """A real gRPC server on 127.0.0.1 with TLS from `files`; yields its port."""
    handler = grpc.method_handlers_generic_handler("airavata.test.Echo", {
        "Echo": grpc.unary_unary_rpc_method_handler(
            _echo, request_deserializer=_identity, response_serializer=_identity)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=(handler,))
    creds = grpc.ssl_server_credentials([(files.key.read_bytes(), files.cert.read_bytes())])
    port = server.add_secure_port("127.0.0.1:0", creds)
    assert port
    server.start()
    try:
        yield port
    finally:
        server.stop(grace=None)


def _call(channel: grpc.Channel) -> bytes:
    with channel:
        stub: Callable[..., bytes] = channel.unary_unary(
            _METHOD, request_serializer=_identity, response_deserializer=_identity)
        return stub(b"hi", timeout=5)


def _tls_call(target: str, ca: bytes, name: str | None = None) -> bytes:
    options = [("grpc.ssl_target_name_override", name)] if name else []
    return _call(grpc.secure_channel(
        target, grpc.ssl_channel_credentials(root_certificates=ca), options=options))


def _refused(fn: Callable[[], bytes]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        fn()
    return err.value.code()


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _sans(path: Path) -> set[str]:
    san = _cert(path).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {*san.get_values_for_type(x509.DNSName),
            *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))}


def test_real_grpc_server_trusted_only_through_its_ca(tmp_path: Path) -> None:
    files = ensure_service_tls(tmp_path / "tls", ["127.0.0.1"])
    other = ensure_service_tls(tmp_path / "other", ["127.0.0.1"])
    assert files.ca.read_bytes() != other.ca.read_bytes()
    with _server(files) as port:
        ca = files.ca.read_bytes()
        assert _tls_call(f"localhost:{port}", ca) == b"echo:hi"
        assert _tls_call(f"127.0.0.1:{port}", ca) == b"echo:hi"  # an IP address SAN
        assert _refused(lambda: _tls_call(f"localhost:{port}", other.ca.read_bytes())) \
            == grpc.StatusCode.UNAVAILABLE
        assert _refused(lambda: _call(grpc.insecure_channel(f"127.0.0.1:{port}"))) \
            == grpc.StatusCode.UNAVAILABLE
        # A name the certificate does not carry is refused, even by a client trusting the CA.
        assert _refused(lambda: _tls_call(f"127.0.0.1:{port}", ca, "scheduler.example")) \
            == grpc.StatusCode.UNAVAILABLE


def test_files_permissions_and_reuse(tmp_path: Path) -> None:
    d = tmp_path / "home" / "agent-tls"
    files = ensure_service_tls(d, ["scheduler.example", "10.1.2.3", "0.0.0.0"])
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    for key in (files.key, d / "ca.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert _sans(files.cert) == {"localhost", "127.0.0.1", "scheduler.example", "10.1.2.3"}
    ca = _cert(files.ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert (ca.not_valid_after_utc - datetime.now(UTC)).days >= 3649
    assert ca.subject == ca.issuer and _cert(files.cert).issuer == ca.subject
    before = {p: p.read_bytes() for p in (files.cert, files.key, files.ca, d / "ca.key")}
    # Asked again, with hosts it already names (in another spelling): nothing changes.
    again = ensure_service_tls(d, ["Scheduler.Example.", "localhost"])
    assert again == files
    assert {p: p.read_bytes() for p in before} == before
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]


def test_new_host_reissues_the_server_certificate_from_the_same_ca(tmp_path: Path) -> None:
    d = tmp_path / "tls"
    files = ensure_service_tls(d, ["a.example"])
    ca, ca_key, old_key = files.ca.read_bytes(), (d / "ca.key").read_bytes(), \
        files.key.read_bytes()
    with _server(files) as port:  # the old certificate does not name the new host
        assert _refused(lambda: _tls_call(f"127.0.0.1:{port}", ca, "b.example")) \
            == grpc.StatusCode.UNAVAILABLE
    ensure_service_tls(d, ["b.example"])
    assert files.ca.read_bytes() == ca and (d / "ca.key").read_bytes() == ca_key
    assert files.key.read_bytes() != old_key
    assert {"a.example", "b.example"} <= _sans(files.cert)  # the old host is kept
    _cert(files.cert).verify_directly_issued_by(_cert(files.ca))
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    with _server(files) as port:  # a client that trusted the CA before still does
        assert _tls_call(f"127.0.0.1:{port}", ca, "b.example") == b"echo:hi"
        assert _tls_call(f"127.0.0.1:{port}", ca, "a.example") == b"echo:hi"


def test_certificate_near_expiry_is_reissued(tmp_path: Path) -> None:
    d = tmp_path / "tls"
    files = ensure_service_tls(d, [])
    ca_key = serialization.load_pem_private_key((d / "ca.key").read_bytes(), password=None)
    names, ips = tls._wanted([])
    key, cert = tls._issue_server(ca_key, _cert(files.ca), names, ips,  # type: ignore[arg-type]
                                  days=10)
    files.key.write_bytes(tls._key_pem(key))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    ca = files.ca.read_bytes()
    ensure_service_tls(d, [])
    assert files.ca.read_bytes() == ca
    left = _cert(files.cert).not_valid_after_utc - datetime.now(UTC)
    assert left.days > 300


def test_concurrent_first_calls_make_one_ca(tmp_path: Path) -> None:
    d = tmp_path / "tls"
    out: list[bytes] = []
    barrier = threading.Barrier(6)

    def go() -> None:
        barrier.wait()
        files = ensure_service_tls(d, ["x.example"])
        out.append(files.ca.read_bytes() + files.cert.read_bytes())

    threads = [threading.Thread(target=go) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 6 and len(set(out)) == 1


def test_bad_hosts_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="without port"):
        ensure_service_tls(tmp_path / "tls", ["scheduler.example:50051"])


def test_site_tls_checks_its_files(tmp_path: Path) -> None:
    made = ensure_service_tls(tmp_path / "made", [])
    files = site_tls(made.cert, made.key, made.ca)
    assert files == TlsFiles(made.cert, made.key, made.ca)
    missing = tmp_path / "nope.pem"
    for args in [(missing, made.key, made.ca), (made.cert, missing, made.ca),
                 (made.cert, made.key, missing)]:
        with pytest.raises(TlsFileError, match=str(missing)):
            site_tls(*args)
    with pytest.raises(ValueError, match="no PEM certificate"):
        site_tls(made.key, made.key, None)
    with pytest.raises(TlsFileError, match="not a PEM private key"):
        site_tls(made.cert, made.cert, made.ca)
    other = ensure_service_tls(tmp_path / "other", [])
    with pytest.raises(TlsFileError, match="not the key of the certificate"):
        site_tls(made.cert, other.key, made.ca)
    unreadable = tmp_path / "locked.key"
    unreadable.write_bytes(made.key.read_bytes())
    unreadable.chmod(0)
    try:
        if not _can_read(unreadable):
            with pytest.raises(TlsFileError, match="not readable"):
                site_tls(made.cert, unreadable, made.ca)
    finally:
        unreadable.chmod(0o600)
    # Without a CA: a leaf alone is refused; its chain up to a self-signed root is trusted.
    with pytest.raises(TlsFileError, match="self-signed root"):
        site_tls(made.cert, made.key, None)
    chain = tmp_path / "chain.pem"
    chain.write_bytes(made.cert.read_bytes() + made.ca.read_bytes())
    files = site_tls(chain, made.key, None)
    assert files.ca == chain
    with _server(files) as port:
        assert _tls_call(f"localhost:{port}", files.ca.read_bytes()) == b"echo:hi"


def _can_read(path: Path) -> bool:
    """Whether this process reads it even at mode 0 (root does)."""
    try:
        path.read_bytes()
    except PermissionError:
        return False
    return True

