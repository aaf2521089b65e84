"""TLS for the tcp and grpc transports: encrypted traffic between cluster members only.

Three PEM files, each a transport option (a launch sets them from its settings) or else
an environment variable (for transports built outside a launch): this process's
certificate chain (``tls_cert`` / :data:`~dyn.settings.TLS_CERT_ENV`), its private key
(``tls_key`` / :data:`~dyn.settings.TLS_KEY_ENV`) and the CA bundle that peers'
certificates must chain to (``tls_ca`` / :data:`~dyn.settings.TLS_CA_ENV`). All three or
none; an empty value counts as unset.

With them, TLS is mutual: a server accepts only TLS 1.3 connections from clients with a
certificate signed by the CA, and a client accepts only servers whose certificate is.
Host names are *not* checked. Peers are addressed by IP from discovery, often on ports
picked at start-up, so a certificate cannot name them in advance; the CA is the
cluster's own, and a certificate it signed is what makes a process a member. (A shared
public CA would therefore be a mistake: every certificate it ever signed would pass.)
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from dyn.errors import ConfigError
from dyn.settings import TLS_CA_ENV, TLS_CERT_ENV, TLS_KEY_ENV

__all__ = [
    "TLS_RECORD_TYPES",
    "TlsConfig",
    "describe_tls_error",
    "resolve_tls",
    "tls_hint",
]


# The first byte of a TLS record carrying an alert (21) or a handshake message (22): what a
# TLS peer answers with where a dyn preface or an HTTP/2 frame was expected.
TLS_RECORD_TYPES = (0x15, 0x16)


@dataclass(frozen=True)
class TlsConfig:
    """The three files, checked, and one context per side built from them."""

    cert: str
    key: str
    ca: str
    server: ssl.SSLContext
    client: ssl.SSLContext


def resolve_tls(
    cert: str | None, key: str | None, ca: str | None, *, alpn: list[str] | None = None
) -> TlsConfig | None:
    """The TLS set-up from the options, else the environment; ``None`` when TLS is off.

    ``alpn``: the protocols to offer and accept (grpc: ``["h2"]``). Raises
    :class:`ConfigError` naming the variable when only some are set or a file is bad.
    """
    named = {
        env: option or os.environ.get(env) or ""
        for env, option in ((TLS_CERT_ENV, cert), (TLS_KEY_ENV, key), (TLS_CA_ENV, ca))
    }
    missing = [env for env, value in named.items() if not value]
    if len(missing) == len(named):
        return None
    if missing:
        present = [env for env, value in named.items() if value]
        raise ConfigError(
            f"TLS needs {TLS_CERT_ENV}, {TLS_KEY_ENV} and {TLS_CA_ENV} together: "
            f"{_listed(present)} {'is' if len(present) == 1 else 'are'} set but "
            f"{_listed(missing)} {'is' if len(missing) == 1 else 'are'} not; set "
            f"{'it' if len(missing) == 1 else 'them'}, or unset all three to run without TLS"
        )
    for env, path in named.items():
        _check_readable(path, env)
    cert_path, key_path, ca_path = named[TLS_CERT_ENV], named[TLS_KEY_ENV], named[TLS_CA_ENV]
    server = _context(ssl.PROTOCOL_TLS_SERVER, cert_path, key_path, ca_path, alpn)
    server.num_tickets = 0  # no session resumption: connections are few and long-lived
    client = _context(ssl.PROTOCOL_TLS_CLIENT, cert_path, key_path, ca_path, alpn)
    return TlsConfig(cert_path, key_path, ca_path, server, client)


def tls_hint(tls_on: bool) -> str:
    """What to check when a connection fails in a way a TLS mismatch would explain."""
    if not tls_on:
        return (
            f"if the server uses TLS, set {TLS_CERT_ENV}, {TLS_KEY_ENV} and {TLS_CA_ENV} here too"
        )
    return (
        f"this client uses TLS: check that the server does too, and that each side's "
        f"certificate ({TLS_CERT_ENV}) is signed by the other side's {TLS_CA_ENV}"
    )


# OpenSSL's reasons for the failures a misconfigured cluster produces, in words.
_REASONS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the peer requires a certificate and this side sent none",
    "TLSV1_ALERT_UNKNOWN_CA": "the peer does not trust this side's certificate",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the peer does not trust this side's certificate",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the peer sent no certificate",
    "WRONG_VERSION_NUMBER": "the peer does not speak TLS",
    "HTTP_REQUEST": "the peer does not speak TLS",
    "RECORD_LAYER_FAILURE": "the peer does not speak TLS",
}


def describe_tls_error(exc: ssl.SSLError) -> str:
    """One line saying why a TLS handshake or session failed."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the peer's certificate is not trusted ({exc.verify_message})"
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str) and reason in _REASONS:
        return f"{_REASONS[reason]} ({reason})"
    return f"TLS failed: {reason or exc}"


def _listed(names: list[str]) -> str:
    return " and ".join(names)


def _check_readable(path: str, env: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"{env}={path}: cannot read it: {exc.strerror or exc}") from exc


def _no_password(key: str) -> Callable[[], bytes]:
    def refuse() -> bytes:
        raise ConfigError(f"{TLS_KEY_ENV}={key}: the key is password-protected; give it without")

    return refuse


def _context(
    protocol: ssl._SSLMethod, cert: str, key: str, ca: str, alpn: list[str] | None
) -> ssl.SSLContext:
    context = ssl.SSLContext(protocol)
    # Both ends are dyn: no reason to accept anything older.
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False  # see the module docstring
    context.verify_mode = ssl.CERT_REQUIRED  # on a server: mutual TLS
    try:
        context.load_verify_locations(cafile=ca)
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"{TLS_CA_ENV}={ca}: not a PEM CA bundle: {exc}") from exc
    try:
        # A callback, so that OpenSSL never stops a role to prompt on its terminal.
        context.load_cert_chain(cert, key, password=_no_password(key))
    except ssl.SSLError as exc:
        raise ConfigError(
            f"{TLS_CERT_ENV}={cert} and {TLS_KEY_ENV}={key}: not a PEM certificate and its "
            f"private key ({exc.reason or exc}); the key must be the certificate's"
        ) from exc
    if alpn:
        context.set_alpn_protocols(alpn)
    return context
