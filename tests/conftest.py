"""Shared test settings: the anyio backend and the hypothesis profiles."""

from __future__ import annotations

import os

import pytest
from _certs import Certs, make_certs
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True, scope="session")
def _state_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Runs started by tests record themselves here, never in the user's state dir.
    os.environ.setdefault("DYN_STATE_DIR", str(tmp_path_factory.mktemp("dyn-state")))


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """TLS certificates for a cluster (and for peers outside it), made once per session."""
    return make_certs(tmp_path_factory.mktemp("tls"))
