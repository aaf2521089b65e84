"""The ``dyn-auth`` token of a grpc call, and the server's memory of the ones it accepted.

A token proves that its maker knows the cluster secret *and* is bound to one call: the
HMAC covers the RPC method, a digest of the request (the endpoint path and the payload),
a fresh nonce and a timestamp. grpclib hands the server the metadata before the request
message, so the check is split in two:

1. ``TokenChecker.admit`` runs on the metadata alone, before the request is read, so a
   caller without the secret makes the server buffer nothing: format, clock window, tag,
   then the nonce goes into the replay cache (a nonce already there is refused).
2. ``body_digest(request) == admitted digest`` runs once the request has been read: a
   token lifted from one call cannot carry another path or payload.

The exact bytes are in ``transports/dyn.proto`` and ``transports/README.md``. Pure code:
no grpclib, no clock of its own (callers pass ``now``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import struct

from dyn.transports._auth import tag

__all__ = [
    "GRPC_LABEL",
    "GRPC_MAX_SKEW_S",
    "GRPC_METADATA_KEY",
    "REPLAY_CACHE_MAX",
    "TOKEN_VERSION",
    "ReplayCache",
    "TokenBusy",
    "TokenChecker",
    "TokenRefused",
    "body_digest",
    "make_token",
]

GRPC_METADATA_KEY = "dyn-auth"  # the grpc request metadata carrying a call's token
TOKEN_VERSION = "v2"  # the first field of a token; v1 (unbound, replayable) is refused
GRPC_LABEL = b"dyn-grpc-call-v2"
NONCE_BYTES = 16  # 128 random bits: honest callers never collide
# How far a token's timestamp may be from the server's clock, either way. It bounds how
# long the server must remember a nonce (a token is refused once it is this old, so its
# nonce can be forgotten) and so the replay cache's size; NTP keeps a cluster's clocks
# within milliseconds, so 30 s is plenty. (It was 60 s before tokens were single-use.)
GRPC_MAX_SKEW_S = 30
# Nonces one server remembers at most (~160 bytes each, so ~32 MB when full). A nonce is
# kept until its timestamp leaves the window: about GRPC_MAX_SKEW_S with synchronised
# clocks, at most twice that, so up to ~3,300 calls/s per server never fill it. Beyond
# that the window shrinks from its old end (see ReplayCache) instead of forgetting.
REPLAY_CACHE_MAX = 200_000


class TokenRefused(Exception):
    """The token does not admit the call; the message says why, for the caller."""


class TokenBusy(TokenRefused):
    """The token may be good but is older than the window a full replay cache allows."""


def body_digest(path: str, payload: bytes) -> bytes:
    """SHA-256(uint32 big-endian length of PATH || PATH || PAYLOAD); PATH as UTF-8."""
    encoded = path.encode()
    return hashlib.sha256(struct.pack(">I", len(encoded)) + encoded + payload).digest()


def _mac(secret: bytes, method: str, stamp: str, nonce: str, digest: str) -> str:
    # The method binds the token to the RPC; the fields are fixed-format (digits, hex) and
    # the method is a gRPC path, so "." and 0x00 separate them unambiguously.
    message = f"{method}\x00{stamp}.{nonce}.{digest}".encode()
    return tag(secret, GRPC_LABEL, message).hex()


def make_token(secret: bytes, method: str, path: str, payload: bytes, now: float) -> str:
    """A ``dyn-auth`` value for one call: ``v2.TIMESTAMP.NONCE.DIGEST.TAG``."""
    stamp = str(int(now))
    nonce = secrets.token_hex(NONCE_BYTES)
    digest = body_digest(path, payload).hex()
    return f"{TOKEN_VERSION}.{stamp}.{nonce}.{digest}.{_mac(secret, method, stamp, nonce, digest)}"


# v2.TIMESTAMP.NONCE.DIGEST.TAG; ASCII only (str.isdigit would take other scripts' digits).
_TOKEN = re.compile(r"v2\.([0-9]{1,12})\.([0-9a-f]{32})\.([0-9a-f]{64})\.([0-9a-f]{64})", re.ASCII)


class ReplayCache:
    """The nonces of accepted tokens, remembered while their timestamps are in the window.

    Nonces are kept in one bucket per timestamp (whole seconds), so expiry drops whole
    buckets. When ``capacity`` is reached the oldest bucket is dropped too, early, and
    ``floor`` rises to its timestamp: from then on a token stamped at or before ``floor``
    is refused, because its nonce might be one that was forgotten. So a full cache never
    lets a replay through; it narrows the accepted window from its old end (tokens from
    clocks running behind, or calls delayed in flight, are asked to retry with a fresh
    token) rather than refusing everyone or forgetting silently.
    """

    def __init__(self, max_skew_s: float = GRPC_MAX_SKEW_S, capacity: int = REPLAY_CACHE_MAX):
        if capacity < 1:
            raise ValueError(f"a replay cache needs room for a nonce, not {capacity}")
        self.max_skew_s = max_skew_s
        self.capacity = capacity
        self.floor = -1  # timestamps at or below this are refused
        self._buckets: dict[int, set[str]] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, stamp: int, nonce: str, now: float) -> None:
        """Remember ``nonce``; raise ``TokenRefused`` if it is already known."""
        self._expire(now)
        bucket = self._buckets.get(stamp)
        if bucket is not None and nonce in bucket:
            raise TokenRefused("token already used (a replay)")
        while self._size >= self.capacity and stamp > self.floor:
            self._drop(min(self._buckets))
        if stamp <= self.floor:
            raise TokenBusy("its replay cache is full and the token too old for it; retry")
        self._buckets.setdefault(stamp, set()).add(nonce)
        self._size += 1

    def _expire(self, now: float) -> None:
        # A token stamped before now - max_skew is refused by the clock check anyway.
        stale = [stamp for stamp in self._buckets if stamp < now - self.max_skew_s]
        for stamp in stale:
            self._size -= len(self._buckets.pop(stamp))

    def _drop(self, stamp: int) -> None:
        self._size -= len(self._buckets.pop(stamp))
        self.floor = max(self.floor, stamp)


class TokenChecker:
    """A server's check of ``dyn-auth`` tokens; one per server, as it owns a replay cache."""

    def __init__(self, secret: bytes, method: str, cache: ReplayCache | None = None) -> None:
        self.secret = secret
        self.method = method
        self.cache = cache if cache is not None else ReplayCache()

    def admit(self, token: str, now: float) -> bytes:
        """Check everything but the request; return the digest the request must have.

        Raises ``TokenRefused`` (``TokenBusy`` for a full replay cache) with the reason.
        The nonce is remembered only once the tag is right, so callers without the
        secret cannot fill the cache.
        """
        match = _TOKEN.fullmatch(token)
        if match is None:
            raise TokenRefused(
                "malformed token"
                if token.startswith(f"{TOKEN_VERSION}.")
                else "unrecognised token (a caller running an older dyn? upgrade both sides)"
            )
        stamp, nonce, digest, mac = match.groups()
        off = now - int(stamp)
        if abs(off) > self.max_skew_s:
            raise TokenRefused(
                f"token stamped {abs(off):.0f} s {'behind' if off > 0 else 'ahead of'} the "
                f"server's clock (at most {self.max_skew_s:g} s allowed); check the clocks"
            )
        if not hmac.compare_digest(_mac(self.secret, self.method, stamp, nonce, digest), mac):
            raise TokenRefused("wrong secret")
        self.cache.add(int(stamp), nonce, now)
        return bytes.fromhex(digest)

    @property
    def max_skew_s(self) -> float:
        return self.cache.max_skew_s
