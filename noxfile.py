"""Developer sessions: tests, lint, typecheck."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite (pass pytest arguments after --)."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs, env={"HYPOTHESIS_PROFILE": "ci"})


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check, ruff format --check, and the import layering (lint-imports)."""
    session.install("ruff>=0.6", "import-linter>=2.0")
    # lint-imports reads the package's import graph, so dyn must be importable.
    session.install("--no-deps", "-e", ".")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("lint-imports")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on src/, then on the tests (mypy_path in pyproject finds their helpers)."""
    session.install("-e", ".[test]", "mypy>=1.10", "types-PyYAML")
    session.run("mypy", "--strict", "src/dyn")
    # The tests too; among them the typed clients, where mypy must follow a request to its
    # items (assert_type in tests/unit/test_typed_clients.py).
    session.run("mypy", "tests")


# The generator is pinned so that regenerating gives byte-identical output; bump these
# together with the betterproto2 runtime (its minor version must match the compiler's).
PROTO_GENERATOR = ["betterproto2_compiler==0.10.1", "grpcio-tools==1.85.1", "ruff==0.17.6"]
PROTO_OUT = "src/dyn/transports/grpc/_proto"


@nox.session
def proto(session: nox.Session) -> None:
    """Regenerate the gRPC messages from transports/dyn.proto; fail if they changed."""
    import os
    import shutil

    session.install(*PROTO_GENERATOR)
    # Start from nothing so that a file the generator no longer writes shows up as deleted.
    shutil.rmtree(PROTO_OUT, ignore_errors=True)
    os.makedirs(PROTO_OUT)
    session.run(
        "python",
        "-m",
        "grpc_tools.protoc",
        "--proto_path=transports",
        # Messages only: the service glue in dyn/transports/grpc is written by hand.
        f"--python_betterproto2_out=client_generation=none,server_generation=none:{PROTO_OUT}",
        "transports/dyn.proto",
    )
    session.run("git", "diff", "--exit-code", "--", PROTO_OUT, external=True)
    # git diff is blind to files git does not track: a file the generator newly writes.
    untracked = session.run(
        "git", "status", "--porcelain", "--", PROTO_OUT, external=True, silent=True
    )
    if untracked:
        session.error(f"generated code differs from what is committed:\n{untracked}")
