"""The nats transport's subjects and header names (``transports/nats.md``)."""

from __future__ import annotations

import re
from urllib.parse import quote

__all__ = [
    "DEFAULT_CREDIT",
    "GROUP_ADDRESS",
    "KEEPALIVE_S",
    "SILENCE_LIMIT_S",
    "call_subject",
    "control_subject",
    "group_control_subject",
    "group_path",
    "group_queue",
    "group_subject",
    "group_wildcard",
    "parse_address",
    "server_id",
]

SUBJECT_ROOT = "dyn"
# Frames a caller lets a call send before it grants more (it grants again once it has
# read half of them): a slow reader holds up its own call only, after this many frames.
DEFAULT_CREDIT = 32
# A call that sent nothing for this long sends a keepalive frame; a caller that heard
# nothing for SILENCE_LIMIT_S takes the server (or its link to NATS) for dead.
KEEPALIVE_S = 1.0
SILENCE_LIMIT_S = 3.5

# Request headers (dyn's own; the call's headers travel with the H_PREFIX).
H_PATH = "dyn-path"
H_VERSION = "dyn-version"
H_CREDIT = "dyn-credit"
H_PREFIX = "h-"
# Reply headers: a message without headers is a data frame.
H_FRAME = "dyn-frame"  # end | error | keepalive | accept
H_CODE = "dyn-code"
# On end and keepalive frames: the data frames the call has sent so far. NATS delivers
# at most once, so a server restart can drop frames in the middle of a call; the caller
# compares, and fails the call rather than pass on a stream with a hole in it.
H_SENT = "dyn-sent"
# On the accept frame that opens a call made to a component's queue group: the server id
# of the member that took it, to which the caller sends the call's credit and cancels.
H_SERVER = "dyn-server"
# Control headers (caller to server, on the control subject).
H_CALL = "dyn-call"  # the call's reply inbox, which names it
H_OP = "dyn-op"  # credit | cancel
H_STATUS = "Status"  # set by the NATS server: 503 means no one subscribes

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def server_id(host: str, port: int, random_id: str) -> str:
    """Which subjects a server takes: fixed by ``host:port`` when a port is given (a
    restarted server is found at the same address), else random."""
    if port == 0:
        return random_id
    return f"{_UNSAFE.sub('_', host)}:{port}"


# The address of "whichever server of the component NATS picks": the component's queue
# group. "*" is no server id (parse_address refuses it), so the two never clash.
GROUP_ADDRESS = "nats:*"


def address_of(sid: str) -> str:
    return f"nats:{sid}"


def parse_address(address: str) -> str:
    """The server id from ``nats:ID``."""
    sid = address.removeprefix("nats:")
    if sid == address or not sid or _UNSAFE.search(sid.replace(":", "")):
        raise ValueError(f"bad nats address {address!r}; expected nats:ID")
    return sid


def _tokens(path: str) -> list[str]:
    """Path segments as subject tokens, percent-encoded where NATS would read them as
    syntax (an empty segment becomes ``%``, which no encoded segment is)."""
    return [quote(part, safe="-_~").replace(".", "%2E") or "%" for part in path.split("/")]


def call_subject(sid: str, path: str) -> str:
    """``dyn.call.ID.<path segments>``: each endpoint instance has a subject of its own."""
    return ".".join((SUBJECT_ROOT, "call", sid, *_tokens(path)))


def group_path(path: str) -> tuple[str, str, str]:
    """``(namespace, component, endpoint)`` of a call to a queue group, whose path is
    ``namespace/component/endpoint`` (no instance: the member that takes it adds its own)."""
    parts = path.split("/")
    if len(parts) != 3 or not all(parts):
        raise ValueError(
            f"a call to {GROUP_ADDRESS} needs the path namespace/component/endpoint, not {path!r}"
        )
    return parts[0], parts[1], parts[2]


def group_subject(path: str) -> str:
    """``dyn.any.<namespace>.<component>.<endpoint>``: a component's queue-group subject."""
    return ".".join((SUBJECT_ROOT, "any", *_tokens(path)))


def group_wildcard(namespace: str, component: str) -> str:
    return ".".join((SUBJECT_ROOT, "any", *_tokens(f"{namespace}/{component}"), ">"))


def group_queue(namespace: str, component: str) -> str:
    """The queue group: NATS gives each message on the group subject to one member."""
    return ".".join((SUBJECT_ROOT, *_tokens(f"{namespace}/{component}")))


def group_control_subject(namespace: str, component: str) -> str:
    """Where a caller sends a cancel before it knows which member took its call: every
    member hears it, and the one that holds the call acts on it."""
    return ".".join((SUBJECT_ROOT, "ctl", "any", *_tokens(f"{namespace}/{component}")))


def call_wildcard(sid: str) -> str:
    return f"{SUBJECT_ROOT}.call.{sid}.>"


def control_subject(sid: str) -> str:
    return f"{SUBJECT_ROOT}.ctl.{sid}"
