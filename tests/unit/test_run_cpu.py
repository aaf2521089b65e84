"""CPU accounting of a run: /proc/PID/stat parsing, the run's processes grouped by pid,
and the figures per request, against a fake /proc folder and this very process."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from dyn import state
from dyn.bench.proc_cpu import clock_ticks, cpu_seconds, parse_stat, read_cmdline, read_stat
from dyn.bench.report import cpu_table
from dyn.bench.run_cpu import CpuMeter, find_local_run, run_processes

# A real line (cat's), with utime 7, stime 3 and starttime 820240 put in.
LINE = (
    "26245 (cat) R 26243 26243 15241 0 -1 4194304 96 0 0 0 7 3 0 0 20 0 1 0 820240 "
    "3133440 359 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0"
)


def test_parse_stat_reads_the_cpu_fields() -> None:
    stat = parse_stat(LINE)
    assert (stat.pid, stat.comm, stat.utime, stat.stime, stat.starttime) == (
        26245,
        "cat",
        7,
        3,
        820240,
    )
    assert stat.ticks == 10


def test_parse_stat_counts_fields_after_the_last_parenthesis() -> None:
    # A process may name itself anything, spaces and parentheses included.
    odd = LINE.replace("(cat)", "(a) b (c) 1 2)")
    stat = parse_stat(odd)
    assert stat.comm == "a) b (c) 1 2"
    assert (stat.utime, stat.stime, stat.starttime) == (7, 3, 820240)


@pytest.mark.parametrize("text", ["", "12 cat R 1", "12 (cat) R 1 2 3", "x (cat) " + "0 " * 30])
def test_parse_stat_refuses_what_is_not_a_stat_line(text: str) -> None:
    with pytest.raises(ValueError, match=r"stat line|invalid literal"):
        parse_stat(text)


def test_this_process_uses_cpu() -> None:
    before = read_stat(os.getpid())
    assert before is not None
    assert before.pid == os.getpid()
    deadline = time.process_time() + 0.1
    while time.process_time() < deadline:
        pass
    after = read_stat(os.getpid())
    assert after is not None
    assert after.starttime == before.starttime
    spent = cpu_seconds(before, after, clock_ticks())
    assert 0.05 <= spent < 5
    assert any("pytest" in arg or "python" in arg for arg in read_cmdline(os.getpid()))


def test_a_missing_process_reads_as_none(tmp_path: Path) -> None:
    assert read_stat(12345, tmp_path) is None
    assert read_cmdline(12345, tmp_path) == []


class FakeProc:
    """A /proc folder with processes whose CPU ticks a test sets."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def put(
        self, pid: int, ticks: int, cmdline: str = "python -m dyn _role", start: int = 5
    ) -> None:
        folder = self.root / str(pid)
        folder.mkdir(exist_ok=True)
        fields = ["S"] + ["0"] * 10 + [str(ticks), "0"] + ["0"] * 6 + [str(start)] + ["0"] * 20
        (folder / "stat").write_text(f"{pid} (python) {' '.join(fields)}\n")
        (folder / "cmdline").write_bytes(cmdline.replace(" ", "\0").encode() + b"\0")

    def drop(self, pid: int) -> None:
        for file in (self.root / str(pid)).iterdir():
            file.unlink()
        (self.root / str(pid)).rmdir()


def _record(**kw: object) -> state.RunRecord:
    return state.RunRecord(
        run_id="run-1",
        graph="g",
        graph_file=None,
        started_at=0.0,
        pid=100,
        launcher="local",
        transport="tcp",
        discovery="file",
        discovery_dir="/nowhere",
        **kw,  # type: ignore[arg-type]
    )


ROLES = [
    state.RoleRecord(role="frontend", component="frontend", pid=200),
    state.RoleRecord(role="processor", component="processor", pid=200),
    state.RoleRecord(role="worker[0]", component="worker", replica=0, pid=300),
    state.RoleRecord(role="worker[1]", component="worker", replica=1, pid=301),
    state.RoleRecord(
        role="worker[2]", component="worker", replica=2, node="gpu2", pid=77, pidfile="/p"
    ),
]


def test_roles_are_grouped_by_process_and_remote_ones_named() -> None:
    run = run_processes(_record(roles=ROLES, etcd_pid=150))
    assert [(p.pid, p.roles) for p in run.processes] == [
        (100, ("dyn up",)),
        (200, ("frontend", "processor")),
        (300, ("worker[0]",)),
        (301, ("worker[1]",)),
        (150, ("etcd",)),
    ]
    assert run.not_measured == (("worker[2]", "on node gpu2"),)


