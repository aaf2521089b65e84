"""Certificates for TLS tests, made on the spot with trustme: one cluster CA, and a stranger."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme

from dyn.settings import TLS_CA_ENV, TLS_CERT_ENV, TLS_KEY_ENV


@dataclass(frozen=True)
class Member:
    """A process's three TLS files, as transport options or environment variables."""

    cert: Path
    key: Path
    ca: Path

    def options(self) -> dict[str, str]:
        return {"tls_cert": str(self.cert), "tls_key": str(self.key), "tls_ca": str(self.ca)}

    def env(self) -> dict[str, str]:
        return {TLS_CERT_ENV: str(self.cert), TLS_KEY_ENV: str(self.key), TLS_CA_ENV: str(self.ca)}


@dataclass(frozen=True)
class Certs:
    server: Member  # signed by the cluster CA
    client: Member  # signed by the cluster CA
    stranger: Member  # signed by another CA, trusting only that one
    impostor: Member  # signed by another CA, but trusting the cluster CA


def make_certs(folder: Path) -> Certs:
    cluster, other = trustme.CA(), trustme.CA()
    cluster_ca, other_ca = folder / "cluster-ca.pem", folder / "other-ca.pem"
    cluster.cert_pem.write_to_path(str(cluster_ca))
    other.cert_pem.write_to_path(str(other_ca))

    def member(name: str, ca: trustme.CA, trusts: Path) -> Member:
        # The name is never checked (peers are dialled by IP); it only labels the file.
        issued = ca.issue_cert(f"{name}.dyn.test")
        cert, key = folder / f"{name}.crt", folder / f"{name}.key"
        issued.cert_chain_pems[0].write_to_path(str(cert))
        issued.private_key_pem.write_to_path(str(key))
        return Member(cert, key, trusts)

    return Certs(
        server=member("server", cluster, cluster_ca),
        client=member("client", cluster, cluster_ca),
        stranger=member("stranger", other, other_ca),
        impostor=member("impostor", other, cluster_ca),
    )
