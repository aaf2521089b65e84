"""Settings are read from the environment at the CLI's edge and handed to roles explicitly."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from typer.testing import CliRunner

from dyn import settings
from dyn.cli.app import app
from dyn.graph import load_graph
from dyn.launch import role_main
from dyn.launch._roles import make_transport
from dyn.launch.base import LaunchObserver
from dyn.launch.inprocess import InProcessLauncher
from dyn.launch.role_classes import role_class
from dyn.settings import Settings, TransportSecurity
from dyn.transports.tcp import TcpTransport

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "dyn"
HELLO = ROOT / "graphs" / "hello_world.yaml"


def test_from_env_reads_each_variable_and_empty_means_unset() -> None:
    env = {
        settings.LOG_LEVEL_ENV: "debug",
        settings.JSON_LOGS_ENV: "1",
        settings.API_KEY_ENV: "sk-1",
        settings.ADMIN_TOKEN_ENV: "",
    }
    assert Settings.from_env(env) == Settings("debug", True, api_key="sk-1", admin_token=None)
    assert Settings.from_env({}) == Settings()


def test_secrets_stay_out_of_repr() -> None:
    shown = repr(Settings(api_key="sk-secret", admin_token="t0k"))
    assert "sk-secret" not in shown
    assert "t0k" not in shown


def test_a_role_process_reads_back_what_the_launcher_passed() -> None:
    sent = Settings("warning", True, api_key="sk-1", admin_token="t0k")
    assert Settings.from_env(sent.role_env()) == sent
    assert Settings.from_env(Settings().role_env()) == Settings()


def test_remote_roles_get_the_launch_keys_and_the_transport_secrets() -> None:
    env = {settings.CLUSTER_SECRET_ENV: "c", settings.API_KEY_ENV: "from-env", "HOME": "/h"}
    launch = dataclasses.replace(Settings.from_env(env), api_key="sk-1")
    assert launch.role_secrets() == {
        settings.CLUSTER_SECRET_ENV: "c",
        settings.API_KEY_ENV: "sk-1",
    }


TLS_ENV = {
    settings.CLUSTER_SECRET_ENV: "cluster-s3cret",
    settings.TLS_CERT_ENV: "/certs/node.pem",
    settings.TLS_KEY_ENV: "/certs/node.key",
    settings.TLS_CA_ENV: "/certs/ca.pem",
}


def test_the_transport_security_is_read_at_the_edge_and_kept_out_of_repr() -> None:
    security = TransportSecurity(
        "cluster-s3cret", "/certs/node.pem", "/certs/node.key", "/certs/ca.pem"
    )
    assert Settings.from_env(TLS_ENV).transport == security
    assert TransportSecurity.from_env({**TLS_ENV, settings.TLS_CA_ENV: ""}).tls_ca is None
    assert security.options() == {
        "cluster_secret": "cluster-s3cret",
        "tls_cert": "/certs/node.pem",
        "tls_key": "/certs/node.key",
        "tls_ca": "/certs/ca.pem",
    }
    assert TransportSecurity().options() == {}
    shown = repr(Settings(transport=security))
    assert not any(value in shown for value in TLS_ENV.values())


def test_role_processes_and_remote_roles_get_the_transport_security() -> None:
    sent = Settings(transport=TransportSecurity.from_env(TLS_ENV))
    assert Settings.from_env(sent.role_env()) == sent
    assert sent.role_secrets() == TLS_ENV


def test_what_a_launcher_passes_wins_over_the_nodes_own() -> None:
    own = TransportSecurity(cluster_secret="own", tls_ca="/own/ca.pem")
    passed = {settings.CLUSTER_SECRET_ENV: "sent", settings.TLS_CA_ENV: ""}
    assert own.overridden_by(passed) == TransportSecurity(cluster_secret="sent")
    assert own.overridden_by({}) == own


def test_a_launch_builds_its_transport_with_its_security(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(settings.CLUSTER_SECRET_ENV, "from-env")
    graph = dataclasses.replace(load_graph(HELLO, resolve_role=role_class), transport="tcp")
    transport = make_transport(graph, TransportSecurity(cluster_secret="from-launch"))
    assert isinstance(transport, TcpTransport)
    assert transport._secret == b"from-launch"
    monkeypatch.delenv(settings.CLUSTER_SECRET_ENV)
    inproc = make_transport(dataclasses.replace(graph, transport="inproc"), TransportSecurity())
    assert inproc.options == {}


def test_a_remote_role_takes_the_bootstrap_secrets_without_touching_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in settings.ROLE_SECRET_ENV:
        monkeypatch.delenv(name, raising=False)
    before = dict(os.environ)
    line = json.dumps({"graph": HELLO.read_text(encoding="utf-8"), "env": TLS_ENV}) + "\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(line.encode())))
    graph, passed = role_main._bootstrap()
    assert graph.name == "hello_world"
    assert passed == TLS_ENV
    assert dict(os.environ) == before


def test_each_variable_name_is_spelled_once_and_the_cli_never_writes_the_environment() -> None:
    spelled: dict[str, list[str]] = {}
    for path in SRC.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for name in re.findall(r'"(DYN_[A-Z_]+)"', text):
            spelled.setdefault(name, []).append(str(path.relative_to(SRC)))
        if path.parent.name == "cli":
            assert not re.search(r"os\.environ\[[^]]+\] *=", text), path
    assert spelled
    assert all(places == ["settings.py"] for places in spelled.values()), spelled


def test_no_module_changes_its_own_environment_or_spells_a_name_outside_settings() -> None:
    writes = re.compile(r"os\.environ\[[^]]+\] *=|os\.environ\.(pop|update|setdefault)|putenv")
    for path in SRC.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert not writes.search(text), path
        if path.name != "settings.py":
            # Messages and docstrings name a variable through its constant too.
            assert not re.search(r"DYN_[A-Z]", text), path


def test_the_readme_documents_every_variable() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    names = [v for k, v in vars(settings).items() if k.endswith("_ENV") and isinstance(v, str)]
    table = [line for line in readme.splitlines() if line.startswith("| `")]
    for name in names:
        assert any(line.startswith(f"| `{name}`") for line in table), name


def test_detach_reruns_up_with_the_given_flags_and_the_key_off_argv(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, Any] = {}

    def fake_detach_up(graph_name: str, argv: list[str], api_key: str | None) -> str:
        seen.update(name=graph_name, argv=argv, api_key=api_key)
        return "http://127.0.0.1:1"

    monkeypatch.setattr("dyn.cli.detach.detach_up", fake_detach_up)
    args = ["up", str(HELLO.relative_to(ROOT)), "-p", "8123", "--set", "backend.replicas=2"]
    args += ["-d", "--log-level", "debug", "--json-logs", "--api-key", "sk-1"]
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert seen == {
        "name": "hello_world",
        "argv": [
            str(HELLO),
            "--port",
            "8123",
            "--set",
            "backend.replicas=2",
            "--log-level",
            "debug",
            "--json-logs",
        ],
        "api_key": "sk-1",
    }


@pytest.mark.anyio
@pytest.mark.timeout(60)
async def test_in_process_roles_get_the_launch_settings() -> None:
    with socket.socket() as probe:  # a free port (the graph refuses port 0)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    graph = load_graph(HELLO, [f"frontend.port={port}"], resolve_role=role_class)
    launcher = InProcessLauncher()
    launcher.settings = Settings(api_key="sk-1")
    stop, ready = anyio.Event(), anyio.Event()

    class Observer(LaunchObserver):
        def graph_ready(self, url: str | None, seconds: float) -> None:
            seen.append(url)
            ready.set()

    seen: list[str | None] = []
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(launcher.run, graph, Observer(), stop)
        with anyio.fail_after(30):
            await ready.wait()
        try:
            async with httpx.AsyncClient(base_url=str(seen[0]), timeout=10) as http:
                body = {"text": "hi"}
                assert (await http.post("/generate", json=body)).status_code == 401
                auth = {"authorization": "Bearer sk-1"}
                assert (await http.post("/generate", json=body, headers=auth)).status_code == 200
        finally:
            stop.set()