def test_one_process_mode_is_one_process() -> None:
    roles = [state.RoleRecord(role=r, component=r, pid=100) for r in ("frontend", "worker")]
    run = run_processes(_record(roles=roles))
    assert [(p.pid, p.roles) for p in run.processes] == [(100, ("dyn up", "frontend", "worker"))]


def test_meter_reports_each_process_and_the_total(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path)
    proc.put(100, 10, "/venv/bin/python /venv/bin/dyn up g.yaml")
    proc.put(150, 0, "etcd --data-dir x")
    proc.put(200, 100)
    proc.put(300, 50)
    proc.put(301, 50)
    meter = CpuMeter(run_processes(_record(roles=ROLES, etcd_pid=150)), tmp_path, ticks_per_s=100)
    before = meter.read()
    proc.put(100, 12, "/venv/bin/python /venv/bin/dyn up g.yaml")
    proc.put(150, 1, "etcd --data-dir x")
    proc.put(200, 180)
    proc.put(300, 70)
    proc.drop(301)  # worker[1] died meanwhile
    report = meter.report(before, meter.read(), requests=100, output_tokens=1600)
    assert report["cpu_s"] == pytest.approx(1.03)
    assert report["ms_per_request"] == pytest.approx(10.3)
    assert report["us_per_output_token"] == pytest.approx(1.03e6 / 1600)
    rows = {p["pid"]: p for p in report["processes"]}
    assert rows[200]["roles"] == ["frontend", "processor"]
    assert rows[200]["ms_per_request"] == pytest.approx(8.0)
    assert rows[100]["roles"] == ["dyn up"]
    assert rows[100]["cpu_s"] == pytest.approx(0.02)
    assert rows[150]["roles"] == ["etcd"]
    assert set(rows) == {100, 150, 200, 300}
    assert report["not_measured"] == [
        {"roles": ["worker[2]"], "reason": "on node gpu2"},
        {"roles": ["worker[1]"], "reason": "exited during the run"},
    ]
    text = "\n".join(cpu_table(report))
    assert "frontend, processor" in text
    assert "total" in text
    assert "10.300" in text
    assert "not measured: worker[2] (on node gpu2)" in text


def test_a_reused_pid_or_another_program_is_not_the_run(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path)
    proc.put(100, 10, "dyn up g.yaml")
    proc.put(200, 10, "sleep 100")  # the pid now belongs to something else
    proc.put(300, 10)
    meter = CpuMeter(run_processes(_record(roles=ROLES[:3])), tmp_path, ticks_per_s=100)
    before = meter.read()
    proc.put(300, 20, start=9)  # died and another dyn process got its pid
    report = meter.report(before, meter.read(), requests=0, output_tokens=0)
    assert [p["pid"] for p in report["processes"]] == [100]
    assert report["ms_per_request"] is None
    assert report["us_per_output_token"] is None
    reasons = {tuple(m["roles"]): m["reason"] for m in report["not_measured"]}
    assert reasons == {
        ("frontend", "processor"): "not running",
        ("worker[0]",): "exited during the run",
    }


def test_cpu_table_compacts_replicas() -> None:
    report = {
        "cpu_s": 1.0,
        "ms_per_request": 1.0,
        "us_per_output_token": 60.0,
        "processes": [
            {
                "pid": 9,
                "roles": ["dyn up", "frontend", "worker[0]", "worker[1]", "worker[2]", "w[5]"],
                "cpu_s": 1.0,
                "ms_per_request": None,
                "us_per_output_token": 60.0,
            }
        ],
    }
    first = cpu_table(report)[1]
    assert "dyn up, frontend, worker[0-2], w[5]" in first
    assert "n/a" in first


@pytest.fixture
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DYN_STATE_DIR", str(tmp_path / "state"))
    return tmp_path


def _write_run(url: str, pid: int) -> state.RunRecord:
    run = state.create_run("g")
    record = _record(frontend_url=url)
    record.run_id, record.pid = run.run_id, pid
    state.write_record(run, record)
    return record


def test_the_run_is_found_by_its_frontend_url(runs: Path) -> None:
    proc = FakeProc(runs)
    proc.put(100, 0, "python -m dyn up g.yaml")
    proc.put(101, 0, "python -m http.server")
    _write_run("http://127.0.0.1:8000", 100)
    _write_run("http://127.0.0.1:9000", 101)  # its pid runs something else now
    found = find_local_run("http://localhost:8000/", runs)
    assert found is not None
    assert found.pid == 100
    assert find_local_run("http://127.0.0.1:9000", runs) is None
    assert find_local_run("http://127.0.0.1:8001", runs) is None
    assert find_local_run("http://example.com:8000", runs) is None
    assert find_local_run("https://127.0.0.1:8000", runs) is None
