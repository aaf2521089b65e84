"""The nats transport: dyn's call model over a NATS server (``transports/nats.md``).

Addresses look like ``nats:ID``: a server takes the subjects ``dyn.call.ID.<path>`` (each
endpoint instance a subject of its own) and ``dyn.ctl.ID``. The address ``nats:*`` with
the path ``namespace/component/endpoint`` reaches whichever server of the component NATS
picks (the component's queue group, ``dyn.any.<namespace>.<component>.>``), for callers
that leave the choice of instance to the broker. Callers and servers reach
the same NATS (``servers`` option); the broker, not the transport, decides who may
connect, so the trust model is the NATS server's (see ``_connect``).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any, ClassVar

import anyio
from anyio.abc import TaskStatus
from nats.aio.client import Client

from dyn.settings import TransportSecurity
from dyn.transports.base import PROTOCOL_VERSION, CallStream, Handler, Transport
from dyn.transports.nats import _wire as w
from dyn.transports.nats._client import Inboxes, NatsCall
from dyn.transports.nats._connect import CONNECTION_OPTIONS, connect
from dyn.transports.nats._server import NatsServer

__all__ = ["NatsTransport"]


class NatsTransport(Transport):
    """Options: those of :mod:`dyn.transports.nats._connect` (``servers``, ``start``,
    ``token``, ``credentials``, ``tls_*``), ``cluster_secret`` (the token of a server
    dyn started), and ``stream_credit`` (frames a call may send ahead of its reader,
    32). Without ``servers``, the environment setting of the NATS servers names them
    (:data:`dyn.settings.NATS_SERVERS_ENV`).
    """

    name: ClassVar[str] = "nats"

    def __init__(
        self,
        *,
        protocol_version: int = PROTOCOL_VERSION,
        stream_credit: int = w.DEFAULT_CREDIT,
        cluster_secret: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(protocol_version=protocol_version, **options)
        if not 2 <= stream_credit <= 1 << 16:
            raise ValueError(f"stream_credit must be in 2..65536, not {stream_credit}")
        self.stream_credit = stream_credit
        self._connection_options = {k: v for k, v in options.items() if k in CONNECTION_OPTIONS}
        self._security = TransportSecurity(
            cluster_secret=cluster_secret,
            tls_cert=options.get("tls_cert"),
            tls_key=options.get("tls_key"),
            tls_ca=options.get("tls_ca"),
        )
        self._client: Client | None = None
        self._inboxes: Inboxes | None = None
        self._dialling = anyio.Lock()
        self._servers: list[NatsServer] = []

    async def _connect(self, name: str) -> Client:
        return await connect(self._connection_options, self._security, name=name)

    async def connect_client(self, name: str) -> Client:
        """A client of its own on this transport's NATS, the same way the transport
        reaches it, for parts that publish there directly (the KV event plane). The
        caller closes it."""
        return await self._connect(name)

    # -- serving --------------------------------------------------------------------------

    async def serve(
        self, handler: Handler, *, host: str, port: int = 0, task_status: TaskStatus[str]
    ) -> None:
        sid = w.server_id(host, port, secrets.token_hex(8))
        client = await self._connect(f"dyn-server-{sid}")
        server: NatsServer | None = None
        try:
            async with anyio.create_task_group() as calls:
                server = NatsServer(client, sid, handler, self.protocol_version, calls)
                await server.subscribe()
                self._servers.append(server)
                task_status.started(w.address_of(sid))
                await server.keepalives()
        finally:
            if server is not None:
                if server in self._servers:
                    self._servers.remove(server)
                server.cancel_all()
            with anyio.CancelScope(shield=True):
                await client.close()

    async def expose(self, namespace: str, component: str, instance_id: str) -> None:
        for server in list(self._servers):
            await server.expose(namespace, component, instance_id)

    async def withdraw(self, namespace: str, component: str, instance_id: str) -> None:
        for server in list(self._servers):
            await server.withdraw(namespace, component, instance_id)

    # -- calling --------------------------------------------------------------------------

    def call(
        self, address: str, path: str, payload: bytes, headers: Mapping[str, str]
    ) -> CallStream:
        return NatsCall(
            self._inboxes_ready,
            address,
            path,
            payload,
            headers,
            self.stream_credit,
            self.protocol_version,
        )

    async def _inboxes_ready(self) -> Inboxes:
        if self._inboxes is not None:
            return self._inboxes
        async with self._dialling:
            if self._inboxes is None:
                client = await self._connect("dyn-client")
                inboxes = Inboxes(client)
                await inboxes.subscribe()
                self._client, self._inboxes = client, inboxes
        return self._inboxes

    async def aclose(self) -> None:
        client, self._client, self._inboxes = self._client, None, None
        if client is not None:
            await client.close()
