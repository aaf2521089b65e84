"""Three test "machines" on this one: network namespaces on a bridge, an sshd in each.

Each namespace gets an address on a private /24, a veth pair into a bridge that the test
creates (the bridge also gets an address, so the test process can reach the nodes), and
an sshd listening on that address with a host key and an authorised client key that the
test generates. Needs root and iproute2. ``Cluster.close`` removes all of it.

Without root (or without ``ip``), ``loopback_cluster`` gives the fallback: one sshd per
node on its own loopback port, every node at 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from _dyn_graph import free_port

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def netns_possible() -> str | None:
    """Why namespaces cannot be made here, or None if they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2's ip is not installed"
    if not Path(SSHD).exists():
        return "sshd is not installed (apt-get install openssh-server)"
    probe = f"dynprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@dataclass
class Node:
    name: str
    address: str  # where its sshd and its roles listen
    ssh_port: int
    netns: str | None  # None in the loopback variant
    sshd: subprocess.Popen[bytes] | None = None

    def run(self, argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        """Run a command on this node (inside its namespace)."""
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        return subprocess.run([*prefix, *argv], capture_output=True, text=True, **kwargs)  # type: ignore[call-overload,no-any-return]

    def pids(self) -> set[int]:
        """Every process inside this node's namespace except its sshd daemon."""
        assert self.netns is not None
        out = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True, text=True)
        pids = {int(p) for p in out.stdout.split()}
        return pids - ({self.sshd.pid} if self.sshd else set())


@dataclass
class Cluster:
    root: Path
    nodes: list[Node]
    key: Path
    bridge: str | None = None
    _links: list[str] = field(default_factory=list)
    # Settings changed for the test, with the values to put back.
    restore: dict[Path, str] = field(default_factory=dict)

    def ssh_options(self) -> list[str]:
        return [
            "-i", str(self.key),
            "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR",
        ]  # fmt: skip

    def close(self) -> None:
        for node in self.nodes:
            if node.sshd is not None and node.sshd.poll() is None:
                node.sshd.send_signal(signal.SIGTERM)
                try:
                    node.sshd.wait(5)
                except subprocess.TimeoutExpired:
                    node.sshd.kill()
            if node.netns:
                # Anything a failed test left behind in the namespace goes with it.
                for pid in node.pids():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                subprocess.run(["ip", "netns", "del", node.netns], capture_output=True)
        for link in self._links:
            subprocess.run(["ip", "link", "del", link], capture_output=True)
        if self.bridge:
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        for path, value in self.restore.items():
            path.write_text(value)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _keys(root: Path) -> Path:
    key = root / "id_ed25519"
    for path in (key, root / "host_ed25519"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
            check=True,
            capture_output=True,
        )
    (root / "authorized_keys").write_text(Path(f"{key}.pub").read_text())
    return key


