"""The async shell around :class:`MockerCore`: real time, streams and subscribers.

Run it with ``async with MockerEngine(config) as engine:`` — that starts the one
background loop, which steps the core, sleeps each step's duration (so ``speedup_ratio``
sets the pace) and then delivers that step's tokens and KV events. A host that owns a
task group can instead ``await task_group.start(engine.run)`` and cancel it to stop.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncGenerator
from types import TracebackType

import anyio
from anyio.abc import TaskGroup, TaskStatus

from dyn._streams import Wakeup
from dyn.engines.base import Engine, EngineOutput, EngineRequest
from dyn.engines.mocker.config import MockerConfig
from dyn.engines.mocker.core import MockerCore
from dyn.kv.events import KvEvent, WorkerLoad, WorkerUpdate

__all__ = ["MockerEngine"]

# A subscriber this many events behind gets a fresh snapshot instead of the backlog, so
# a stalled router costs the engine bounded memory (a few steps of a busy engine).
MAX_PENDING_EVENTS = 4096


class _Outputs:
    """One request's outputs on their way from the loop to its ``generate``.

    A memory stream would do, but its ``receive()`` passes a checkpoint before it waits,
    and a reader here nearly always finds the stream empty (it took the last step's
    output already): that is a second trip round the event loop per token. This waits
    once. Never more than the request's own outputs are held.
    """

    __slots__ = ("_wakeup", "closed", "items")

    def __init__(self) -> None:
        self.items: deque[EngineOutput] = deque()
        self.closed = False
        self._wakeup = Wakeup()

    def put(self, output: EngineOutput) -> None:
        self.items.append(output)
        self._wakeup.set()

    def close(self) -> None:
        self.closed = True
        self._wakeup.set()

    async def wait(self) -> None:
        """Until an output arrives or the stream closes."""
        await self._wakeup.wait()


class _Subscriber:
    """One ``subscribe()`` stream: events since its snapshot, coalesced until read."""

    def __init__(self) -> None:
        self.events: list[KvEvent] = []
        self.load: WorkerLoad | None = None
        self.since = 0  # id the snapshot covers: older events are already in it
        self.stale = True  # needs a snapshot before anything else
        self.wake = Wakeup()

    def push(self, events: list[KvEvent], load: WorkerLoad) -> None:
        if not self.stale:
            if events:
                self.events.extend(e for e in events if e.event_id > self.since)
            if len(self.events) > MAX_PENDING_EVENTS:
                self.events.clear()
                self.stale = True
            self.load = load
        self.wake.set()


class MockerEngine(Engine):
    """A simulated engine serving concurrent requests in real time.

    ``generate`` needs the loop running (see the module docstring); ``subscribe`` works
    at any time. Counters mirror the core's: ``prompt_tokens_total``,
    ``cached_prompt_tokens_total``, ``preemptions_total``.
    """

    def __init__(self, config: MockerConfig | None = None) -> None:
        self.config = config or MockerConfig()
        self.core = MockerCore(self.config)
        self._streams: dict[str, _Outputs] = {}
        self._subscribers: set[_Subscriber] = set()
        self._published_load: WorkerLoad | None = None  # the load subscribers last got
        self._wake = Wakeup()
        self._running = False
        self._task_group: TaskGroup | None = None

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> MockerEngine:
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        try:
            await task_group.start(self.run)
        except BaseException as exc:
            await task_group.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self._task_group = task_group
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        task_group, self._task_group = self._task_group, None
        assert task_group is not None
        task_group.cancel_scope.cancel()
        # The body's own exception is not the loop's: it propagates as raised, unwrapped.
        await task_group.__aexit__(None, None, None)
        return None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The engine loop; returns only when cancelled. Streams in flight then end."""
        if self._running:
            raise RuntimeError("this MockerEngine is already running")
        self._running = True
        task_status.started()
        try:
            while True:
                if not self.core.has_work():
                    await self._wake.wait()
                    continue
                result = self.core.step(anyio.current_time())
                # Always a checkpoint, even at 0/0 fixed timing, so others get to run.
                await anyio.sleep(result.duration_s)
                for request_id, output in result.outputs:
                    self._deliver(request_id, output)
                self._publish(result.events)
        finally:
            self._running = False
            for request_id, stream in self._streams.items():
                self.core.cancel(request_id)
                stream.close()
            self._streams.clear()

    @property
    def running(self) -> bool:
        """Whether the loop runs, i.e. ``generate`` may be called (a readiness check)."""
        return self._running

    # -- requests ------------------------------------------------------------------------

    async def generate(self, request: EngineRequest) -> AsyncGenerator[EngineOutput, None]:
        if not self._running:
            raise RuntimeError(
                "the mocker engine is not running; use `async with engine:` or start "
                "`engine.run` in a task group first"
            )
        request_id = request.request_id
        outputs = _Outputs()
        self.core.add(request, anyio.current_time())
        self._streams[request_id] = outputs
        self._wake.set()
        try:
            while True:
                if outputs.items:
                    output = outputs.items.popleft()
                elif outputs.closed:
                    return
                else:
                    await outputs.wait()
                    continue
                yield output
                if output.finish_reason is not None:
                    return
        finally:
            stream = self._streams.pop(request_id, None)
            if stream is not None:  # closed early: the request is still in the core
                self.core.cancel(request_id)
                stream.close()

    def _deliver(self, request_id: str, output: EngineOutput) -> None:
        stream = self._streams.get(request_id)
        if stream is None:
            return  # cancelled while the step ran
        stream.put(output)
        if output.finish_reason is not None:
            del self._streams[request_id]
            stream.close()

    # -- KV events and load --------------------------------------------------------------

    async def subscribe(self) -> AsyncGenerator[WorkerUpdate, None]:
        """A snapshot update first, then at most one update per read with every event
        since (coalesced) and the latest load; a fresh snapshot if it fell too far
        behind."""
        subscriber = _Subscriber()
        self._subscribers.add(subscriber)
        try:
            while True:
                if subscriber.stale:
                    snapshot = self.core.snapshot()
                    subscriber.stale, subscriber.load = False, None
                    # Its load is read now, maybe between steps: the next step's load
                    # goes out even if equal to the last published one.
                    self._published_load = None
                    subscriber.since = snapshot[0].event_id
                    yield WorkerUpdate(events=snapshot, load=self.core.load(), snapshot=True)
                elif subscriber.events or subscriber.load is not None:
                    events, subscriber.events = subscriber.events, []
                    load, subscriber.load = subscriber.load, None
                    yield WorkerUpdate(events=events, load=load)
                else:
                    await subscriber.wake.wait()
        finally:
            self._subscribers.discard(subscriber)

    def load(self) -> WorkerLoad:
        return self.core.load()

    def clear_cache(self) -> int:
        """Drop the cached blocks no request holds (see :meth:`MockerCore.clear`), tell
        subscribers, and return how many were dropped."""
        dropped = self.core.inactive_blocks
        self._publish(self.core.clear())
        return dropped

    def import_blocks(self, tokens: list[int]) -> int:
        """Make the prompt's full blocks resident as transferred KV (see
        :meth:`MockerCore.import_blocks`), tell subscribers, and return how many are."""
        resident, events = self.core.import_blocks(tokens, anyio.current_time())
        self._publish(events)
        return resident

    def _publish(self, events: list[KvEvent]) -> None:
        if not self._subscribers:
            return
        load = self.core.load()
        # A step that changed neither the cache nor the load (most decode steps) tells
        # subscribers nothing: sending it anyway would cost the router one update per
        # step, which grows with the number of workers, not with the work done.
        if not events and load == self._published_load:
            return
        self._published_load = load
        for subscriber in self._subscribers:
            subscriber.push(events, load)

    # -- metrics -------------------------------------------------------------------------

    @property
    def prompt_tokens_total(self) -> int:
        return self.core.prompt_tokens_total

    @property
    def cached_prompt_tokens_total(self) -> int:
        return self.core.cached_prompt_tokens_total

    @property
    def preemptions_total(self) -> int:
        return self.core.preemptions_total
