"""Every environment variable dyn reads, named once, and the settings a launch carries.

The CLI reads the environment at its edge (:meth:`Settings.from_env`) and hands the
result on: in-process roles get the object itself (and the transport is built with its
:class:`TransportSecurity` as options), role processes get it as the environment of their
own ``Popen`` (:meth:`Settings.role_env`), roles on other nodes as the bootstrap line on
their stdin (:meth:`Settings.role_secrets`). Nothing writes ``os.environ`` to reach a role.

Two kinds of library code still fall back to the environment when they are not told:
the tcp and grpc transports (for their security options) and file discovery (for its
folder), so that a program constructing them directly configures them as the CLI does.
A launch always tells them what it knows.

The README's "Environment variables" table lists each name below with its meaning and
default; keep the two together.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "ADMIN_TOKEN_ENV",
    "ADVERTISE_HOST_ENV",
    "API_KEY_ENV",
    "BIND_HOST_ENV",
    "CLUSTER_SECRET_ENV",
    "DISCOVERY_DIR_ENV",
    "JSON_LOGS_ENV",
    "LOG_LEVEL_ENV",
    "METRICS_PORT_ENV",
    "NATS_SERVERS_ENV",
    "OPENAI_API_KEY_ENV",
    "REPLICA_ENV",
    "ROLE_SECRET_ENV",
    "RUN_ID_ENV",
    "STATE_DIR_ENV",
    "TLS_CA_ENV",
    "TLS_CERT_ENV",
    "TLS_KEY_ENV",
    "XDG_STATE_HOME_ENV",
    "Settings",
    "TransportSecurity",
]

LOG_LEVEL_ENV = "DYN_LOG_LEVEL"
JSON_LOGS_ENV = "DYN_JSON_LOGS"
API_KEY_ENV = "DYN_API_KEY"
ADMIN_TOKEN_ENV = "DYN_ADMIN_TOKEN"
CLUSTER_SECRET_ENV = "DYN_CLUSTER_SECRET"
TLS_CERT_ENV = "DYN_TLS_CERT"
TLS_KEY_ENV = "DYN_TLS_KEY"
TLS_CA_ENV = "DYN_TLS_CA"
STATE_DIR_ENV = "DYN_STATE_DIR"
DISCOVERY_DIR_ENV = "DYN_DISCOVERY_DIR"
# The NATS servers (comma-separated URLs) a nats transport built without options reaches.
NATS_SERVERS_ENV = "DYN_NATS_SERVERS"
# Set by `dyn up --detach` for its child: the run directory it made for the child's output.
# Only `dyn up` reads it (at its edge), and passes it to the launcher it starts.
RUN_ID_ENV = "DYN_RUN_ID"
XDG_STATE_HOME_ENV = "XDG_STATE_HOME"
# Where one role process listens, for a process started by a cluster rather than by a
# launcher (`dyn export k8s`): the address its transport and metrics page bind (default:
# the graph's node `bind`, else loopback), the address discovery publishes for it (its
# pod IP), and the fixed port of its metrics and health page (0 or unset: a free one).
BIND_HOST_ENV = "DYN_BIND_HOST"
ADVERTISE_HOST_ENV = "DYN_ADVERTISE_HOST"
METRICS_PORT_ENV = "DYN_METRICS_PORT"
# Only in a rendered StatefulSet's pod spec: the pod's index, which its args pass to
# `dyn _role` as the replica (dyn itself never reads it).
REPLICA_ENV = "DYN_REPLICA"
# `dyn bench` sends it as the bearer token, as OpenAI's own clients do.
OPENAI_API_KEY_ENV = "OPENAI_API_KEY"

# Secrets a launcher hands to a role on another node through its stdin, never its argv.
ROLE_SECRET_ENV = (
    API_KEY_ENV,
    ADMIN_TOKEN_ENV,
    CLUSTER_SECRET_ENV,
    TLS_CERT_ENV,
    TLS_KEY_ENV,
    TLS_CA_ENV,
)


# The transport option each transport secret sets (tcp and grpc take these options).
_TRANSPORT_OPTIONS = {
    CLUSTER_SECRET_ENV: "cluster_secret",
    TLS_CERT_ENV: "tls_cert",
    TLS_KEY_ENV: "tls_key",
    TLS_CA_ENV: "tls_ca",
}


@dataclass(frozen=True)
class TransportSecurity:
    """Who may talk to a role's transport: the cluster secret and the three TLS files
    (see ``dyn.transports._auth`` and ``dyn.transports._tls``). ``None`` means unset.

    A launch builds each role's transport with :meth:`options`; a transport told
    nothing falls back to the same environment variables itself.
    """

    # Kept out of repr: the secret is one, and the paths say where the key lies.
    cluster_secret: str | None = field(default=None, repr=False)
    tls_cert: str | None = field(default=None, repr=False)
    tls_key: str | None = field(default=None, repr=False)
    tls_ca: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TransportSecurity:
        """The values the environment gives (``os.environ`` unless told otherwise); an
        empty value counts as unset."""
        env = os.environ if environ is None else environ
        return cls(**{option: env.get(name) or None for name, option in _TRANSPORT_OPTIONS.items()})

    def overridden_by(self, passed: Mapping[str, str]) -> TransportSecurity:
        """These values with each variable named in ``passed`` taking its value there
        (an empty one unsets it): what a launcher sent wins over this node's own."""
        given = {
            option: passed[name] or None
            for name, option in _TRANSPORT_OPTIONS.items()
            if name in passed
        }
        return dataclasses.replace(self, **given)

    def options(self) -> dict[str, str]:
        """The transport options to build a transport with: the values that are set."""
        return {option: value for option, value in self._values() if value}

    def as_env(self) -> dict[str, str]:
        """The environment variables that carry the values that are set."""
        names = {option: name for name, option in _TRANSPORT_OPTIONS.items()}
        return {names[option]: value for option, value in self._values() if value}

    def _values(self) -> list[tuple[str, str | None]]:
        return [(option, getattr(self, option)) for option in _TRANSPORT_OPTIONS.values()]