def _start_sshd(root: Path, node: Node) -> None:
    config = root / f"sshd-{node.name}.conf"
    config.write_text(
        f"Port {node.ssh_port}\n"
        f"ListenAddress {node.address}\n"
        f"HostKey {root / 'host_ed25519'}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\n"
        f"PidFile {root / f'sshd-{node.name}.pid'}\n"
        "StrictModes no\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        "PermitRootLogin prohibit-password\n"
        "LogLevel ERROR\n"
    )
    if os.geteuid() == 0:  # only a root sshd wants its privilege-separation folder
        Path("/run/sshd").mkdir(exist_ok=True)
    prefix = ["ip", "netns", "exec", node.netns] if node.netns else []
    with (root / f"sshd-{node.name}.log").open("wb") as log:
        node.sshd = subprocess.Popen(
            [*prefix, SSHD, "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


class LoginRefused(RuntimeError):
    """sshd runs but will not let root in: no test can pass here."""


def _ssh(cluster: Cluster, source: Node, target: Node) -> subprocess.CompletedProcess[str]:
    argv = ["ssh", *cluster.ssh_options(), "-o", "ConnectTimeout=3"]
    return source.run([*argv, "-p", str(target.ssh_port), target.address, "true"])


def _wait_listening(cluster: Cluster, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    for node in cluster.nodes:
        while True:
            probe = _ssh(cluster, node, node)
            if probe.returncode == 0:
                break
            if "Permission denied" in probe.stderr:
                raise LoginRefused(_why_refused(probe.stderr))
            if time.monotonic() > deadline:
                raise RuntimeError(f"sshd on {node.name} did not answer: {probe.stderr}")
            time.sleep(0.1)


def _why_refused(stderr: str) -> str:
    try:
        shadow = Path("/etc/shadow").read_text()
    except OSError:
        shadow = ""
    root = next((line for line in shadow.splitlines() if line.startswith("root:")), "")
    if root.split(":")[1:2] and root.split(":")[1].startswith("!"):
        return (
            "root's account is locked ('!' in /etc/shadow), and sshd without PAM refuses "
            "key logins to locked accounts"
        )
    return f"sshd refused root's key: {stderr.strip()}"


def _bridge_filtering() -> Path | None:
    """The sysctl that makes bridged frames go through iptables (Docker turns it on,
    with a FORWARD policy of DROP that would silently drop node-to-node traffic)."""
    path = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
    return path if path.exists() and path.read_text().strip() == "1" else None


def _check_crossing(cluster: Cluster) -> None:
    """node1 must reach the other nodes over the bridge; turn off bridge filtering for
    the test's lifetime if that is what stops it."""
    first = cluster.nodes[0]

    def blocked() -> list[str]:
        return [
            f"{n.name}: {probe.stderr.strip()}"
            for n in cluster.nodes[1:]
            if (probe := _ssh(cluster, first, n)).returncode != 0
        ]

    failures = blocked()
    filtering = _bridge_filtering()
    if failures and filtering is not None:
        filtering.write_text("0\n")
        cluster.restore[filtering] = "1\n"
        failures = blocked()
    if failures:
        raise RuntimeError(f"node1 cannot reach the other nodes over the bridge: {failures}")


def netns_cluster(root: Path, count: int = 3) -> Cluster:
    """``count`` namespaces ``node1``… on a bridge, each with an sshd on port 22."""
    tag = f"{os.getpid() % 10000:04d}"
    subnet = f"10.{200 + os.getpid() % 50}.{os.getpid() % 250}"
    key = _keys(root)
    cluster = Cluster(root, [], key, bridge=f"dynbr{tag}")
    try:
        _ip("link", "add", cluster.bridge or "", "type", "bridge")
        _ip("addr", "add", f"{subnet}.254/24", "dev", cluster.bridge or "")
        _ip("link", "set", cluster.bridge or "", "up")
        for i in range(1, count + 1):
            node = Node(f"node{i}", f"{subnet}.{i}", 22, f"dyn{tag}n{i}")
            cluster.nodes.append(node)
            netns, link = node.netns or "", f"dv{tag}n{i}"
            _ip("netns", "add", netns)
            _ip("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", netns)
            cluster._links.append(link)
            _ip("link", "set", link, "master", cluster.bridge or "", "up")
            _ip("-n", netns, "addr", "add", f"{node.address}/24", "dev", "eth0")
            _ip("-n", netns, "link", "set", "eth0", "up")
            _ip("-n", netns, "link", "set", "lo", "up")
            _start_sshd(root, node)
        _wait_listening(cluster)
        _check_crossing(cluster)
    except BaseException:
        cluster.close()
        raise
    return cluster


def loopback_cluster(root: Path, count: int = 3) -> Cluster:
    """The fallback: ``count`` sshds on loopback ports, every node at 127.0.0.1."""
    root.mkdir(parents=True, exist_ok=True)
    key = _keys(root)
    cluster = Cluster(root, [], key)
    try:
        for i in range(1, count + 1):
            node = Node(f"node{i}", "127.0.0.1", free_port(), None)
            cluster.nodes.append(node)
            _start_sshd(root, node)
        _wait_listening(cluster)
    except BaseException:
        cluster.close()
        raise
    return cluster
