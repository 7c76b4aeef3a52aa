"""A Docker engine behind TLS with client certificates, as Docker's own remote setup does.

`make_pki(dir, address)` writes a CA, a server certificate for `address` (an IP SAN) and a client
certificate, with the `cryptography` package, into `dir` (keys 0600). A second, unrelated CA is
written too (`other_ca`, with a client certificate of its own) for the wrong-CA and wrong-client cases.

`start_tls_dockerd()` starts a dockerd with its own data root, exec root, pidfile and bridge, listening
only on its unix socket and on `tcp://<address>:<port>` with `--tlsverify`. Its containers publish on
the run's addresses through the userland proxy (no iptables rules), so it never touches the system
engine's network or another run's bed.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import random
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.engine import Engine, start_dockerd
from testbed.ports import address, free_port


@dataclass(frozen=True)
class Pki:
    """Certificate files of one TLS bed (PEM, keys 0600)."""

    ca: Path
    server_cert: Path
    server_key: Path
    cert: Path  # the client's certificate, signed by `ca`
    key: Path
    other_ca: Path  # a CA that signed nothing of the server's
    other_cert: Path  # a client certificate signed by `other_ca`
    other_key: Path


def _key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: Any, path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _cert(subject: str, key: Any, issuer: tuple[str, Any] | None, *, ca: bool = False,
          server_ip: str | None = None, client: bool = False) -> Any:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = (x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer[0])]), issuer[1]) \
        if issuer else (name, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
            decipher_only=False), critical=True)
    if server_ip:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address(server_ip)), x509.DNSName("localhost")]), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                                        critical=False)
    if client:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                                        critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write_cert(cert: Any, path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_pki(directory: Path, server_ip: str) -> Pki:
    """A CA, a server certificate for `server_ip`, a client certificate, and an unrelated CA + client."""
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for prefix, ca_name in (("", "ps-bed-ca"), ("other_", "ps-bed-other-ca")):
        ca_key = _key()
        ca_cert = _cert(ca_name, ca_key, None, ca=True)
        _write_cert(ca_cert, directory / f"{prefix}ca.pem")
        files[f"{prefix}ca"] = directory / f"{prefix}ca.pem"
        client_key = _key()
        _write_key(client_key, directory / f"{prefix}key.pem")
        _write_cert(_cert("ps-bed-client", client_key, (ca_name, ca_key), client=True),
                    directory / f"{prefix}cert.pem")
        files[f"{prefix}cert"], files[f"{prefix}key"] = directory / f"{prefix}cert.pem", \
            directory / f"{prefix}key.pem"
        if not prefix:
            server_key = _key()
            _write_key(server_key, directory / "server-key.pem")
            _write_cert(_cert("ps-bed-dockerd", server_key, (ca_name, ca_key), server_ip=server_ip),
                        directory / "server-cert.pem")
    return Pki(ca=files["ca"], server_cert=directory / "server-cert.pem",
               server_key=directory / "server-key.pem", cert=files["cert"], key=files["key"],
               other_ca=files["other_ca"], other_cert=files["other_cert"], other_key=files["other_key"])


@dataclass
class TlsEngine:
    """A dockerd answering `tcp_url` only with TLS and a client certificate signed by `pki.ca`."""

    engine: Engine  # its unix socket (the bed's own way in, no TLS)
    tcp_url: str
    pki: Pki
    bridge: str

    def client(self) -> Any:
        """An SDK client through the unix socket (for setting up and inspecting, not for ps)."""
        return self.engine.client()

    def stop(self) -> None:
        """Remove its containers, stop it, remove its bridge and files."""
        try:
            c = self.engine.client()
            for container in c.containers.list(all=True):
                container.remove(force=True)
            c.close()
        except Exception:
            pass
        self.engine.stop()  # removes engine.root, the certificates with it
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)


def _free_subnet(taken_prefixes: Sequence[str] = ()) -> str:
    """A private /24 (10.150-199.x) no route uses (the other bed bridges draw from 10.200-250.x)."""
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, check=True).stdout
    for _ in range(100):
        candidate = f"10.{random.randint(150, 199)}.{random.randint(0, 255)}"
        if f"{candidate}." not in routes and candidate not in taken_prefixes:
            return candidate
    raise RuntimeError("no free private /24 for the TLS engine's bridge")


def start_tls_dockerd(listen: str | None = None) -> TlsEngine:
    """A dockerd with `--tlsverify` on tcp://<listen (default: the run's address)>:<free port>."""
    host = listen or address()
    root = Path(tempfile.mkdtemp(prefix="ps-bed-dockerd-tls-"))
    pki = make_pki(root / "pki", host)
    bridge = f"pstls{uuid.uuid4().hex[:7]}"
    subnet = _free_subnet()
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True, capture_output=True)
    try:
        subprocess.run(["ip", "addr", "add", f"{subnet}.1/24", "dev", bridge], check=True,
                       capture_output=True)
        subprocess.run(["ip", "link", "set", bridge, "up"], check=True, capture_output=True)
        tcp_url = f"tcp://{host}:{free_port(host)}"
        engine = start_dockerd(root, bridge=bridge, extra_args=[
            "--iptables=false", "--ip-masq=false", "--tlsverify", "--tlscacert", str(pki.ca),
            "--tlscert", str(pki.server_cert), "--tlskey", str(pki.server_key), "-H", tcp_url])
    except BaseException:
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)
        raise
    return TlsEngine(engine=engine, tcp_url=tcp_url, pki=pki, bridge=bridge)
