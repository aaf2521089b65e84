"""The mocker: a simulated LLM engine with Dynamo's cache, scheduler and timing model.

:class:`MockerCore` is the pure, clock-free engine (also driven by the simulator);
:class:`MockerEngine` runs it in real time behind the :class:`~dyn.engines.base.Engine`
interface; :class:`MockerConfig` is the worker's ``config`` in a graph.
"""

from __future__ import annotations

from dyn.engines.mocker.config import FixedMs, FixedTiming, MockerConfig
from dyn.engines.mocker.core import MockerCore, StepResult
from dyn.engines.mocker.engine import MockerEngine

__all__ = ["FixedMs", "FixedTiming", "MockerConfig", "MockerCore", "MockerEngine", "StepResult"]
