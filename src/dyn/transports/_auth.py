"""The cluster secret: who may call a tcp or grpc server.

A secret shared by every process of a cluster (transport option ``cluster_secret``, else
the environment variable ``DYN_CLUSTER_SECRET``) makes servers refuse callers that cannot
prove they know it. The proofs are HMAC-SHA256 over fresh random values, so the secret
itself never crosses the wire. The exact bytes are in ``transports/tcp.md`` and
``transports/dyn.proto``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time

__all__ = [
    "ENV_CLUSTER_SECRET",
    "GRPC_METADATA_KEY",
    "GRPC_MAX_SKEW_S",
    "NONCE_BYTES",
    "TAG_BYTES",
    "grpc_token",
    "grpc_token_valid",
    "new_nonce",
    "resolve_secret",
    "tag",
]

ENV_CLUSTER_SECRET = "DYN_CLUSTER_SECRET"
GRPC_METADATA_KEY = "dyn-auth"  # the grpc request metadata carrying a call's token
NONCE_BYTES = 32
TAG_BYTES = 32  # an HMAC-SHA256 digest
# How far a grpc token's timestamp may be from the server's clock, either way.
GRPC_MAX_SKEW_S = 60.0

# Distinct labels keep a proof made for one purpose from being replayed for another
# (a server's answer passed off as a client's, say).
TCP_CLIENT_LABEL = b"dyn-tcp-client-v1"
TCP_SERVER_LABEL = b"dyn-tcp-server-v1"
GRPC_LABEL = b"dyn-grpc-call-v1"


def resolve_secret(option: str | bytes | None) -> bytes | None:
    """The secret to use: the option if given, else the environment; empty means none."""
    value = option if option is not None else os.environ.get(ENV_CLUSTER_SECRET)
    if not value:
        return None
    return value.encode() if isinstance(value, str) else value


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_BYTES)


def tag(secret: bytes, label: bytes, *parts: bytes) -> bytes:
    """HMAC-SHA256(secret, label || 0x00 || parts...)."""
    return hmac.new(secret, label + b"\x00" + b"".join(parts), hashlib.sha256).digest()


def grpc_token(secret: bytes, now: float | None = None) -> str:
    """A ``dyn-auth`` value: ``TIMESTAMP.NONCE.TAG`` (decimal seconds, hex, hex)."""
    stamp = str(int(time.time() if now is None else now))
    nonce = secrets.token_hex(16)
    mac = tag(secret, GRPC_LABEL, f"{stamp}.{nonce}".encode()).hex()
    return f"{stamp}.{nonce}.{mac}"


def grpc_token_valid(secret: bytes, token: str, now: float | None = None) -> bool:
    """Whether ``token`` was made with ``secret`` within ``GRPC_MAX_SKEW_S`` of now."""
    stamp, _, rest = token.partition(".")
    nonce, _, mac = rest.partition(".")
    if not (stamp.isascii() and stamp.isdigit()) or not nonce or not mac.isascii():
        return False
    if abs((time.time() if now is None else now) - int(stamp)) > GRPC_MAX_SKEW_S:
        return False
    expected = tag(secret, GRPC_LABEL, f"{stamp}.{nonce}".encode()).hex()
    return hmac.compare_digest(expected, mac)
