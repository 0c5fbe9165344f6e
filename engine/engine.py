"""The serving engine: one scheduler thread steps every loaded model round-robin, so that an asyncio
event loop only moves bytes (DESIGN section 4).

Requests (`EngineRequest`) wait in a bounded queue (`QueueFull` past `max_queue`) and join the running
batch of their model at a step boundary, up to `max_batch` rows per model. Each step, a model's rows
go through `step_rows`: rows of different prompt and canvas lengths share one forward by left padding,
cached rows are sub-batched by their cache group (phase), and `max_tokens_per_batch` splits a forward
that would compute too many positions. Every row keeps its own schedule and `torch.Generator`.
Cancellation and deadlines take effect at the next step. An error in one request's generation fails
that request alone; the scheduler thread keeps running.

`Engine.stream(request)` returns an async iterator of `StepEvent`s fed thread-safely from the scheduler
(`loop.call_soon_threadsafe`); `Engine.generate(requests)` blocks, for offline use.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .detok import Decode
from .params import DiffusionParams
from .rows import Row, StepEvent
from .sampler import make_row, new_generator, step_rows


class QueueFull(RuntimeError):
    """The engine's waiting queue is full; retry later (HTTP 429)."""


class DeadlineExceeded(TimeoutError):
    """The request's deadline passed before it finished (HTTP 504)."""


class RequestCancelled(RuntimeError):
    """The request was cancelled (e.g. its client disconnected)."""


class EngineClosed(RuntimeError):
    """The engine shut down before the request finished."""


@dataclass(frozen=True)
class EngineRequest:
    request_id: str
    model: str  # a name given to Engine(models=...)
    prompt_ids: Sequence[int]
    params: DiffusionParams = field(default_factory=DiffusionParams)
    stop_ids: tuple[int, ...] = ()  # early stop at the first committed one; () generates the full canvas
    seed: int | None = None  # overrides params.seed
    deadline: float | None = None  # a time.monotonic() value
    suffix_ids: Sequence[int] = ()  # infilling: the canvas sits between prompt and suffix


@dataclass(frozen=True)
class EngineResult:
    request_id: str
    answer: torch.Tensor  # [gen_length] the final canvas (eos after an early stop)
    nfe: int  # forward passes this request took part in
    steps: int


Sink = Callable[[object], None]


@dataclass(eq=False)
class _Slot:
    request: EngineRequest
    row: Row
    sink: Sink
    cancelled: bool = False


