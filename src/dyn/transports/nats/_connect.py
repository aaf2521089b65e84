"""A connected nats-py client for a run: which servers, which credentials, which TLS.

Shared by everything in dyn that talks to NATS (the ``nats`` transport, and any other
part that uses the run's NATS), so that they all reach the same server the same way.

The options are those of the graph's ``transport: {backend: nats, options: {...}}``:

- ``servers``: a URL or a list of URLs (``nats://HOST:PORT``); else the environment
  variable :data:`~dyn.settings.NATS_SERVERS_ENV` (comma-separated).
- ``start``: true when `dyn up` started the server for the run. Such a server requires
  the cluster secret as its auth token, and TLS when the run has TLS settings, so the
  client then sends the secret and uses the run's TLS files.
- ``token`` or ``credentials`` (a NATS ``.creds`` file): how to authenticate to an
  external server. The cluster secret is never sent to a server dyn did not start.
- ``tls_ca`` (and, for mutual TLS, ``tls_cert`` and ``tls_key``): TLS to an external
  server; for a server dyn started these default to the run's TLS files.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.client import Client

from dyn.errors import ConfigError, TransportError
from dyn.settings import NATS_SERVERS_ENV, TransportSecurity
from dyn.transports._auth import resolve_secret
from dyn.transports._tls import resolve_tls

__all__ = ["CONNECTION_OPTIONS", "NatsOptions", "connect", "nats_options"]

# The transport options this module reads (a transport takes others of its own).
CONNECTION_OPTIONS = ("servers", "start", "token", "credentials", "tls_ca", "tls_cert", "tls_key")
CONNECT_TIMEOUT_S = 5
# A restarted server is found again quickly: NATS clients retry forever, every 0.25 s.
RECONNECT_WAIT_S = 0.25


@dataclass(frozen=True)
class NatsOptions:
    """The connection options, checked."""

    servers: tuple[str, ...]
    started_by_dyn: bool = False
    token: str | None = None
    credentials: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None


def nats_options(options: Mapping[str, Any]) -> NatsOptions:
    """Check the options (raises :class:`ConfigError` naming the option at fault)."""
    raw = options.get("servers")
    if raw is None:
        raw = [s for s in os.environ.get(NATS_SERVERS_ENV, "").split(",") if s.strip()]
    servers = (raw,) if isinstance(raw, str) else tuple(raw)
    if not servers or not all(isinstance(s, str) and s.strip() for s in servers):
        raise ConfigError(
            "the nats transport needs NATS servers: set transport options servers "
            f"(e.g. [nats://127.0.0.1:4222]), or {NATS_SERVERS_ENV}, or start: true"
        )
    for name in ("token", "credentials", "tls_ca", "tls_cert", "tls_key"):
        value = options.get(name)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"nats transport option {name} must be a string, not {value!r}")
    return NatsOptions(
        servers=tuple(s.strip() for s in servers),
        started_by_dyn=bool(options.get("start", False)),
        token=options.get("token"),
        credentials=options.get("credentials"),
        tls_ca=options.get("tls_ca"),
        tls_cert=options.get("tls_cert"),
        tls_key=options.get("tls_key"),
    )


def client_tls(opts: NatsOptions, security: TransportSecurity | None) -> ssl.SSLContext | None:
    """The TLS context to dial with, or None for plain connections."""
    if opts.started_by_dyn:
        sec = security or TransportSecurity()
        tls = resolve_tls(sec.tls_cert, sec.tls_key, sec.tls_ca)
        return None if tls is None else tls.client
    if opts.tls_ca is None:
        if opts.tls_cert or opts.tls_key:
            raise ConfigError("nats transport options tls_cert/tls_key need tls_ca too")
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=opts.tls_ca)
    if opts.tls_cert:
        context.load_cert_chain(opts.tls_cert, opts.tls_key)
    return context


def auth_token(opts: NatsOptions, security: TransportSecurity | None) -> str | None:
    if opts.token is not None:
        return opts.token
    if not opts.started_by_dyn:
        return None  # the cluster secret is for dyn's own server only
    secret = resolve_secret(security.cluster_secret if security else None)
    return secret.decode() if secret else None


async def connect(
    options: Mapping[str, Any], security: TransportSecurity | None = None, *, name: str = "dyn"
) -> Client:
    """A client connected to the run's NATS (raises :class:`TransportError` if none
    answers within a few seconds). It reconnects by itself after that; close it with
    ``await client.close()``."""
    opts = nats_options(options)
    kwargs: dict[str, Any] = {}
    token = auth_token(opts, security)
    if token:
        kwargs["token"] = token
    if opts.credentials:
        kwargs["user_credentials"] = opts.credentials
    tls = client_tls(opts, security)
    if tls is not None:
        kwargs["tls"] = tls
    try:
        client: Client = await nats.connect(
            servers=list(opts.servers),
            name=name,
            connect_timeout=CONNECT_TIMEOUT_S,
            reconnect_time_wait=RECONNECT_WAIT_S,
            max_reconnect_attempts=-1,
            allow_reconnect=True,
            # The first connect fails fast (no retry loop) so that a wrong address is
            # reported at start-up rather than hanging it.
            error_cb=_quiet,
            **kwargs,
        )
    except Exception as exc:
        where = ", ".join(opts.servers)
        raise TransportError(
            f"cannot connect to NATS at {where}: {exc or type(exc).__name__}"
        ) from exc
    return client


async def _quiet(exc: Exception) -> None:
    """nats-py logs connection errors itself; the transport reports what a call sees."""
