"""Throwaway TLS material: a private CA and a server certificate for loopback.

Managed Redis on DigitalOcean speaks TLS (``rediss://``) with a certificate
signed by a CA that App Platform hands the app as ``${cache.CA_CERT}``.  The
integration tier reproduces that: the server presents a certificate from a CA
made here, and clients trust it only through ``REDIS_CA_CERT``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import trustme

LOOPBACK_NAMES = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a throwaway CA and the server certificate it signed."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    ca_pem: str


def make_tls_files(
    directory: Path, names: tuple[str, ...] = LOOPBACK_NAMES
) -> TlsFiles:
    """Write a new CA and a server certificate for ``names`` to ``directory``.

    The certificate carries every name as a subjectAltName (IP addresses as
    IP entries), so clients can verify the host name as well as the chain.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="Switchboard test CA")
    issued = ca.issue_cert(*names)

    ca_cert = directory / "ca.pem"
    server_cert = directory / "server.pem"
    server_key = directory / "server.key"
    ca.cert_pem.write_to_path(ca_cert)
    # The full chain, so a server that sends intermediates finds them; with
    # trustme's default (no intermediate) this is just the leaf.
    server_cert.write_bytes(b"".join(pem.bytes() for pem in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(server_key)
    os.chmod(server_key, 0o600)
    return TlsFiles(
        ca_cert=ca_cert,
        server_cert=server_cert,
        server_key=server_key,
        ca_pem=ca.cert_pem.bytes().decode("ascii"),
    )