class Engine:
    def __init__(self, models: Mapping[str, nn.Module], *, decoders: Mapping[str, Decode] | None = None,
                 max_batch: int = 8, max_queue: int = 64, max_tokens_per_batch: int | None = None) -> None:
        if max_batch < 1 or max_queue < 0:
            raise ValueError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch}, {max_queue}")
        self.models = dict(models)
        self.decoders = dict(decoders or {})
        self.max_batch, self.max_queue, self.max_tokens_per_batch = max_batch, max_queue, max_tokens_per_batch
        self._cv = threading.Condition()
        self._waiting: deque[_Slot] = deque()
        self._running: dict[str, list[_Slot]] = {name: [] for name in self.models}
        self._cancelled: set[str] = set()
        self._order = itertools.cycle(list(self.models))
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="inkwell-scheduler", daemon=True)

    # lifecycle
    def start(self) -> Engine:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the scheduler; unfinished requests fail with EngineClosed."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread.is_alive():
            self._thread.join()
        for slot in [*self._waiting, *itertools.chain(*self._running.values())]:
            self._finish(slot, EngineClosed("the engine shut down"))
        self._waiting.clear()

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    def num_running(self, model: str | None = None) -> int:
        names = [model] if model is not None else list(self._running)
        return sum(len(self._running[n]) for n in names)

    # submission
    def submit(self, request: EngineRequest, sink: Sink, *, bounded: bool = True) -> None:
        """Queue a request; `sink` receives each StepEvent, then an EngineResult or an exception.
        Raises ValueError for an invalid request and QueueFull when the queue is full."""
        self._enqueue([_Slot(request, self._row(request), sink)], bounded)

    def _enqueue(self, slots: list[_Slot], bounded: bool) -> None:
        """Queue slots together, so that they join at the same step boundary."""
        with self._cv:
            if self._stopping:
                raise EngineClosed("the engine is shut down")
            if bounded and len(self._waiting) + len(slots) > self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are waiting (max_queue {self.max_queue})")
            self._waiting.extend(slots)
            self._cv.notify()

    def _row(self, request: EngineRequest) -> Row:
        if request.model not in self.models:
            raise ValueError(f"unknown model {request.model!r}; loaded: {sorted(self.models)}")
        model = self.models[request.model]
        device = next(model.parameters()).device
        seed = request.seed if request.seed is not None else request.params.seed
        generator = new_generator(device, seed)
        as_ids = lambda ids: torch.tensor(list(ids), dtype=torch.long, device=device)
        return make_row(model, as_ids(request.prompt_ids), request.params, generator=generator,
                        stop_ids=request.stop_ids, decode=self.decoders.get(request.model),
                        suffix=as_ids(request.suffix_ids))

    def cancel(self, request_id: str) -> None:
        """Cancel a waiting or running request; it stops at the next step."""
        with self._cv:
            self._cancelled.add(request_id)
            self._cv.notify()

    def stream(self, request: EngineRequest) -> RequestStream:
        """Submit now (raising QueueFull or ValueError here) and return an async iterator of StepEvents.
        Call from a running event loop; closing the iterator early cancels the request."""
        stream = RequestStream(self, request.request_id, asyncio.get_running_loop())
        self.submit(request, stream.deliver)
        return stream

    def generate(self, requests: Sequence[EngineRequest], timeout: float | None = None,
                 on_event: Callable[[int, StepEvent], None] | None = None) -> list[EngineResult]:
        """Run requests to completion (blocking; the queue bound does not apply) and return their results
        in order; `on_event(i, event)` sees request i's events on the scheduler thread. Raises the first
        failed request's error."""
        done = [threading.Event() for _ in requests]
        results: list[object] = [None] * len(requests)

        def sink_for(i: int) -> Sink:
            def sink(item: object) -> None:
                if isinstance(item, StepEvent):
                    if on_event is not None:
                        on_event(i, item)
                    return
                results[i] = item
                done[i].set()
            return sink

        self._enqueue([_Slot(r, self._row(r), sink_for(i)) for i, r in enumerate(requests)], bounded=False)
        for event in done:
            if not event.wait(timeout):
                raise TimeoutError(f"engine.generate did not finish within {timeout} s")
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results  # type: ignore[return-value]

    # the scheduler thread
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stopping and not self._waiting and not any(self._running.values()):
                    self._cancelled.clear()  # idle: every cancel left is for a request that already ended
                    self._cv.wait()
                if self._stopping:
                    return
                self._admit()
                cancelled, self._cancelled = self._cancelled, set()
            for _ in range(len(self.models)):
                self._tick(next(self._order), cancelled)

    def _admit(self) -> None:
        """Move waiting requests into their model's batch (a step boundary), dropping expired ones."""
        kept: deque[_Slot] = deque()
        while self._waiting:
            slot = self._waiting.popleft()
            error = self._stopped(slot, self._cancelled)
            if error is not None:
                self._finish(slot, error)
            elif len(self._running[slot.request.model]) < self.max_batch:
                self._running[slot.request.model].append(slot)
            else:
                kept.append(slot)
        self._waiting = kept

    @staticmethod
    def _stopped(slot: _Slot, cancelled: set[str]) -> Exception | None:
        if slot.cancelled or slot.request.request_id in cancelled:
            return RequestCancelled(f"request {slot.request.request_id} was cancelled")
        if slot.request.deadline is not None and time.monotonic() > slot.request.deadline:
            return DeadlineExceeded(f"request {slot.request.request_id} passed its deadline")
        return None

    def _tick(self, name: str, cancelled: set[str]) -> None:
        """One step of every running row of one model."""
        slots = self._running[name]
        for slot in list(slots):
            error = self._stopped(slot, cancelled)
            if error is not None:
                self._remove(name, slot, error)
        if not slots:
            return
        try:
            outcomes = step_rows(self.models[name], [s.row for s in slots], self.max_tokens_per_batch)
        except Exception as err:  # a scheduler bug must not kill the thread: fail this batch
            outcomes = [err] * len(slots)
        for slot, outcome in zip(list(slots), outcomes, strict=True):
            if isinstance(outcome, Exception):
                self._remove(name, slot, outcome)
                continue
            self._deliver(slot, outcome)
            if slot.row.done:
                row = slot.row
                result = EngineResult(slot.request.request_id, row.answer.clone(), row.nfe, row.step)
                self._remove(name, slot, result)

    def _remove(self, name: str, slot: _Slot, final: object) -> None:
        slot.row.release()
        self._running[name].remove(slot)
        self._finish(slot, final)

    def _deliver(self, slot: _Slot, item: object) -> None:
        try:
            slot.sink(item)
        except Exception:  # the consumer is gone (e.g. its event loop closed): stop the request
            slot.cancelled = True

    def _finish(self, slot: _Slot, final: object) -> None:
        self._deliver(slot, final)


class RequestStream:
    """Async iterator of one request's StepEvents; `result` holds the EngineResult once it ends."""

    def __init__(self, engine: Engine, request_id: str, loop: asyncio.AbstractEventLoop) -> None:
        self.engine, self.request_id, self.loop = engine, request_id, loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.result: EngineResult | None = None
        self.finished = False

    def deliver(self, item: object) -> None:  # called on the scheduler thread
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> StepEvent:
        if self.finished:
            raise StopAsyncIteration
        item = await self.queue.get()
        if isinstance(item, StepEvent):
            return item
        self.finished = True
        if isinstance(item, BaseException):
            raise item
        self.result = item  # type: ignore[assignment]
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop listening; an unfinished request is cancelled at its next step."""
        if not self.finished:
            self.finished = True
            self.engine.cancel(self.request_id)
