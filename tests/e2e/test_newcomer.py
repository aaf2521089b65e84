"""A newcomer's first hour, as the README tells it, from a fresh clone and a fresh venv.

The commands come out of README.md itself (a test fails if the README stops showing
them), run with the dyn of a virtual environment the quick start made, with that venv's
``bin`` first on PATH, as after ``source .venv/bin/activate``. The graphs' own port 8000
is used, as a reader would; the test skips (saying so) if something else holds it.

No test dials beyond loopback, so the quick start's ``pip install -e .`` runs offline
(``PIP_NO_INDEX``): the fresh venv sees dyn's dependencies, and the build backend, through
a folder of links to this environment's packages (dyn's own left out), and pip builds
and installs dyn itself from the clone, its ``dyn`` command included.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from _dyn_graph import ROOT, port_is_listening

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

README = (ROOT / "README.md").read_text()
PORT = 8000
URL = f"http://127.0.0.1:{PORT}"


def readme_section(title: str) -> str:
    """The README's text under the heading ``title``, up to the next heading of its level."""
    match = re.search(rf"^(#+) {re.escape(title)}\n(.*?)(?=^\1 |\Z)", README, re.M | re.S)
    assert match, f"the README has no section {title!r}"
    return match.group(2)


def code_blocks(text: str, kinds: str = "sh|console") -> list[str]:
    return re.findall(rf"^```(?:{kinds})\n(.*?)^```", text, re.M | re.S)


def readme_command(section: str, starts: str) -> list[str]:
    """The command of ``section`` that starts with ``starts`` (continuation lines joined,
    a trailing ``# comment`` and a ``$ `` prompt dropped), split as a shell would."""
    lines: list[str] = []
    for block in code_blocks(readme_section(section)):
        lines += block.replace("\\\n", " ").splitlines()
    for line in lines:
        command = line.removeprefix("$ ").split(" #")[0].strip()
        if command.startswith(starts) and (command == starts or command[len(starts)] == " "):
            return shlex.split(command)
    raise AssertionError(f"the README's {section!r} section shows no `{starts}` command")


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh clone of this checkout (its committed files; a plain copy without git)."""
    if port_is_listening(PORT):
        pytest.skip(f"port {PORT}, which the README's graphs use, is taken on this machine")
    target = tmp_path_factory.mktemp("newcomer") / "dyn"
    if (ROOT / ".git").exists() and shutil.which("git"):
        subprocess.run(["git", "clone", "-q", str(ROOT), str(target)], check=True)
        # The work tree as it is (a test run before a commit checks what it will commit).
        changed = subprocess.run(
            ["git", "ls-files", "-m", "-o", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        for name in changed:
            if (ROOT / name).is_file():
                (target / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, target / name)
    else:
        shutil.copytree(ROOT, target, ignore=shutil.ignore_patterns(".venv", ".nox", "*.pyc"))
    return target


def dependencies_only(folder: Path) -> Path:
    """A folder of links to this environment's installed packages, dyn's own left out."""
    folder.mkdir()
    site_packages = Path(httpx.__file__).parents[1]
    for entry in site_packages.iterdir():
        name = entry.name
        is_dyn = name == "dyn" or name.startswith("dyn-") or "_dyn" in name
        if not (is_dyn or name.endswith(".pth") or name == "__pycache__"):
            (folder / name).symlink_to(entry)
    return folder


class Shell:
    """Runs commands in the clone as a reader's shell would after activating the venv."""

    def __init__(self, clone: Path, state: Path) -> None:
        self.cwd = clone
        venv_bin = clone / ".venv" / "bin"
        self.env = {
            **os.environ,
            "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}",
            "VIRTUAL_ENV": str(clone / ".venv"),
            "DYN_STATE_DIR": str(state),
            "COLUMNS": "80",
            "PYTHONUNBUFFERED": "1",
        }
        self.env.pop("PYTHONPATH", None)

    def run(self, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, cwd=self.cwd, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def start(self, argv: list[str], log: Path) -> subprocess.Popen[str]:
        with log.open("w") as out:
            return subprocess.Popen(
                argv,
                cwd=self.cwd,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )


def wait_for(url: str, proc: subprocess.Popen[str], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"exited with {proc.returncode} before serving:\n{log.read_text()}"
            )
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"nothing answered {url} within {timeout} s:\n{log.read_text()}")


