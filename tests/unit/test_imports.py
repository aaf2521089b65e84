"""`dyn --help` must stay fast: the CLI module may not import the servers or gRPC."""

from __future__ import annotations

import subprocess
import sys


def test_cli_import_is_light() -> None:
    code = (
        "import sys, dyn.cli.app\n"
        "heavy = [m for m in ('uvicorn', 'grpclib', 'starlette', 'prometheus_client', 'yaml')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