@dataclass(frozen=True)
class Settings:
    """What a launch passes to every role besides the graph: how roles log, the keys of
    the HTTP routes, and the transport's security; secrets that must not land in the
    run directory (the graph file is written there).
    """

    log_level: str = "info"
    json_logs: bool = False
    # Kept out of repr: a settings object may end up in a log line or a traceback.
    api_key: str | None = field(default=None, repr=False)
    admin_token: str | None = field(default=None, repr=False)
    transport: TransportSecurity = TransportSecurity()
    # Per process, never passed on to the roles a launcher starts (see BIND_HOST_ENV).
    bind_host: str | None = None
    advertise_host: str | None = None
    metrics_port: int = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings the environment gives (``os.environ`` unless told otherwise);
        an empty value counts as unset."""
        env = os.environ if environ is None else environ
        return cls(
            log_level=env.get(LOG_LEVEL_ENV) or "info",
            json_logs=env.get(JSON_LOGS_ENV) == "1",
            api_key=env.get(API_KEY_ENV) or None,
            admin_token=env.get(ADMIN_TOKEN_ENV) or None,
            transport=TransportSecurity.from_env(env),
            bind_host=env.get(BIND_HOST_ENV) or None,
            advertise_host=env.get(ADVERTISE_HOST_ENV) or None,
            metrics_port=_port(env, METRICS_PORT_ENV),
        )

    def role_env(self) -> dict[str, str]:
        """The variables a role process started by a launcher gets on top of the
        launcher's own environment, so its CLI edge reads these same settings back."""
        env = {LOG_LEVEL_ENV: self.log_level, JSON_LOGS_ENV: "1" if self.json_logs else "0"}
        env.update(self.role_secrets())
        return env

    def role_secrets(self) -> dict[str, str]:
        """The secrets for a role on another node (those that are set): the keys and the
        transport's security, named by their environment variables."""
        secrets = self.transport.as_env()
        if self.api_key:
            secrets[API_KEY_ENV] = self.api_key
        if self.admin_token:
            secrets[ADMIN_TOKEN_ENV] = self.admin_token
        return secrets


def _port(env: Mapping[str, str], name: str) -> int:
    from dyn.errors import ConfigError

    raw = env.get(name) or "0"
    if not raw.isdigit() or int(raw) > 65535:
        raise ConfigError(f"{name}={raw!r}: expected a TCP port from 0 to 65535 (0: a free one)")
    return int(raw)
