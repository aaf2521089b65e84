"""The nats transport: dyn's call protocol over a NATS server (``transports/nats.md``).

Needs the ``nats`` extra (``pip install 'dyn[nats]'``): nats-py.
"""

from __future__ import annotations

from dyn.transports.nats._transport import NatsTransport

__all__ = ["NatsTransport"]
