"""Reaching an existing NATS server: the options a graph gives, and one connect call.

Kept small on purpose: the servers, and the credentials a broker that lets any connected
client publish should ask for (a token or a ``.creds`` file), and TLS (a CA to trust, and
a client certificate when the server asks for one).
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Annotated

import msgspec

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient

__all__ = ["NatsOptions", "connect"]

# How long one attempt to reach a server may take before the next server is tried.
CONNECT_TIMEOUT_S = 2.0


class NatsOptions(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Where the NATS server is and how to prove who we are to it."""

    servers: Annotated[list[str], msgspec.Meta(min_length=1)]
    token: str | None = None  # the server's auth token
    credentials: str | None = None  # path of a NATS .creds file (JWT + nkey seed)
    tls_ca: str | None = None  # path of the CA bundle that signed the server's certificate
    tls_cert: str | None = None  # client certificate, when the server verifies clients
    tls_key: str | None = None

    def __post_init__(self) -> None:
        for server in self.servers:
            if not server.startswith(("nats://", "tls://", "ws://", "wss://")):
                raise ValueError(
                    f"server {server!r} is not a NATS URL; write it as nats://HOST:PORT "
                    "(or tls://HOST:PORT)"
                )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("give tls_cert and tls_key together (or neither)")

    def tls_context(self) -> ssl.SSLContext | None:
        if self.tls_ca is None and self.tls_cert is None:
            return None
        context = ssl.create_default_context(cafile=self.tls_ca)
        if self.tls_cert is not None and self.tls_key is not None:
            context.load_cert_chain(self.tls_cert, self.tls_key)
        return context


async def connect(options: NatsOptions, name: str) -> NatsClient:
    """A connection that reconnects forever (the server may restart under us)."""
    try:
        import nats
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError("NATS support needs the 'nats' extra: pip install 'dyn[nats]'") from exc
    return await nats.connect(
        servers=list(options.servers),
        name=name,
        token=options.token,
        user_credentials=options.credentials,
        tls=options.tls_context(),
        connect_timeout=CONNECT_TIMEOUT_S,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.2,
        allow_reconnect=True,
    )
