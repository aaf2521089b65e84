"""The validated graph: frozen, typed objects that nothing downstream re-checks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Annotated, Any

import msgspec

__all__ = [
    "DEFAULT_DISCOVERY_TTL_S",
    "DEFAULT_LAYOUT",
    "DEFAULT_TRANSPORT",
    "IMAGE_PULL_POLICIES",
    "LAYOUTS",
    "LOCAL_NODE",
    "SERVICE_TYPES",
    "ComponentSpec",
    "DependencySpec",
    "DiscoverySpec",
    "GraphSpec",
    "KubernetesSpec",
    "ModelSpec",
    "NodeSpec",
    "RoleInstance",
]

DEFAULT_TRANSPORT = "inproc"
# How the roles of a graph run on this machine (docs/process-layout.md): every role in
# one process, one process per role replica, or a fixed rule of the core count.
LAYOUTS = ("auto", "one-process", "process-per-role")
DEFAULT_LAYOUT = "auto"
DEFAULT_DISCOVERY = "memory"
# How long a registration outlives its last heartbeat: long enough to ride out a slow
# heartbeat, short enough that a dead instance soon stops receiving traffic.
DEFAULT_DISCOVERY_TTL_S = 10.0
DEFAULT_SSH_PORT = 22
DEFAULT_PYTHON = "python3"
DEFAULT_BIND = "127.0.0.1"
# The Kubernetes values the `kubernetes:` keys may take (dyn export k8s).
IMAGE_PULL_POLICIES = ("Always", "IfNotPresent", "Never")
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")


def _no_entries() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True)
class DiscoverySpec:
    """Which discovery backend the graph's instances register with."""

    backend: str = DEFAULT_DISCOVERY
    ttl_s: float = DEFAULT_DISCOVERY_TTL_S
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class NodeSpec:
    """A machine that runs role instances (reached over ssh unless it is this one)."""

    name: str
    host: str
    user: str | None = None
    port: int = DEFAULT_SSH_PORT
    ssh_options: tuple[str, ...] = ()
    python: str = DEFAULT_PYTHON
    workdir: str | None = None
    bind: str = DEFAULT_BIND
    # Kubernetes node labels (name, value): `dyn export k8s` selects nodes by them for
    # roles placed here. Pairs, not a mapping, so that a node stays hashable.
    labels: tuple[tuple[str, str], ...] = ()


LOCAL_NODE = NodeSpec(name="local", host="127.0.0.1")


@dataclass(frozen=True)
class DependencySpec:
    """One wire: the client in ``slot`` calls ``component``, routed by ``strategy``."""

    slot: str
    component: str
    strategy: str | None = None


@dataclass(frozen=True)
class ComponentSpec:
    """A component: its role class, how many replicas, where, wired to what."""

    name: str
    uses: str
    replicas: int
    placement: tuple[str, ...]
    depends_on: tuple[DependencySpec, ...]
    config: msgspec.Struct
    # Kubernetes requests and limits per replica ({requests: {cpu: "1"}, limits: {...}});
    # `dyn up` ignores them.
    resources: Mapping[str, Mapping[str, str]] = field(default_factory=_no_entries)

    def dependency(self, slot: str) -> DependencySpec:
        for dep in self.depends_on:
            if dep.slot == slot:
                return dep
        raise KeyError(slot)


@dataclass(frozen=True)
class RoleInstance:
    """One replica of a component, placed on a node."""

    component: str
    replica: int
    node: str


class ModelSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The served model: its id in the OpenAI API, its context length, its tokenizer.

    ``tokenizer`` is a path to a Hugging Face ``tokenizer.json`` (needs ``dyn[hf]``);
    without one the built-in word-level tokenizer is used.
    """

    name: str
    max_model_len: Annotated[int, msgspec.Meta(ge=1)] = 8192
    tokenizer: str | None = None


@dataclass(frozen=True)
class KubernetesSpec:
    """How `dyn export k8s` renders the graph beyond its roles; `dyn up` ignores it."""

    image_pull_policy: str | None = None  # None: the cluster's default
    image_pull_secrets: tuple[str, ...] = ()
    service_type: str = "ClusterIP"  # the frontend's Service

    def is_default(self) -> bool:
        return self == KubernetesSpec()


@dataclass(frozen=True)
class GraphSpec:
    """A validated graph. Components keep the order the file wrote them in."""

    name: str
    namespace: str
    description: str | None
    transport: str
    discovery: DiscoverySpec
    nodes: tuple[NodeSpec, ...]
    components: tuple[ComponentSpec, ...]
    model: ModelSpec | None = None
    layout: str = DEFAULT_LAYOUT
    kubernetes: KubernetesSpec = KubernetesSpec()
    # `transport: {backend: NAME, options: {...}}`: what the transport is built with
    # (the nats transport's servers, say); empty for a plain `transport: NAME`.
    transport_options: Mapping[str, Any] = field(default_factory=_no_entries)
    source: str = field(default="<string>", compare=False)

    def component(self, name: str) -> ComponentSpec:
        for spec in self.components:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def node(self, name: str) -> NodeSpec:
        for spec in self.nodes:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def has_nodes(self) -> bool:
        """Whether the graph declares machines of its own (else all runs on this one)."""
        return self.nodes != (LOCAL_NODE,)

    def topological_order(self) -> list[ComponentSpec]:
        """Dependencies before dependents; otherwise the order of the file."""
        by_name = {c.name: c for c in self.components}
        done: set[str] = set()
        order: list[ComponentSpec] = []

        def visit(spec: ComponentSpec) -> None:
            if spec.name in done:
                return
            done.add(spec.name)  # validation rejected cycles, so marking early is safe
            for dep in spec.depends_on:
                visit(by_name[dep.component])
            order.append(spec)

        for spec in self.components:
            visit(spec)
        return order

    def instances(self) -> list[RoleInstance]:
        """Every replica in file order, spread round-robin over its placement nodes."""
        return [
            RoleInstance(c.name, replica, c.placement[replica % len(c.placement)])
            for c in self.components
            for replica in range(c.replicas)
        ]
