"""`inkwell-serve`'s app under uvicorn on a thread of the test process, on a loopback port.

A test may pass its own `engine_factory`, e.g. one that wraps a model's forward to raise: the fault hook
lives in the test, so production has no switch for it. Running in-process also lets a test look inside
after the fact: the event loop's tasks, the server's open generations, the engine's queues.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import time
import traceback

import uvicorn
from inkwell.engine.engine import RequestStream
from inkwell.server.app import create_app
from inkwell.server.engine_client import make_engine
from inkwell.server.generation import Generation
from inkwell.server.settings import ServerSettings

from ..server.conftest import free_port

SERVER_TASKS = {"Server.serve", "LifespanOn.main", "_shutdown_watcher", "InProcessServer.call.<locals>.run"}


class InProcessServer:
    def __init__(self, models: tuple[tuple[str, str], ...], engine_factory=None, **settings) -> None:
        port = free_port()
        self.settings = ServerSettings(models=models, port=port, **settings)
        self.app = create_app(self.settings, engine_factory or make_engine)
        self.state = self.app.state.inkwell
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self.server.serve(),),
                                       name="in-process-server", daemon=True)

    def start(self, timeout: float = 120) -> InProcessServer:
        """Serve, and return once the port is open and the models are loaded (the lifespan loads them)."""
        self.thread.start()
        end = time.monotonic() + timeout
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < end, "uvicorn did not start"
            time.sleep(0.05)
        assert self.state.wait_loaded(timeout), f"models did not load: {self.state.failure}"
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.loop.run_until_complete(_cancel_all())  # e.g. sse-starlette's watcher of the app's shutdown
        self.loop.close()

    def call(self, fn):
        """Run `fn()` on the server's event loop and return its result."""
        async def run():
            return fn()
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(30)

    def request_tasks(self) -> list[str]:
        """The coroutine names of the tasks alive on the server's loop, less those that live as long as the
        server (uvicorn's, sse-starlette's shutdown watcher, this call): what requests left running."""
        names = [t.get_coro().__qualname__ for t in self.call(asyncio.all_tasks)]
        return sorted(n for n in names if n not in SERVER_TASKS)

    def settle(self, timeout: float = 60) -> tuple[list[str], dict[str, int]]:
        """(request tasks, leftovers) once both are empty and zero, or when `timeout` s have passed. A
        request's response can end before the engine has dropped its row: the server cancels a row it no
        longer needs (its answer is complete, its client left), and the scheduler applies that at its next
        step."""
        end = time.monotonic() + timeout
        while (self.request_tasks() or any(self.leftovers().values())) and time.monotonic() < end:
            time.sleep(0.05)
        return self.request_tasks(), self.leftovers()

    def leftovers(self) -> dict[str, int]:
        """What finished requests must not leave behind: open generations, engine rows, waiting-row counts."""
        engine = self.state.engine
        return {"generations": len(self.state.generations), "engine_waiting": engine.num_waiting,
                "engine_running": engine.num_running(),
                "metric_waiting_rows": sum(self.state.metrics.waiting_rows.values())}


async def _cancel_all() -> None:
    pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


def engine_report(engine) -> str:
    """What is left in `engine` and where its scheduler thread is: the message of a failed leftover check."""
    lines = [f"waiting: {[s.request.request_id for s in engine._waiting]}",
             f"cancel requests not yet applied: {sorted(engine._cancelled)}"]
    for name, slots in engine._running.items():
        for s in slots:
            row = s.row
            left = None if s.request.deadline is None else round(s.request.deadline - time.monotonic())
            lines.append(f"running {name}: {s.request.request_id} step {row.step} block {row.block} "
                         f"done {row.done} cancelled {s.cancelled} deadline in {left} s")
    frame = sys._current_frames().get(engine._thread.ident)
    if frame is not None:
        lines += ["scheduler thread:", *traceback.format_stack(frame)[-6:]]
    return "\n".join(lines)


def live_request_objects(engine) -> int:
    """Generation and RequestStream objects of `engine` still alive (after a full collection)."""
    gc.collect()
    return sum(isinstance(o, (Generation, RequestStream)) and o.engine is engine for o in gc.get_objects())
