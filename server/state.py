"""The server's lifecycle: loading -> ready -> draining, the loaded models, the engine and the open requests.

Models load in a background thread while the port is already open; `/health` and every API route answer
503 until all are loaded and warmed (or, if loading failed, with the reason). SIGTERM moves the state to
draining: new requests get 503, open generations run on until they finish or `drain_timeout` passes,
then the process exits 0 (`app.serve`).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Literal

from .errors import NotFound, Unavailable
from .metrics import Metrics
from .models import ServedModel, load_served
from .settings import ServerSettings

logger = logging.getLogger("inkwell.server")

Phase = Literal["loading", "ready", "draining", "failed"]


class ServerState:
    def __init__(self, settings: ServerSettings, engine_factory) -> None:
        """`engine_factory(models: dict[str, ServedModel], settings)` builds and starts the engine."""
        self.settings = settings
        self.engine_factory = engine_factory
        self.phase: Phase = "loading"
        self.failure: str | None = None
        self.models: dict[str, ServedModel] = {}
        self.engine = None
        self.generations: set = set()  # open Generation objects (the drain waits for them)
        self.drain_deadline: float | None = None
        self._aborted = False
        self.metrics = Metrics(self.engine_running)
        self._loader: threading.Thread | None = None

    # -- loading ---------------------------------------------------------------------------------------
    def start_loading(self) -> None:
        self._loader = threading.Thread(target=self._load_all, name="inkwell-loader", daemon=True)
        self._loader.start()

    def _load_all(self) -> None:
        try:
            models = {}
            for name, source in self.settings.models:
                models[name] = load_served(name, source, self.settings.device, self.settings.dtype)
            self.engine = self.engine_factory(models, self.settings)
            self.models = models
            if self.phase == "loading":
                self.phase = "ready"
        except Exception as err:  # any load failure: report it on /health and every route
            # a bad checkpoint or path (CheckpointError is a ValueError) is one line naming the file; anything
            # else is a bug worth its traceback
            expected = isinstance(err, (ValueError, OSError))
            logger.error("loading the models failed: %s", err, exc_info=None if expected else err)
            self.failure = f"{type(err).__name__}: {err}"
            self.phase = "failed"

    def wait_loaded(self, timeout: float | None = None) -> bool:
        if self._loader is not None:
            self._loader.join(timeout)
        return self.phase == "ready"

    # -- requests --------------------------------------------------------------------------------------
    def require_ready(self) -> None:
        if self.phase == "ready":
            return
        if self.phase == "failed":
            raise Unavailable(f"the server could not load its models: {self.failure}", code="load_failed")
        if self.phase == "draining":
            raise Unavailable("the server is shutting down", code="draining")
        raise Unavailable("the models are still loading", code="loading", headers={"Retry-After": "2"})

    def model(self, name: str) -> ServedModel:
        self.require_ready()
        if name not in self.models:
            raise NotFound(f"model {name!r} is not served here; available: {sorted(self.models)}",
                           param="model", code="model_not_found")
        return self.models[name]

    def engine_running(self) -> dict[str, int]:
        if self.engine is None:
            return {name: 0 for name, _ in self.settings.models}
        return {name: self.engine.num_running(name) for name in self.models}

    # -- draining --------------------------------------------------------------------------------------
    def begin_drain(self) -> None:
        if self.phase != "draining":
            logger.info("draining: refusing new requests, %d open, up to %.0f s",
                        len(self.generations), self.settings.drain_timeout)
            self.phase = "draining"
            self.drain_deadline = time.monotonic() + self.settings.drain_timeout

    def drained(self) -> bool:
        """True once no generation is open. Past `drain_timeout` the open ones are ended with an error
        chunk; a second later the server exits regardless."""
        if self.phase != "draining":
            return False
        if not self.generations:
            return True
        late = time.monotonic() - (self.drain_deadline or 0)
        if late >= 0 and not self._aborted:
            self._aborted = True
            logger.warning("drain timeout: ending %d open requests", len(self.generations))
            for gen in list(self.generations):
                gen.abort(Unavailable("the server shut down before this request finished", code="shutdown"))
        return late >= 1.0

    def shutdown(self) -> None:
        if self.engine is not None:
            self.engine.close()
