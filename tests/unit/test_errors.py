"""Every wire error code has exactly one class, and nothing outside dyn.errors uses codes.

The classes are the contract: a code that some module raises without a class would reach
callers as a bare ``RemoteError``, and a caller comparing code strings would miss a
refactor. These tests walk the classes (round trip through ``call_error_from_wire``), the
transport spec's code table, and the source of ``src/dyn`` for codes written by hand.
"""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import dyn
import dyn.errors
from dyn.errors import (
    CallError,
    DynError,
    NoInstancesError,
    RemoteError,
    RoutingError,
    TransportError,
    call_error_from_wire,
)
from dyn.openai.errors import call_error_body, client_error
from dyn.transports._serving import error_to_wire

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "dyn"
SPEC = ROOT / "transports" / "README.md"
VECTORS = ROOT / "transports" / "vectors" / "vectors.json"
DOCS_API = ROOT / "docs" / "openai-api.md"


def _import_all_of_dyn() -> None:
    # Subclasses defined anywhere in dyn (the tcp transport's FrameError, say) must load
    # before the class tree is walked.
    for module in pkgutil.walk_packages(dyn.__path__, "dyn."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)


def _subclasses(cls: type[CallError]) -> Iterator[type[CallError]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


_import_all_of_dyn()
ALL_CALL_ERRORS = sorted(set(_subclasses(CallError)), key=lambda cls: cls.__qualname__)
# The classes that name a code of their own; every other subclass inherits one of these.
CODE_CLASSES = [cls for cls in ALL_CALL_ERRORS if "code" in vars(cls)]
WIRE_CODES = frozenset(cls.code for cls in CODE_CLASSES)


def test_each_code_has_one_class() -> None:
    codes = [cls.code for cls in CODE_CLASSES]
    assert len(codes) == len(set(codes)), codes
    assert {cls.__module__ for cls in CODE_CLASSES} == {"dyn.errors"}
    for cls in CODE_CLASSES:
        assert cls.__name__ in dyn.errors.__all__


@pytest.mark.parametrize("cls", ALL_CALL_ERRORS, ids=lambda cls: cls.__qualname__)
def test_every_call_error_survives_the_wire(cls: type[CallError]) -> None:
    sent = cls("what went wrong")
    code, message = error_to_wire(sent)
    received = call_error_from_wire(code, message)
    assert isinstance(sent, type(received)), f"{cls.__name__} arrives as {received!r}"
    assert type(received).__module__ == "dyn.errors"
    assert (received.code, received.message) == (cls.code, "what went wrong")
    assert received.http_status == cls.http_status
    if "code" in vars(cls):
        assert type(received) is cls


def test_an_unknown_code_is_a_remote_error_that_keeps_it() -> None:
    received = call_error_from_wire("from_a_newer_peer", "it broke")
    assert type(received) is RemoteError
    assert (received.code, received.message, received.http_status) == (
        "from_a_newer_peer",
        "it broke",
        500,
    )
    assert error_to_wire(received) == ("from_a_newer_peer", "it broke")
    assert RemoteError.code == "internal"  # the class itself is untouched


def test_the_base_class_is_not_raised_without_a_code() -> None:
    with pytest.raises(TypeError, match="subclass"):
        CallError("which code?")


@pytest.mark.parametrize(
    ("exc", "wire"),
    [
        (NoInstancesError("no worker"), ("unavailable", "no worker")),
        (RoutingError("strategy refuses"), ("unavailable", "strategy refuses")),
        (DynError("odd"), ("internal", "odd")),
        (ValueError("bug"), ("internal", "ValueError: bug")),
    ],
)
def test_other_failures_cross_the_wire_as_a_class_code(
    exc: BaseException, wire: tuple[str, str]
) -> None:
    assert error_to_wire(exc) == wire
    assert wire[0] in WIRE_CODES


def test_clients_get_the_status_of_the_class() -> None:
    assert call_error_body(client_error(NoInstancesError("none"))) == {
        "error": {
            "message": "none",
            "type": "service_unavailable",
            "param": None,
            "code": "unavailable",
        }
    }
    assert client_error(NoInstancesError("none")).http_status == TransportError.http_status
    # A routing failure other than "no instance" is the frontend's own: 500.
    assert client_error(RoutingError("refused")).http_status == 500


def _spec_table() -> dict[str, tuple[str, int]]:
    """code -> (class name, HTTP status) from the error table of the transport spec."""
    section = SPEC.read_text().split("## Errors", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| `(\w+)` \| .* \| (\d{3}) \|$", section, re.MULTILINE)
    assert rows, "no error table in the spec"
    return {code: (name, int(status)) for code, name, status in rows}


def test_the_spec_lists_each_code_with_its_class_and_status() -> None:
    expected = {cls.code: (cls.__name__, cls.http_status) for cls in CODE_CLASSES}
    assert _spec_table() == expected


def test_the_openai_docs_give_each_code_its_status() -> None:
    section = DOCS_API.read_text().split("## Statuses", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| (\d{3}) \|", section, re.MULTILINE)
    assert rows, "no status table in docs/openai-api.md"
    assert {code: int(status) for code, status in rows} == {
        cls.code: cls.http_status for cls in CODE_CLASSES
    }


def test_golden_error_frames_carry_known_codes() -> None:
    vectors = json.loads(VECTORS.read_text())["vectors"]
    codes = {vector["code"] for vector in vectors if "code" in vector}
    assert codes
    assert codes <= WIRE_CODES


# -- no codes by hand outside dyn.errors -------------------------------------------------


def _strings(node: ast.AST) -> list[str]:
    """The string constants ``node`` is, or holds as a set/tuple/list (or frozenset(...))."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Call) and node.args and not node.keywords:
        return _strings(node.args[0]) if _name_of(node.func) in {"frozenset", "set"} else []
    if isinstance(node, ast.Set | ast.Tuple | ast.List):
        return [s for element in node.elts for s in _strings(element)]
    return []


def _name_of(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _is_code_target(node: ast.AST) -> bool:
    # ``self.code = ...`` is a class's own attribute (ApiError's OpenAI body code).
    if isinstance(node, ast.Attribute) and _name_of(node.value) == "self":
        return False
    return _name_of(node) == "code"


def hand_written_codes(source: str) -> list[str]:
    """Where ``source`` raises, compares or names a wire code by hand: ``line: what``."""
    classes: list[type[CallError]] = [CallError, *ALL_CALL_ERRORS]
    error_classes = {cls.__name__ for cls in classes}
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Call):
            callee = _name_of(node.func)
            if callee == "CallError":
                found.append(f"{line}: CallError(...) names no code; raise a subclass")
            for keyword in node.keywords:
                if keyword.arg == "code" and (callee in error_classes or callee is None):
                    found.append(f"{line}: {callee}(code=...)")
                elif keyword.arg == "code" and set(_strings(keyword.value)) & WIRE_CODES:
                    found.append(f"{line}: {callee}(code={_strings(keyword.value)[0]!r})")
            if callee == "call_error_from_wire" and node.args and _strings(node.args[0]):
                found.append(f"{line}: call_error_from_wire({_strings(node.args[0])[0]!r})")
        elif isinstance(node, ast.Compare):
            for operand in [node.left, *node.comparators]:
                if set(_strings(operand)) & WIRE_CODES:
                    found.append(f"{line}: compares with {_strings(operand)}")
        elif isinstance(node, ast.Return) and isinstance(node.value, ast.Tuple):
            if set(_strings(node.value)) & WIRE_CODES:
                found.append(f"{line}: returns {_strings(node.value)}")
        elif isinstance(node, ast.Set | ast.Tuple | ast.List):
            if len(set(_strings(node)) & WIRE_CODES) >= 2:
                found.append(f"{line}: a collection of codes {_strings(node)}")
        elif isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                pairs = (
                    zip(target.elts, node.value.elts, strict=False)
                    if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple)
                    else [(target, node.value)]
                )
                for name, value in pairs:
                    if _is_code_target(name) and set(_strings(value)) & WIRE_CODES:
                        found.append(f"{line}: code = {_strings(value)[0]!r}")
    return found


@pytest.mark.parametrize(
    "snippet",
    [
        'raise CallError("full", code="overloaded")',
        'raise CallError("the queue answered nothing")',
        'raise TransportError("gone", code=code)',
        'return ApiError(429, "full", code="overloaded")',
        'if exc.code == "unavailable": pass',
        'if exc.code != "overloaded": pass',
        'lost = exc.code in {"unavailable", "protocol"}',
        '_LOST = frozenset({"unavailable", "protocol"})',
        'status, message, code = 503, str(exc), "unavailable"',
        'error = call_error_from_wire("overloaded", message)',
        "copy = type(error)(error.message, code=error.code)",
        'return "unavailable", str(exc)',
        'return 503, str(exc), "unavailable"',
    ],
)
def test_the_scan_finds_codes_by_hand(snippet: str) -> None:
    assert hand_written_codes(snippet), snippet


def test_no_module_outside_errors_uses_codes_by_hand() -> None:
    found = [
        f"{path.relative_to(SRC.parent)}:{where}"
        for path in sorted(SRC.rglob("*.py"))
        if path != SRC / "errors.py"
        for where in hand_written_codes(path.read_text())
    ]
    assert not found, "raise or catch the error class instead:\n" + "\n".join(found)
