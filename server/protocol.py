"""The OpenAI wire schema Inkwell speaks, as pydantic models and nothing else (no torch, no engine).

Requests forbid unknown fields, so every field is either declared here (supported) or answered with a
400 `unsupported: <field>` by `errors.py`; they are strict about JSON types, as OpenAI is (`"n": "2"`,
`"stream": "true"` and `"max_tokens": 2.0` are 400s naming the parameter, not coerced; an integer is a
valid number, so `"temperature": 1` is fine); `docs/openai-fields.md` is the table. A few OpenAI fields are
accepted only at their neutral value (`NEUTRAL_VALUES`: e.g. `presence_penalty: 0`, which asks for
nothing) and `null` is accepted for any field, since neither asks the server to do anything. Inkwell's
diffusion knobs are top-level extras (`extra_body` in the OpenAI clients). Responses and stream chunks are
the standard `chat.completion`, `chat.completion.chunk`, `text_completion` objects; a chunk may carry the
extra top-level field `inkwell` with one denoising step's commits (DESIGN section 8).
"""

from __future__ import annotations

import time
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

# Fields OpenAI defines that Inkwell does not implement, accepted only at the value that asks for nothing.
NEUTRAL_VALUES: dict[str, tuple[Any, ...]] = {
    "frequency_penalty": (0, 0.0),
    "presence_penalty": (0, 0.0),
    "logprobs": (False,),
    "echo": (False,),
    "best_of": (1,),
    "logit_bias": ({},),
    "tools": ([],),
    "functions": ([],),
    "store": (False,),
    "parallel_tool_calls": (True, False),  # without tools it changes nothing
}


class Request(BaseModel):
    """Base of request bodies: unknown fields are errors (`extra_forbidden` -> 400 `unsupported: <f>`), and
    a value of the wrong JSON type is an error, never coerced (strict mode)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _drop_neutral(cls, data: Any) -> Any:
        """Remove fields that ask for nothing: null values of optional fields (a required one stays, to be
        rejected as null), and unsupported fields at their neutral value."""
        if not isinstance(data, dict):
            return data
        declared = cls.model_fields

        def asks_nothing(k: str, v: Any) -> bool:
            if v is None:
                return not (k in declared and declared[k].is_required())
            return k not in declared and any(v == n and type(v) is type(n) for n in NEUTRAL_VALUES.get(k, ()))

        return {k: v for k, v in data.items() if not asks_nothing(k, v)}

    @model_validator(mode="after")
    def _valid_unicode(self) -> Request:
        """JSON can escape lone surrogates (`"\\ud800"`), which are not text: no tokenizer encodes them."""
        for name, value in self:
            for text in value if isinstance(value, list) else [value]:
                if isinstance(text, str) and not text.isascii():
                    try:
                        text.encode("utf-8")
                    except UnicodeEncodeError as err:
                        raise ValueError(f"{name} is not valid Unicode text (a lone surrogate at character "
                                         f"{err.start})") from None
        return self


class StreamOptions(Request):
    include_usage: bool = False


Remasking = Literal["low_confidence", "random", "maskgit_plus", "topk_margin", "entropy", "origin"]


class DiffusionExtras(Request):
    """Inkwell's top-level extras; `None` means the model's default (DESIGN section 4)."""

    steps: int | None = Field(None, ge=1)
    block_length: int | None = Field(None, ge=1)
    remasking: Remasking | None = None
    threshold: float | None = Field(None, gt=0, le=1)
    cache: Literal["none", "prefix", "dual"] | None = None
    cfg_scale: float | None = Field(None, ge=0)
    alg_temp: float | None = Field(None, gt=0)
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    commit_events: bool = False


class SamplingFields(DiffusionExtras):
    """Fields shared by chat and text completions."""

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    n: int = Field(1, ge=1, le=16)

    @property
    def stop_strings(self) -> list[str]:
        strings = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in strings if s]

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> SamplingFields:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self


class TextPart(Request):
    type: Literal["text"]
    text: str


class ChatMessage(Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    @property
    def answer_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @model_validator(mode="after")
    def _one_length(self) -> ChatCompletionRequest:
        both = self.max_tokens is not None and self.max_completion_tokens is not None
        if both and self.max_tokens != self.max_completion_tokens:
            raise ValueError("max_tokens and max_completion_tokens disagree; send one of them")
        return self


class CompletionRequest(SamplingFields):
    prompt: str | list[int] = Field(min_length=1)
    suffix: str | None = None

    @property
    def answer_tokens(self) -> int | None:
        return self.max_tokens


# ---- responses -----------------------------------------------------------------------------------------


class Wire(BaseModel):
    """Response objects: fields named in `omit_if_none` are left out of the JSON while None."""

    omit_if_none: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit(self, handler):
        data = handler(self)
        return {k: v for k, v in data.items() if not (v is None and k in self.omit_if_none)}


class Usage(Wire):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CommitInfo(Wire):
    index: int
    token_id: int
    text: str
    confidence: float
    margin: float


class InkwellStep(Wire):
    """One denoising step of one choice: what the sampler committed where, and how much is still masked."""

    step: int
    block: int
    commits: list[CommitInfo]
    masked_remaining: int


FinishReason = Literal["stop", "length"]


class ChatMessageOut(Wire):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(Wire):
    index: int
    message: ChatMessageOut
    finish_reason: FinishReason
    logprobs: None = None


class ChatCompletionResponse(Wire):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage


class TextChoice(Wire):
    index: int
    text: str
    finish_reason: FinishReason | None = None
    logprobs: None = None


class CompletionResponse(Wire):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[TextChoice]
    usage: Usage


class Delta(Wire):
    omit_if_none = ("role", "content")
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(Wire):
    index: int
    delta: Delta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(Wire):
    omit_if_none = ("usage", "inkwell")
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    inkwell: InkwellStep | None = None


class CompletionChunk(Wire):
    omit_if_none = ("usage", "inkwell")
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage | None = None
    inkwell: InkwellStep | None = None


class ModelCard(Wire):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "inkwell"
    root: str  # the path or name the model was loaded from
    max_model_len: int
    quantization: str | None = None  # "int4" for pack-quantized checkpoints


class ModelList(Wire):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorInfo(Wire):
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)  # all four are always sent
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorResponse(Wire):
    error: ErrorInfo
