"""Every environment variable dyn reads, named once, and the settings a launch carries.

The CLI reads the environment at its edge (:meth:`Settings.from_env`) and hands the
result on: in-process roles get the object itself, role processes get it as the
environment of their own ``Popen`` (:meth:`Settings.role_env`), roles on other nodes as
the bootstrap line on their stdin. Nothing writes ``os.environ`` to reach a role.

The README's "Environment variables" table lists each name below with its meaning and
default; keep the two together.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "ADMIN_TOKEN_ENV",
    "API_KEY_ENV",
    "CLUSTER_SECRET_ENV",
    "DISCOVERY_DIR_ENV",
    "JSON_LOGS_ENV",
    "LOG_LEVEL_ENV",
    "OPENAI_API_KEY_ENV",
    "ROLE_SECRET_ENV",
    "RUN_ID_ENV",
    "STATE_DIR_ENV",
    "TLS_CA_ENV",
    "TLS_CERT_ENV",
    "TLS_KEY_ENV",
    "XDG_STATE_HOME_ENV",
    "Settings",
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
# Set by `dyn up --detach` for its child: the run directory it made for the child's output.
RUN_ID_ENV = "DYN_RUN_ID"
XDG_STATE_HOME_ENV = "XDG_STATE_HOME"
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


@dataclass(frozen=True)
class Settings:
    """What a launch passes to every role besides the graph: how roles log, and the
    secrets that must not land in the run directory (the graph file is written there).

    Transport secrets (cluster secret, TLS files) are not fields: the transports read
    them where they are built, so a role process gets them through its environment.
    """

    log_level: str = "info"
    json_logs: bool = False
    # Kept out of repr: a settings object may end up in a log line or a traceback.
    api_key: str | None = field(default=None, repr=False)
    admin_token: str | None = field(default=None, repr=False)

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
        )

    def role_env(self) -> dict[str, str]:
        """The variables a role process started by a launcher gets on top of the
        launcher's own environment, so its CLI edge reads these same settings back."""
        env = {LOG_LEVEL_ENV: self.log_level, JSON_LOGS_ENV: "1" if self.json_logs else "0"}
        if self.api_key:
            env[API_KEY_ENV] = self.api_key
        if self.admin_token:
            env[ADMIN_TOKEN_ENV] = self.admin_token
        return env

    def role_secrets(self, environ: Mapping[str, str] | None = None) -> dict[str, str]:
        """The secrets for a role on another node: these settings' keys plus the
        transport secrets set in ``environ`` (``os.environ`` unless told otherwise)."""
        env = os.environ if environ is None else environ
        secrets = {name: env[name] for name in ROLE_SECRET_ENV if name in env}
        for name in (API_KEY_ENV, ADMIN_TOKEN_ENV):
            secrets.pop(name, None)
        secrets.update({k: v for k, v in self.role_env().items() if k in ROLE_SECRET_ENV})
        return secrets
