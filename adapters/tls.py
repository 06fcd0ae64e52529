"""TLS files for the scheduler service that pilot agents reach over gRPC.

Agents run on compute nodes and send their tokens over the network, so the port is always TLS.
A site may bring its own certificate (`site_tls`); otherwise the service makes its own small CA
on first start (`ensure_service_tls`) and signs its server certificate with it. Agents are given
the CA's certificate to trust, so the CA is kept for good: when the server certificate must
change (a host it does not name, or fewer than 30 days left) a new one is issued from the same
CA and agents that already trust it keep working.

Keys are written 0600 in a 0700 directory. Files are written under temporary names and moved
into place (atomic), and the whole check-and-issue runs under a lock file, so two processes
starting at once end with one CA and one matching certificate and key.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import secrets
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
SERVER_DAYS = 397
RENEW_WITHIN = timedelta(days=30)
_SKEW = timedelta(minutes=5)  # compute nodes' clocks may lag a little
_ALWAYS = ("localhost", "127.0.0.1")

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class TlsFileError(ValueError):
    """A TLS file is missing, unreadable or not what it should be; the message names it."""


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the server's certificate (chain) and key, and what clients trust."""

    cert: Path
    key: Path
    ca: Path


# -- names -------------------------------------------------------------------------------------

def _parse_host(host: str) -> _IPAddress | str | None:
    """An address, or a lower-case DNS name; None for a wildcard listen address (0.0.0.0, ::),
    which no client dials."""
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        return None if ip.is_unspecified else ip
    if not text or ":" in text or "/" in text or any(c.isspace() for c in text):
        raise ValueError(f"TLS host {host!r}: give a DNS name or an IP address, without port")
    try:
        name = text.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise ValueError(f"TLS host {host!r}: not a valid DNS name") from None
    return name.rstrip(".")


def _wanted(hosts: Sequence[str]) -> tuple[set[str], set[_IPAddress]]:
    names: set[str] = set()
    ips: set[_IPAddress] = set()
    for host in (*_ALWAYS, *hosts):
        parsed = _parse_host(host)
        if isinstance(parsed, str):
            names.add(parsed)
        elif parsed is not None:
            ips.add(parsed)
    return names, ips


def _covered(cert: x509.Certificate) -> tuple[set[str], set[_IPAddress]]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set(), set()
    ips = {ip for ip in san.get_values_for_type(x509.IPAddress)
           if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address)}  # not networks
    return {n.lower() for n in san.get_values_for_type(x509.DNSName)}, ips


# -- files -------------------------------------------------------------------------------------

