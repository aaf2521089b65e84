"""A worker engine that forwards each request to an upstream OpenAI-compatible server
(vLLM, SGLang, llama.cpp, TGI, dyn itself), and the translation of vLLM's KV events.

:class:`OpenAIProxyEngine` is the engine, :class:`OpenAIProxyConfig` its configuration
(the ``proxy_worker`` role's ``config`` in a graph).
"""

from __future__ import annotations

from dyn.engines.openai_proxy.config import KvEventsConfig, OpenAIProxyConfig
from dyn.engines.openai_proxy.engine import OpenAIProxyEngine

__all__ = ["KvEventsConfig", "OpenAIProxyConfig", "OpenAIProxyEngine"]
