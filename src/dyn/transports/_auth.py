"""The cluster secret: who may call a tcp or grpc server.

A secret shared by every process of a cluster (transport option ``cluster_secret``, which
a launch sets from its settings; else the environment variable
:data:`~dyn.settings.CLUSTER_SECRET_ENV`) makes servers refuse callers that cannot prove
they know it. The proofs are HMAC-SHA256 over fresh random values, so the secret
itself never crosses the wire. The exact bytes are in ``transports/tcp.md`` and
``transports/dyn.proto``; the grpc per-call token is built and checked in
``dyn.transports.grpc._token``. Without TLS the secret authenticates, it does not hide
traffic.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets

from dyn.settings import CLUSTER_SECRET_ENV

__all__ = [
    "NONCE_BYTES",
    "TAG_BYTES",
    "new_nonce",
    "resolve_secret",
    "tag",
]

NONCE_BYTES = 32
TAG_BYTES = 32  # an HMAC-SHA256 digest

# Distinct labels keep a proof made for one purpose from being replayed for another
# (a server's answer passed off as a client's, say).
TCP_CLIENT_LABEL = b"dyn-tcp-client-v1"
TCP_SERVER_LABEL = b"dyn-tcp-server-v1"


def resolve_secret(option: str | bytes | None) -> bytes | None:
    """The secret to use: the option if given, else the environment (the fallback for
    transports built outside a launch); empty means none."""
    value = option if option is not None else os.environ.get(CLUSTER_SECRET_ENV)
    if not value:
        return None
    return value.encode() if isinstance(value, str) else value


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_BYTES)


def tag(secret: bytes, label: bytes, *parts: bytes) -> bytes:
    """HMAC-SHA256(secret, label || 0x00 || parts...)."""
    return hmac.new(secret, label + b"\x00" + b"".join(parts), hashlib.sha256).digest()