def interrupt(proc: subprocess.Popen[str], timeout: float = 60) -> int:
    """Ctrl-C as a terminal sends it: SIGINT to the whole foreground process group."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise AssertionError(f"did not stop within {timeout} s of Ctrl-C") from None
    return proc.returncode


@pytest.fixture(scope="module")
def shell(clone: Path, tmp_path_factory: pytest.TempPathFactory) -> Shell:
    """The quick start's first command, run as written: a venv, dyn installed, hello world."""
    blocks = code_blocks(readme_section("Quick start"), kinds="sh")
    assert len(blocks) == 2, "the quick start is two commands"
    install, tests = (block.strip() for block in blocks)
    assert install.startswith("python3 -m venv .venv && .venv/bin/pip install")
    assert install.endswith(".venv/bin/dyn up graphs/hello_world.yaml")
    logs = tmp_path_factory.mktemp("logs")
    state = tmp_path_factory.mktemp("state")
    sh = Shell(clone, state)
    # The reader's interpreter, whichever python3 is first on PATH (the tests' own here).
    sh.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{sh.env['PATH']}"
    # The venv the command makes, made beforehand with the dependencies visible; making it
    # again keeps them (``venv`` leaves an existing site-packages as it is).
    subprocess.run([sys.executable, "-m", "venv", str(clone / ".venv")], check=True)
    purelib = subprocess.run(
        [str(clone / ".venv" / "bin" / "python"), "-c",
         "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    deps = dependencies_only(tmp_path_factory.mktemp("deps") / "site")
    (Path(purelib) / "_newcomer_deps.pth").write_text(f"{deps}\n")
    # pip's spelling of --no-build-isolation as a variable is inverted: 0 turns it off.
    sh.env.update(PIP_NO_INDEX="1", PIP_NO_BUILD_ISOLATION="0", PIP_DISABLE_PIP_VERSION_CHECK="1")
    proc = sh.start(["bash", "-c", install], logs / "quickstart.log")
    try:
        wait_for(f"{URL}/health", proc, logs / "quickstart.log", timeout=300)
        answer = httpx.post(f"{URL}/generate", content=b'{"text":"test"}', timeout=10)
        assert answer.text.strip() == "Frontend: Middle: Backend: test-mid-back"
    finally:
        code = interrupt(proc)
    assert code == 0, (logs / "quickstart.log").read_text()
    # The second command runs this very suite; here only its parts are checked to exist.
    assert tests == ".venv/bin/pip install nox && .venv/bin/nox"
    sessions = (clone / "noxfile.py").read_text()
    for session in ("def tests(", "def lint(", "def typecheck("):
        assert session in sessions
    return sh


def test_the_llm_graph_as_the_readme_shows_it(shell: Shell, tmp_path: Path) -> None:
    section = "An LLM graph: OpenAI API, KV-aware routing, simulated workers"
    up = shell.start(readme_command(section, "dyn up graphs/kv_routing.yaml"), tmp_path / "up.log")
    try:
        wait_for(f"{URL}/health", up, tmp_path / "up.log", timeout=120)
        curl = shell.run(readme_command(section, "curl localhost:8000/v1/completions"))
        assert curl.returncode == 0, curl.stderr
        completion = json.loads(curl.stdout)
        assert completion["object"] == "text_completion"
        assert completion["choices"][0]["text"]
        assert 1 <= completion["usage"]["completion_tokens"] <= 16

        route = shell.run(readme_command(section, "dyn route"))
        assert route.returncode == 0, route.stderr
        assert re.search(r"\bkv\b", route.stdout), route.stdout
        # A row per worker of the graph, with the load and cache columns a reader reads.
        assert len(re.findall(r"^\s*\S+ \([0-3]\)\s", route.stdout, re.M)) == 4, route.stdout
        for column in ("active", "cached", "hit rate"):
            assert column in route.stdout, route.stdout
        assert all(len(line) <= 80 for line in route.stdout.splitlines()), route.stdout

        switch = shell.run(readme_command(section, "dyn route --strategy round_robin"))
        assert switch.returncode == 0, switch.stderr
        assert "round_robin" in switch.stdout
        assert "round_robin" in shell.run(["dyn", "route"]).stdout

        bench = shell.run(readme_command("Benchmarks", "dyn bench"), timeout=300)
        assert bench.returncode == 0, bench.stdout + bench.stderr
        # The default workload, all of it answered, with progress lines on the way (the
        # output is no terminal here).
        assert re.search(r"^Successful requests:?\s+256$", bench.stdout, re.M), bench.stdout
        assert re.search(r"^Failed requests:?\s+0$", bench.stdout, re.M), bench.stdout
        assert "256/256 requests" in bench.stderr, bench.stderr
        assert "Prefix cache hit rate" in bench.stdout, bench.stdout

        status = shell.run(readme_command("Observing a run", "dyn status"))
        assert status.returncode == 0, status.stderr
        for role in ("frontend", "processor", "worker"):
            assert role in status.stdout, status.stdout
        assert all(len(line) <= 80 for line in status.stdout.splitlines()), status.stdout
    finally:
        assert interrupt(up) == 0, (tmp_path / "up.log").read_text()


def test_the_multinode_graph_on_one_machine(shell: Shell, tmp_path: Path) -> None:
    command = readme_command("Several machines", "dyn up graphs/multinode.yaml --local")
    up = shell.start(command, tmp_path / "up.log")
    try:
        wait_for(f"{URL}/health", up, tmp_path / "up.log", timeout=120)
        seen: set[str] = set()
        for n in range(8):
            answer = httpx.post(
                f"{URL}/generate", json={"prompt": "hello", "request_id": f"r{n}"}, timeout=10
            )
            text = json.loads(answer.text.strip().splitlines()[-1])["text"]
            assert text.startswith("hello_ProcessedBy_node1_GeneratedBy_node"), text
            seen.add(text.rsplit("_", 1)[-1])
        assert seen == {"node2", "node3"}
        status = shell.run(["dyn", "status", "--json"])
        assert status.returncode == 0, status.stderr
        rows = {row["role"]: row for row in json.loads(status.stdout)["instances"]}
        where = {role: (row["node"], row["host"]) for role, row in rows.items()}
        assert where == {
            "frontend": ("node1", "127.0.0.1"),
            "processor": ("node1", "127.0.0.1"),
            "worker[0]": ("node2", "127.0.0.2"),
            "worker[1]": ("node3", "127.0.0.3"),
        }, status.stdout
        # The first line the README shows: where each node runs, and which discovery.
        said = (tmp_path / "up.log").read_text()
        assert "--local: node1 on 127.0.0.1, node2 on 127.0.0.2, node3 on 127.0.0.3; " in said
        table = shell.run(["dyn", "status"])
        assert "node2" in table.stdout, table.stdout
        assert "node3" in table.stdout, table.stdout
        assert all(len(line) <= 80 for line in table.stdout.splitlines()), table.stdout
    finally:
        assert interrupt(up) == 0, (tmp_path / "up.log").read_text()
