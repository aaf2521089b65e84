"""The keys only a cluster deployment reads: ``kubernetes:`` (image pulls, the frontend's
Service type), a component's ``resources:`` and a node's ``labels:``.

``dyn up`` ignores them; ``dyn export k8s`` renders them. They are validated like every
other key so that a typo fails at ``dyn graph validate``, not at ``kubectl apply``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from dyn.graph._fields import check_keys, describe, did_you_mean, expect_mapping, expect_str
from dyn.graph._yaml import FieldPath, Problems
from dyn.graph.model import (
    IMAGE_PULL_POLICIES,
    SERVICE_TYPES,
    KubernetesSpec,
)

__all__ = ["KUBERNETES_KEYS", "read_kubernetes", "read_labels", "read_resources"]

KUBERNETES_KEYS = ("image_pull_policy", "image_pull_secrets", "service_type")
RESOURCES_KEYS = ("requests", "limits")

# A Kubernetes quantity: a decimal number with an optional SI, binary or exponent suffix
# ("500m", "2Gi", "1.5", "1e3").
_QUANTITY = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|[KMGTPE]i|[numkMGTPE])?")
# A resource name: an optional DNS-subdomain prefix, then a name ("cpu", "nvidia.com/gpu").
_RESOURCE = re.compile(
    r"([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
)
# A label's name part and value: at most 63 characters of these (a value may be empty).
_LABEL_PART = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
# The name of a Secret (image_pull_secrets): a DNS subdomain.
_SECRET_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


def read_kubernetes(problems: Problems, raw: Any) -> KubernetesSpec | None:
    path: FieldPath = ("kubernetes",)
    if raw is None:
        return KubernetesSpec()
    section = expect_mapping(problems, path, raw)
    if section is None:
        return None
    check_keys(problems, path, section, KUBERNETES_KEYS)
    count = len(problems.lines)
    policy = _choice(problems, (*path, "image_pull_policy"), section.get("image_pull_policy"),
                     IMAGE_PULL_POLICIES)  # fmt: skip
    service_type = _choice(problems, (*path, "service_type"), section.get("service_type"),
                           SERVICE_TYPES)  # fmt: skip
    secrets: list[str] = []
    raw_secrets = section.get("image_pull_secrets", [])
    if not isinstance(raw_secrets, list):
        problems.add(
            (*path, "image_pull_secrets"),
            f"must be a list of Secret names (got {describe(raw_secrets)})",
        )
    else:
        for i, item in enumerate(raw_secrets):
            name = expect_str(problems, (*path, "image_pull_secrets", i), item)
            if name is not None and not _SECRET_NAME.fullmatch(name):
                problems.add(
                    (*path, "image_pull_secrets", i),
                    f"{name!r} is not a Secret name; use lower-case letters, digits, '-' and '.'",
                )
            elif name is not None:
                secrets.append(name)
    if len(problems.lines) != count:
        return None
    return KubernetesSpec(
        image_pull_policy=policy,
        image_pull_secrets=tuple(secrets),
        service_type=service_type or KubernetesSpec().service_type,
    )


def read_resources(
    problems: Problems, path: FieldPath, raw: Any
) -> Mapping[str, Mapping[str, str]] | None:
    """``{requests: {cpu: "1", memory: 2Gi}, limits: {...}}``, each quantity a string."""
    if raw is None:
        return MappingProxyType({})
    section = expect_mapping(problems, path, raw)
    if section is None:
        return None
    check_keys(problems, path, section, RESOURCES_KEYS)
    count = len(problems.lines)
    out: dict[str, Mapping[str, str]] = {}
    for kind in RESOURCES_KEYS:
        if kind not in section:
            continue
        entries = expect_mapping(problems, (*path, kind), section[kind])
        if entries is None:
            continue
        amounts: dict[str, str] = {}
        for name, amount in entries.items():
            where: FieldPath = (*path, kind, name)
            if not isinstance(name, str) or not _RESOURCE.fullmatch(name):
                problems.add(
                    where, f"{name!r} is not a resource name (e.g. cpu, memory, nvidia.com/gpu)"
                )
                continue
            text = amount if isinstance(amount, str) else None
            if isinstance(amount, int | float) and not isinstance(amount, bool):
                text = str(amount)
            if text is None or not _QUANTITY.fullmatch(text):
                problems.add(
                    where,
                    f"must be a quantity such as 2, 500m, 4Gi (got {describe(amount)})",
                )
                continue
            amounts[name] = text
        out[kind] = MappingProxyType(amounts)
    return MappingProxyType(out) if len(problems.lines) == count else None


def read_labels(
    problems: Problems, path: FieldPath, raw: Any
) -> tuple[tuple[str, str], ...] | None:
    """A node's Kubernetes labels: what a node selector matches for roles placed there."""
    if raw is None:
        return ()
    section = expect_mapping(problems, path, raw)
    if section is None:
        return None
    count = len(problems.lines)
    labels: dict[str, str] = {}
    for key, value in section.items():
        where: FieldPath = (*path, key)
        if not isinstance(key, str) or not _label_key_ok(key):
            problems.add(
                where,
                f"{key!r} is not a label name; use [prefix/]name, the name at most 63 letters, "
                "digits, '-', '_' or '.'",
            )
            continue
        text = expect_str(problems, where, value)
        if text is None:
            continue
        if text and not _LABEL_PART.fullmatch(text):
            problems.add(
                where,
                f"{text!r} is not a label value; at most 63 letters, digits, '-', '_' or '.'",
            )
            continue
        labels[key] = text
    return tuple(labels.items()) if len(problems.lines) == count else None


def _label_key_ok(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _SECRET_NAME.fullmatch(prefix)):
        return False
    return bool(_LABEL_PART.fullmatch(name))


def _choice(problems: Problems, path: FieldPath, raw: Any, choices: tuple[str, ...]) -> str | None:
    if raw is None:
        return None
    value = expect_str(problems, path, raw)
    if value is None or value in choices:
        return value
    hint = did_you_mean(value, choices)
    problems.add(path, f"unknown value {value!r}{hint}; choose one of {', '.join(choices)}")
    return None
