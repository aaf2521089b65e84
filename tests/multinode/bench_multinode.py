"""Requests/s and latency through graphs/multinode.yaml across three network namespaces,
and through the same graph with every role on node1, with one load command for both.

    sudo .venv/bin/python tests/multinode/bench_multinode.py [--seconds 10] [--connections 1,16]

Needs root, iproute2, sshd, etcd, wrk and the test extra (pytest: pip install -e
'.[test]'). The load comes from wrk in the host namespace, over the bridge the cluster
helper creates; each run prints wrk's requests/s and its p50 and p99 latency.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

# Run as a script: the helpers beside it and the shared ones one level up.
sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1])]

from _cluster import netns_cluster, netns_possible  # noqa: E402
from test_multinode import Up, write_graph  # noqa: E402

POST_LUA = 'wrk.method = "POST"\nwrk.body = \'{"prompt": "hello"}\'\n'


def _wrk(url: str, connections: int, seconds: int, script: Path) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    latency = {m[0]: m[1] for m in re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M)}
    rate = re.search(r"Requests/sec:\s+(\S+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    assert rate is not None, out
    return {
        "rps": float(rate.group(1)),
        "p50_ms": _ms(latency["50"]),
        "p99_ms": _ms(latency["99"]),
        "non_2xx": float(non2xx.group(1)) if non2xx else 0.0,
    }


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", default="1,16")
    args = parser.parse_args()
    why = netns_possible()
    if why or shutil.which("wrk") is None:
        sys.exit(f"cannot run: {why or 'wrk is not installed'}")
    root = Path(tempfile.mkdtemp(prefix="dyn-multinode-bench-"))
    cluster = netns_cluster(root)
    script = root / "post.lua"
    script.write_text(POST_LUA)
    results: dict[str, dict[int, dict[str, float]]] = {}
    try:
        for label, placed in (("three nodes", None), ("one node", "node1")):
            state = root / label.replace(" ", "-")
            state.mkdir()
            graph = write_graph(cluster, state / "graph.yaml")
            if placed:
                doc = yaml.safe_load(graph.read_text())
                doc["components"]["worker"]["placement"] = [placed]
                graph.write_text(yaml.safe_dump(doc))
            up = Up(cluster, graph, state)
            try:
                _wrk(f"{up.url}/generate", 4, 2, script)  # warm-up: connections, caches
                results[label] = {
                    c: _wrk(f"{up.url}/generate", c, args.seconds, script)
                    for c in (int(x) for x in args.connections.split(","))
                }
            finally:
                up.stop()
    finally:
        cluster.close()
        shutil.rmtree(root, ignore_errors=True)
    print(f"{'graph':<12} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
    for label, by_conns in results.items():
        for conns, r in by_conns.items():
            print(
                f"{label:<12} {conns:>5} {r['rps']:>9.0f} {r['p50_ms']:>8.2f} "
                f"{r['p99_ms']:>8.2f} {r['non_2xx']:>8.0f}"
            )
    base = results["one node"]
    for conns, r in results["three nodes"].items():
        print(
            f"three nodes / one node at {conns} connection(s): {r['rps'] / base[conns]['rps']:.2f}x req/s"
        )


if __name__ == "__main__":
    main()
