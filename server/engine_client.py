"""The server's one contact with the engine (DESIGN section 4): build and start `inkwell.engine.Engine` over
the loaded models, and the engine's exception types that `errors.py` maps to statuses.

The engine gets each model's decoder for the `text` of its commit events; it decodes special tokens too
(`<|eos|>` shows as itself in an event), while the server's answer text skips them (`ServedModel.decode`).
"""

from __future__ import annotations

from inkwell.engine.engine import (
    DeadlineExceeded,
    Engine,
    EngineClosed,
    EngineRequest,
    QueueFull,
)

from .models import ServedModel
from .settings import ServerSettings

__all__ = ["DeadlineExceeded", "Engine", "EngineClosed", "EngineRequest", "QueueFull", "make_engine"]


def make_engine(models: dict[str, ServedModel], settings: ServerSettings) -> Engine:
    decoders = {name: _piece_decoder(served) for name, served in models.items()}
    engine = Engine({name: served.model for name, served in models.items()}, decoders=decoders,
                    max_batch=settings.max_batch, max_queue=settings.max_queue,
                    max_tokens_per_batch=settings.max_tokens_per_batch)
    return engine.start()


def _piece_decoder(served: ServedModel):
    return lambda ids: served.tokenizer.decode(ids, skip_special_tokens=False)
