"""The serving base: validate -> convert -> stream or not, shared by chat and text completions.

`Serving.create` resolves the model (404), converts the request to a `Job` (prompt ids from the subclass,
`DiffusionParams` from `diffusion_params`; 400 on explicit values that cannot work together or a prompt +
canvas beyond the context length), submits its rows (429 when the queue is full), then either streams
chunks (`streaming.py`) or collects one response. Errors before the first byte are HTTP statuses through
`errors.py`; an error after streaming began is one `{"error": ...}` chunk, then `[DONE]`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from inkwell.engine import DiffusionParams
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask

from .errors import BadRequest, ClientClosed, to_api_error
from .generation import Generation, Job, RowUpdate
from .models import ServedModel
from .protocol import (
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessageOut,
    CompletionRequest,
    CompletionResponse,
    SamplingFields,
    TextChoice,
    Usage,
)
from .state import ServerState
from .streaming import DONE, ChatChunks, TextChunks, error_chunk

logger = logging.getLogger("inkwell.server")

FAMILY_BLOCK = {"llada": 32, "dream": None}  # None: one block over the whole canvas
DEFAULT_ANSWER = 128


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def diffusion_params(request: SamplingFields, answer_tokens: int | None,
                     served: ServedModel) -> DiffusionParams:
    """The request's `DiffusionParams`: explicit values as sent, defaults from the model, rounded to fit.

    The canvas is `max_tokens` (else the model's default length) padded up to whole blocks; default
    `steps` keep the model's steps-per-token ratio and are rounded up to a multiple of the block count.
    Explicit `steps` with explicit `block_length` must fit together (else 400, from `DiffusionParams`)."""
    d = served.defaults
    answer = answer_tokens or d.get("gen_length") or DEFAULT_ANSWER
    block = request.block_length or d.get("block_length") or FAMILY_BLOCK.get(served.family) or answer
    canvas = _round_up(answer, block)
    blocks = canvas // block
    steps = request.steps
    if steps is None:
        ratio = d["steps"] / d["gen_length"] if d.get("steps") and d.get("gen_length") else 1.0
        steps = _round_up(max(1, math.ceil(ratio * canvas)), blocks)
    elif request.block_length is None:
        steps = _round_up(steps, blocks)
    pick = lambda name: getattr(request, name) if getattr(request, name) is not None else d.get(name)
    return DiffusionParams(
        gen_length=canvas, steps=steps, block_length=block, remasking=pick("remasking"),
        temperature=float(pick("temperature") or 0.0), top_p=pick("top_p"), alg_temp=pick("alg_temp"),
        threshold=pick("threshold"), cache=pick("cache") or "none", cfg_scale=float(pick("cfg_scale") or 0.0),
        seed=request.seed,
    ).resolve(served.family)


def stop_ids(request: SamplingFields, served: ServedModel) -> tuple[int, ...]:
    vocab = len(served.tokenizer)
    extra = list(request.stop_token_ids or [])
    bad = [t for t in extra if not 0 <= t < vocab or t == served.mask_id]
    if bad:
        raise BadRequest(f"stop_token_ids {bad} are not token ids of {served.name!r} (0..{vocab - 1}, "
                         f"not the mask id {served.mask_id})", param="stop_token_ids")
    base = () if request.ignore_eos else served.stop_ids
    return tuple(sorted({*base, *extra}))


class Serving:
    """Validate -> convert -> stream or not. Subclasses give the prompt ids and the response shapes."""

    chunks = ChatChunks
    id_prefix = "chatcmpl"

    def __init__(self, state: ServerState) -> None:
        self.state = state

    # -- subclass hooks --------------------------------------------------------------------------------
    def prompt_ids(self, request, served: ServedModel) -> tuple[list[int], list[int]]:
        """(prompt ids, suffix ids)."""
        raise NotImplementedError

    def response(self, gen: Generation, texts: list[str], reasons: list[str], usage: Usage):
        raise NotImplementedError

    # -- the pipeline ----------------------------------------------------------------------------------
    async def create(self, request: SamplingFields, raw: Request) -> Response:
        served = self.state.model(request.model)
        job = self.convert(request, served)
        logger.debug("request %s: model %s, user %r, n %d, canvas %d", raw.state.request_id, served.name,
                     request.user, request.n, job.params.gen_length)
        gen = Generation(self.state.engine, job, self.state.metrics, raw.state.request_id,
                         self.state.generations)
        await gen.start()
        if request.stream:
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            return EventSourceResponse(self.stream(gen, request.model, include_usage), sep="\n", ping=15,
                                       background=BackgroundTask(gen.close))
        return JSONResponse((await self.complete(gen, raw)).model_dump())

    def convert(self, request: SamplingFields, served: ServedModel) -> Job:
        prompt, suffix = self.prompt_ids(request, served)
        if not prompt:
            raise BadRequest("the prompt is empty after tokenization", param="prompt")
        try:
            params = diffusion_params(request, request.answer_tokens, served)
        except ValueError as err:
            raise BadRequest(str(err), code="invalid_value") from err
        if request.steps is not None and params.steps > params.gen_length:  # extra steps commit nothing
            raise BadRequest(f"steps {params.steps} exceeds the canvas of {params.gen_length} tokens; "
                             f"allowed: 1..{params.gen_length}", param="steps", code="invalid_value")
        total = len(prompt) + params.gen_length + len(suffix)
        if total > served.max_length:
            raise BadRequest(f"prompt ({len(prompt)} tokens) + canvas ({params.gen_length}) + suffix "
                             f"({len(suffix)}) = {total} tokens exceeds the context length "
                             f"{served.max_length} of {served.name!r}", param="max_tokens",
                             code="context_length_exceeded")
        answer = min(request.answer_tokens or params.gen_length, params.gen_length)
        deadline = time.monotonic() + self.state.settings.request_timeout
        return Job(served=served, prompt_ids=prompt, suffix_ids=suffix, params=params, answer_tokens=answer,
                   stop_ids=stop_ids(request, served), stop_strings=request.stop_strings, n=request.n,
                   commit_events=request.commit_events, deadline=deadline)

    async def stream(self, gen: Generation, model: str, include_usage: bool) -> AsyncIterator[str]:
        chunks = self.chunks(f"{self.id_prefix}-{gen.request_id}", gen.created, model)
        try:
            for i in range(gen.job.n):
                if (role := chunks.role(i)) is not None:
                    yield role
            async for update in gen.updates():
                for chunk in self._update_chunks(chunks, update, gen.job.commit_events):
                    yield chunk
            if include_usage:
                yield chunks.usage(self._usage(gen))
        except Exception as exc:  # after the first byte an error is a chunk, never a status
            yield error_chunk(to_api_error(exc))
        finally:
            await gen.close()
        yield DONE

    @staticmethod
    def _update_chunks(chunks: ChatChunks, update: RowUpdate, commit_events: bool) -> list[str]:
        out = []
        if update.text or (commit_events and update.event is not None):
            out.append(chunks.delta(update.index, update.text, update.event if commit_events else None))
        if update.finish_reason is not None:
            out.append(chunks.finish(update.index, update.finish_reason))
        return out

    async def complete(self, gen: Generation, raw: Request):
        """Collect every row; cancel them if the client goes away first."""
        collect = asyncio.ensure_future(self._collect(gen))
        watch = asyncio.ensure_future(_wait_disconnect(raw))
        try:
            await asyncio.wait({collect, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            if not collect.done():
                collect.cancel()  # only requested: the task is not `cancelled()` until it has unwound
                await asyncio.wait({collect})
            await gen.close()
        if collect.cancelled():
            raise ClientClosed("the client disconnected; its rows were cancelled", code="client_closed")
        texts, reasons = collect.result()  # raises a row's error
        return self.response(gen, texts, reasons, self._usage(gen))

    @staticmethod
    async def _collect(gen: Generation) -> tuple[list[str], list[str]]:
        texts, reasons = [""] * gen.job.n, ["length"] * gen.job.n
        async for update in gen.updates():
            texts[update.index] += update.text
            if update.finish_reason is not None:
                reasons[update.index] = update.finish_reason
        return texts, reasons

    @staticmethod
    def _usage(gen: Generation) -> Usage:
        prompt, completion = gen.prompt_tokens, gen.completion_tokens
        return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


async def _wait_disconnect(raw: Request, every: float = 0.25) -> None:
    while not await raw.is_disconnected():
        await asyncio.sleep(every)


class ChatServing(Serving):
    def prompt_ids(self, request: ChatCompletionRequest, served: ServedModel) -> tuple[list[int], list[int]]:
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text}
                    for m in request.messages]
        try:
            text = served.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as err:  # jinja errors of the model's own template (e.g. role order rules)
            raise BadRequest(f"the chat template of {served.name!r} rejected the messages: {err}",
                             param="messages") from err
        return served.tokenizer(text, add_special_tokens=False)["input_ids"], []

    def response(self, gen, texts, reasons, usage) -> ChatCompletionResponse:
        choices = [ChatChoice(index=i, message=ChatMessageOut(content=t), finish_reason=r)
                   for i, (t, r) in enumerate(zip(texts, reasons, strict=True))]
        return ChatCompletionResponse(id=f"{self.id_prefix}-{gen.request_id}", created=gen.created,
                                      model=gen.job.served.name, choices=choices, usage=usage)


class CompletionServing(Serving):
    chunks = TextChunks
    id_prefix = "cmpl"

    def prompt_ids(self, request: CompletionRequest, served: ServedModel) -> tuple[list[int], list[int]]:
        tok = served.tokenizer
        if isinstance(request.prompt, list):
            vocab = len(tok)
            if any(not 0 <= t < vocab or t == served.mask_id for t in request.prompt):
                raise BadRequest(f"prompt token ids must be in 0..{vocab - 1} and not the mask id "
                                 f"{served.mask_id}", param="prompt")
            prompt = list(request.prompt)
        else:
            prompt = tok(request.prompt)["input_ids"]
        suffix = tok(request.suffix, add_special_tokens=False)["input_ids"] if request.suffix else []
        return prompt, suffix

    def response(self, gen, texts, reasons, usage) -> CompletionResponse:
        choices = [TextChoice(index=i, text=t, finish_reason=r)
                   for i, (t, r) in enumerate(zip(texts, reasons, strict=True))]
        return CompletionResponse(id=f"{self.id_prefix}-{gen.request_id}", created=gen.created,
                                  model=gen.job.served.name, choices=choices, usage=usage)
