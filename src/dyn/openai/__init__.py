"""The OpenAI-compatible HTTP surface: routes a frontend mounts, and the backend seam.

``build_openai_routes(backend, model, metrics)`` returns the starlette routes for
``/v1/completions``, ``/v1/chat/completions``, ``/v1/models`` and ``/v1/models/{id}``;
:func:`openai_http_error` answers the requests no route takes. The backend speaks
:class:`GenerateRequest` / :class:`GenerateOutput` (see :mod:`dyn.openai.protocol`);
:class:`ClientBackend` is that backend over dyn's runtime.

Only the protocol is imported eagerly: a processor that needs the structs does not pay
for starlette and prometheus.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from dyn.openai.protocol import GenerateOutput, GenerateRequest, ModelInfo, OpenAIBackend

if TYPE_CHECKING:
    from dyn.openai.backend import ClientBackend
    from dyn.openai.metrics import OpenAIMetrics
    from dyn.openai.routes import DEFAULT_MAX_BODY_BYTES, build_openai_routes
    from dyn.openai.unrouted import openai_http_error

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "ClientBackend",
    "GenerateOutput",
    "GenerateRequest",
    "ModelInfo",
    "OpenAIBackend",
    "OpenAIMetrics",
    "build_openai_routes",
    "openai_http_error",
]

_LAZY = {
    "ClientBackend": "dyn.openai.backend",
    "OpenAIMetrics": "dyn.openai.metrics",
    "DEFAULT_MAX_BODY_BYTES": "dyn.openai.routes",
    "build_openai_routes": "dyn.openai.routes",
    "openai_http_error": "dyn.openai.unrouted",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dyn.openai' has no attribute {name!r}")
