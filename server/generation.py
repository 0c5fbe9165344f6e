"""One request's rows in the engine: submit `n` independent rows, merge their step events, close them.

`Job` is a request converted to engine terms (prompt and suffix ids, resolved `DiffusionParams`, stop ids,
answer length). `Generation.start` submits every row at once, so a full queue (429) or a bad parameter
(400) is raised before any byte is streamed; `updates()` yields `RowUpdate`s (a row's step event, its newly
final text, its finish reason) in the order the engine produces them; `close()` cancels whatever is still
running, which the engine applies at its next step (a disconnecting client, a stop string, `max_tokens`
reached before the canvas is full). Row i of a seeded request uses seed + i.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from inkwell.engine import DiffusionParams, StepEvent

from .choice import ChoiceText
from .engine_client import EngineRequest
from .metrics import Metrics, RequestTimer
from .models import ServedModel


@dataclass(frozen=True)
class Job:
    served: ServedModel
    prompt_ids: list[int]
    suffix_ids: list[int]
    params: DiffusionParams  # resolved: gen_length is the canvas
    answer_tokens: int  # max_tokens: the output is cut here (the canvas may be longer)
    stop_ids: tuple[int, ...]
    stop_strings: list[str]
    n: int
    commit_events: bool
    deadline: float | None  # time.monotonic() deadline


@dataclass
class RowUpdate:
    index: int  # the choice index
    event: StepEvent | None  # None for the row's final update when the engine had nothing more
    text: str  # newly final text
    finish_reason: str | None = None


@dataclass
class Row:
    index: int
    choice: ChoiceText
    timer: RequestTimer
    events: AsyncIterator[StepEvent]
    closed: bool = False


class Generation:
    def __init__(self, engine, job: Job, metrics: Metrics, request_id: str,
                 active: set | None = None) -> None:
        self.engine, self.job, self.metrics, self.request_id = engine, job, metrics, request_id
        self.active = active if active is not None else set()  # the server's open generations (drain)
        self.rows: list[Row] = []
        self.created = int(time.time())
        self._queue: asyncio.Queue = asyncio.Queue()  # row updates, a row's error, None when a row ends

    @property
    def prompt_tokens(self) -> int:
        return len(self.job.prompt_ids) + len(self.job.suffix_ids)

    @property
    def completion_tokens(self) -> int:
        return sum(r.choice.completion_tokens for r in self.rows)

    async def start(self) -> None:
        """Submit all rows; on any failure cancel those already submitted and re-raise."""
        self.active.add(self)
        try:
            for i in range(self.job.n):
                self.rows.append(self._submit(i))
        except BaseException:
            await self.close()
            raise

    def _submit(self, i: int) -> Row:
        job, served = self.job, self.job.served
        params = job.params if job.params.seed is None else replace(job.params, seed=job.params.seed + i)
        request = EngineRequest(request_id=f"{self.request_id}-{i}-{uuid.uuid4().hex[:6]}", model=served.name,
                                prompt_ids=job.prompt_ids, params=params, stop_ids=job.stop_ids,
                                seed=params.seed, deadline=job.deadline, suffix_ids=tuple(job.suffix_ids))
        events = self.engine.stream(request)  # submits now: QueueFull / ValueError raise here
        choice = ChoiceText(job.params.gen_length, job.answer_tokens, job.stop_ids, job.stop_strings,
                            served.decode)
        return Row(index=i, choice=choice, timer=self.metrics.timer(served.name), events=events)

    async def updates(self) -> AsyncIterator[RowUpdate]:
        """Every row's updates, merged in arrival order; the last update of a row has its finish_reason."""
        queue = self._queue
        tasks = [asyncio.create_task(self._pump(row, queue)) for row in self.rows]
        try:
            for _ in range(len(tasks)):
                while (item := await queue.get()) is not None:
                    if isinstance(item, BaseException):
                        raise item
                    yield item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _pump(self, row: Row, queue: asyncio.Queue) -> None:
        try:
            async for event in row.events:
                update = self._apply(row, event)
                await queue.put(update)
                if update.finish_reason is not None:
                    break
            else:
                text = row.choice.finish()
                self._content(row, text)
                await queue.put(RowUpdate(row.index, None, text, row.choice.finish_reason))
            self._end(row)
        except Exception as err:  # the row failed in the engine: the whole request reports it
            await queue.put(err)
        finally:
            await self._close_row(row)
            await queue.put(None)

    def _apply(self, row: Row, event: StepEvent) -> RowUpdate:
        row.timer.step(len(event.commits))
        text = row.choice.commit((c.index, c.token_id) for c in event.commits)
        self._content(row, text)
        return RowUpdate(row.index, event, text, row.choice.finish_reason)

    def _content(self, row: Row, text: str) -> None:
        if text:
            row.timer.content()

    def _end(self, row: Row) -> None:
        row.timer.end(row.choice.finish_reason or "length", self.prompt_tokens, row.choice.completion_tokens)

    async def _close_row(self, row: Row) -> None:
        if not row.closed:
            row.closed = True
            row.timer.close()
            await row.events.aclose()

    def abort(self, err: Exception) -> None:
        """End `updates()` with `err` (the server is shutting down); `close()` then cancels the rows."""
        self._queue.put_nowait(err)

    async def close(self) -> None:
        """Cancel every row still in the engine."""
        for row in self.rows:
            await self._close_row(row)
        self.active.discard(self)