def _write(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to `path` atomically with `mode` (a temporary name, then os.replace)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold the directory's lock file (flock: across processes and threads alike)."""
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TlsFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise TlsFileError(f"{path}: is a directory, not a file") from None
    except PermissionError:
        raise TlsFileError(f"{path}: not readable by this process") from None
    except OSError as exc:
        raise TlsFileError(f"{path}: cannot be read ({exc.strerror})") from None


def _load_certs(path: Path) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(_read(path))
    except ValueError:
        certs = []
    if not certs:
        raise TlsFileError(f"{path}: no PEM certificate in it")
    return certs


def _load_key(path: Path) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(_read(path), password=None)
    except TypeError:
        raise TlsFileError(f"{path}: the key is encrypted; give it without a passphrase"
                           ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise TlsFileError(f"{path}: not a PEM private key") from None


def _public_der(key: PrivateKeyTypes | x509.Certificate) -> bytes:
    public = key.public_key()
    return public.public_bytes(serialization.Encoding.DER,
                               serialization.PublicFormat.SubjectPublicKeyInfo)


# -- certificates ------------------------------------------------------------------------------

def _new_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    # A name of its own per CA: two services' CAs never look alike.
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Airavata"),
                      x509.NameAttribute(NameOID.COMMON_NAME,
                                         f"Airavata scheduler CA {secrets.token_hex(4)}")])
    now = datetime.now(UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _SKEW).not_valid_after(now + timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def _issue_server(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
                  names: set[str], ips: set[_IPAddress], *, days: float = SERVER_DAYS
                  ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new key and a certificate for it, signed by the CA, naming `names` and `ips`."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    not_after = min(now + timedelta(days=days), ca_cert.not_valid_after_utc)
    alt: list[x509.GeneralName] = [x509.DNSName(n) for n in sorted(names)]
    alt += [x509.IPAddress(ip) for ip in sorted(ips, key=lambda a: (a.version, int(a)))]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Airavata"),
                x509.NameAttribute(NameOID.COMMON_NAME, "Airavata scheduler service")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _SKEW).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def _signed_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _current_server(files: TlsFiles, ca_cert: x509.Certificate) -> x509.Certificate | None:
    """The server certificate on disk if it is usable with this CA (signed by it, matching its
    key, more than RENEW_WITHIN left); None if it must be issued anew."""
    if not (files.cert.exists() and files.key.exists()):
        return None
    try:
        cert = _load_certs(files.cert)[0]
        key = _load_key(files.key)
    except TlsFileError:
        return None
    if not _signed_by(cert, ca_cert) or _public_der(key) != _public_der(cert):
        return None
    if cert.not_valid_after_utc - datetime.now(UTC) <= RENEW_WITHIN:
        return None
    return cert


def ensure_service_tls(directory: Path, hosts: Sequence[str]) -> TlsFiles:
    """The service's own TLS files in `directory`, made on first call and reused after: a CA
    (what agents trust) and a server certificate from it naming `hosts` (DNS names or IP
    addresses; localhost and 127.0.0.1 always). A server certificate that misses an asked host
    or has 30 days or fewer left is replaced by one from the same CA, naming the old hosts too."""
    names, ips = _wanted(hosts)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    files = TlsFiles(cert=directory / "server.pem", key=directory / "server.key",
                     ca=directory / "ca.pem")
    ca_key_path = directory / "ca.key"
    with _locked(directory):
        if files.ca.exists():
            ca_cert = _load_certs(files.ca)[0]
            ca_key: ec.EllipticCurvePrivateKey | None = None
        else:  # first start (a CA key without its certificate was never handed to anyone)
            ca_key, ca_cert = _new_ca()
            _write(ca_key_path, _key_pem(ca_key), 0o600)
            _write(files.ca, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
        current = _current_server(files, ca_cert)
        if current is not None:
            have_names, have_ips = _covered(current)
            if names <= have_names and ips <= have_ips:
                for key_path in (files.key, ca_key_path):  # keep keys private
                    with contextlib.suppress(FileNotFoundError):
                        os.chmod(key_path, 0o600)
                return files
            names, ips = names | have_names, ips | have_ips
        if ca_key is None:
            loaded = _load_key(ca_key_path)
            if not isinstance(loaded, ec.EllipticCurvePrivateKey) \
                    or _public_der(loaded) != _public_der(ca_cert):
                raise TlsFileError(f"{ca_key_path}: not the key of the CA in {files.ca}")
            ca_key = loaded
        key, cert = _issue_server(ca_key, ca_cert, names, ips)
        _write(files.key, _key_pem(key), 0o600)
        _write(files.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return files


def site_tls(cert: Path, key: Path, ca: Path | None) -> TlsFiles:
    """The site's own TLS files, checked: each exists and is readable PEM, and the key is the
    certificate's. Without `ca`, the certificate file must carry its chain up to a self-signed
    root, which agents are then given to trust."""
    cert, key = Path(cert), Path(key)
    chain = _load_certs(cert)
    if _public_der(_load_key(key)) != _public_der(chain[0]):
        raise TlsFileError(f"{key}: not the key of the certificate in {cert}")
    if ca is not None:
        ca = Path(ca)
        _load_certs(ca)
        return TlsFiles(cert=cert, key=key, ca=ca)
    top = chain[-1]
    if top.issuer != top.subject or not _signed_by(top, top):
        raise TlsFileError(f"{cert}: its chain does not end in a self-signed root; give the CA "
                           "agents should trust (AIRAVATA_AGENT_TLS_CA)")
    return TlsFiles(cert=cert, key=key, ca=cert)


__all__ = ["CA_DAYS", "RENEW_WITHIN", "SERVER_DAYS", "TlsFileError", "TlsFiles",
           "ensure_service_tls", "site_tls"]
