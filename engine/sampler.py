"""The diffusion sampler: free functions over a model callable (DESIGN section 4).

`iter_generate` yields, per denoising step, one `StepEvent` per row; `generate` returns the final
canvas. Underneath, `step_rows` advances any set of `Row`s (different prompts, canvases and params, as
the engine batches them) by one step: rows are left-padded into one forward with an attention mask,
classifier-free guidance adds an unconditional copy per row, and Fast-dLLM's prefix/dual caches
(arXiv:2505.22618) keep each block's keys/values in a `CacheGroup` of rows that computed them together.
A failing forward is retried row by row, so an error fails only the rows that cause it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from .cache_groups import CacheGroup, form_groups, merge_groups
from .detok import Decode
from .models.layers import KVCache
from .params import DiffusionParams, family_of
from .rows import Commit, Row, RowIds, StepEvent

__all__ = ["Commit", "StepEvent", "generate", "iter_generate", "make_row", "new_generator", "step_rows"]

Outcome = StepEvent | Exception


def block_logits(logits: torch.Tensor, first: int, length: int, shift: int) -> torch.Tensor:
    """The logits predicting tokens [first, first + length) of `logits` [S, l, V] (unshifted model output).

    The one place where Dream's alignment lives: its position i-1 predicts token i (shift 1); LLaDA's
    position i predicts token i (shift 0).
    """
    assert first - shift >= 0, "a block always follows at least one prompt token"
    return logits[:, first - shift : first - shift + length]


def guided(logits: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """Classifier-free guidance on [2, n, V] (conditional, unconditional): un + (s + 1)(cond - un)."""
    if cfg_scale == 0:
        return logits[0]
    cond, uncond = logits.to(torch.float64)
    return uncond + (cfg_scale + 1) * (cond - uncond)


def _pad_left(seqs: list[torch.Tensor], attn: list[torch.Tensor], pad_id: int, length: int):
    """ids, attention mask [S, length] with every sequence right-aligned; mask None when nothing is padded."""
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long, device=seqs[0].device)
    mask = torch.zeros((len(seqs), length), dtype=torch.long, device=seqs[0].device)
    for i, (s, a) in enumerate(zip(seqs, attn, strict=True)):
        ids[i, length - len(s) :] = s
        mask[i, length - len(s) :] = a
    return ids, (None if bool(mask.all()) else mask)


def _batch(rows: list[Row], length: int | None = None):
    """The forward batch of `rows`, left-padded to `length` (default: the longest row)."""
    seqs = [s for r in rows for s in r.sequences()]
    attn = [r.attn for r in rows for _ in r.sequences()]
    return _pad_left(seqs, attn, rows[0].ids.eos_id, length or max(len(s) for s in seqs))


def _apply_rows(rows: list[Row], logits: torch.Tensor, starts: list[int]) -> dict[Row, Outcome]:
    """Slice each row's guided block logits out of the batch output and step the row."""
    out: dict[Row, Outcome] = {}
    at = 0
    for row, first in zip(rows, starts, strict=True):
        n = len(row.sequences())
        row_logits = guided(block_logits(logits[at : at + n], first, row.params.block_length, row.shift),
                            row.params.cfg_scale)
        at += n
        row.nfe += 1
        try:
            out[row] = row.apply(row_logits)
        except Exception as err:  # a row's own failure (e.g. its decode callable) fails that row alone
            out[row] = err
    return out


def _full_step(model: nn.Module, rows: list[Row]) -> dict[Row, Outcome]:
    """A full forward (no cache, or a block's first step) and the cache groups it starts."""
    ids, mask = _batch(rows)
    length = ids.shape[1]
    cache = KVCache() if any(r.params.cache != "none" for r in rows) else None
    logits = model(ids, attention_mask=mask, kv_cache=cache)  # [S, L, V]
    blocks = {r: r.block for r in rows}
    out = _apply_rows(rows, logits, [length - len(r.tokens) + r.block_span()[0] for r in rows])
    if cache is not None:
        form_groups(rows, cache, length, lambda r: not r.done and r.block == blocks[r]
                     and r.params.cache != "none" and not isinstance(out[r], Exception))
    return out


def _cached_step(model: nn.Module, group: CacheGroup) -> dict[Row, Outcome]:
    rows = list(group.rows)
    ids, mask = _batch(rows, group.length)
    logits = model(ids[:, group.start : group.end], attention_mask=mask, kv_cache=group.cache,
                   start=group.start)  # [S, end - start, V]
    firsts = [group.length - len(r.tokens) + r.block_span()[0] - group.start for r in rows]
    return _apply_rows(rows, logits, firsts)


def _chunks(rows: list[Row], max_tokens: int | None) -> list[list[Row]]:
    """Split full-forward rows so that each forward computes at most `max_tokens` positions."""
    chunks: list[list[Row]] = []
    for row in rows:
        cost = lambda rs: sum(len(r.sequences()) for r in rs) * max(len(r.tokens) for r in rs)
        if chunks and (max_tokens is None or cost(chunks[-1] + [row]) <= max_tokens):
            chunks[-1].append(row)
        else:
            chunks.append([row])
    return chunks


def _isolated(step, model: nn.Module, rows: list[Row], arg) -> dict[Row, Outcome]:
    """Run a batched forward; if it raises, retry each row alone so that only failing rows fail."""
    try:
        return step(model, arg)
    except Exception as err:  # a forward failure: find the row(s) responsible
        if len(rows) == 1:
            rows[0].release()
            return {rows[0]: err}
    for r in rows:
        r.release()
    out: dict[Row, Outcome] = {}
    for r in rows:
        out |= _isolated(_full_step, model, [r], [r])
    return out


@torch.no_grad()
@torch.no_grad()
def step_rows(model: nn.Module, rows: Sequence[Row], max_tokens: int | None = None) -> list[Outcome]:
    """Advance every row by one denoising step; one outcome (event or exception) per row, in order."""
    groups = list(dict.fromkeys(r.group for r in rows if r.group is not None))
    assert all(r in rows for g in groups for r in g.rows), "a cache group is stepped whole"
    full = [r for r in rows if r.group is None]
    out: dict[Row, Outcome] = {}
    for group in merge_groups(groups, max_tokens):
        out |= _isolated(_cached_step, model, list(group.rows), group)
    for chunk in _chunks(full, max_tokens):
        out |= _isolated(_full_step, model, chunk, chunk)
    return [out[r] for r in rows]


def new_generator(device: torch.device | str, seed: int | None) -> torch.Generator:
    """A request's own generator: seeded, or from a non-deterministic seed when `seed` is None."""
    generator = torch.Generator(device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def _check_inputs(config, prompt: torch.Tensor, suffix: torch.Tensor, gen_length: int) -> None:
    if prompt.ndim != 1 or len(prompt) == 0 or prompt.dtype != torch.long:
        raise ValueError(f"a prompt must be a non-empty 1-D LongTensor, got shape {tuple(prompt.shape)} "
                         f"{prompt.dtype}")
    ids = torch.cat([prompt, suffix])
    if bool((ids < 0).any() or (ids >= config.vocab_size).any()):
        raise ValueError(f"prompt and suffix token ids must be in [0, {config.vocab_size})")
    total = len(prompt) + gen_length + len(suffix)
    if total > config.max_length:
        raise ValueError(f"prompt ({len(prompt)}) + canvas ({gen_length}) + suffix ({len(suffix)}) = "
                         f"{total} tokens exceeds the model's context length {config.max_length}")


def make_row(model: nn.Module, prompt: torch.Tensor, params: DiffusionParams, *,
             attn: torch.Tensor | None = None, generator: torch.Generator | None = None,
             stop_ids: Sequence[int] = (), eos_id: int | None = None, decode: Decode | None = None,
             suffix: torch.Tensor | None = None) -> Row:
    """A row for one prompt [P] (long; `attn` [P] marks its real tokens, default all) and an optional
    suffix [S] after the canvas (infilling)."""
    config = model.config
    params = params.resolve(config.model_type)
    suffix = prompt.new_zeros(0) if suffix is None else suffix
    _check_inputs(config, prompt, suffix, params.gen_length)
    eos_id = config.eos_token_id if eos_id is None else eos_id
    if eos_id is None:
        raise ValueError("the model config names no eos_token_id; pass eos_id")
    tokens = torch.cat([prompt, prompt.new_full((params.gen_length,), config.mask_token_id), suffix])
    attn = torch.ones_like(prompt) if attn is None else attn.to(torch.long)
    return Row(tokens=tokens, attn=torch.cat([attn, torch.ones_like(tokens[len(prompt) :])]),
               prompt_len=len(prompt), params=params,
               generator=generator or new_generator(prompt.device, params.seed),
               ids=RowIds(config.mask_token_id, int(eos_id), tuple(int(i) for i in stop_ids)),
               shift=1 if family_of(config.model_type) == "dream" else 0, decode=decode)


def _rows(model, input_ids, params, attention_mask, generators, **kwargs) -> list[Row]:
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [B, P], got shape {tuple(input_ids.shape)}")
    if generators is not None and len(generators) != len(input_ids):
        raise ValueError(f"got {len(generators)} generators for {len(input_ids)} rows")
    rows = []
    for b in range(len(input_ids)):
        gen = generators[b] if generators is not None else None
        if gen is None and params.seed is not None:  # row b of a seeded batch uses seed + b
            gen = new_generator(input_ids.device, params.seed + b)
        attn = attention_mask[b] if attention_mask is not None else None
        rows.append(make_row(model, input_ids[b], params, attn=attn, generator=gen, **kwargs))
    return rows


def _run(model: nn.Module, rows: list[Row]) -> Iterator[list[StepEvent | None]]:
    while not all(r.done for r in rows):
        active = [r for r in rows if not r.done]
        outcomes = dict(zip(active, step_rows(model, active), strict=True))
        for outcome in outcomes.values():
            if isinstance(outcome, Exception):
                raise outcome
        yield [outcomes.get(r) for r in rows]


def iter_generate(model: nn.Module, input_ids: torch.Tensor, params: DiffusionParams,
                  attention_mask: torch.Tensor | None = None, *, stop_ids: Sequence[int] = (),
                  decode: Decode | None = None, generators: Sequence[torch.Generator] | None = None,
                  eos_id: int | None = None) -> Iterator[list[StepEvent | None]]:
    """Yield, per denoising step, one `StepEvent` per row of `input_ids` [B, P] (None for a row that has
    finished). `attention_mask` [B, P] marks real prompt tokens (left padding). `stop_ids` enables early
    stop; `decode(ids) -> str` fills the text fields; row b of a seeded batch uses seed `params.seed + b`
    unless `generators` are given."""
    rows = _rows(model, input_ids, params, attention_mask, generators, stop_ids=stop_ids, decode=decode,
                 eos_id=eos_id)
    yield from _run(model, rows)


def generate(model: nn.Module, input_ids: torch.Tensor, params: DiffusionParams,
             attention_mask: torch.Tensor | None = None, *, stop_ids: Sequence[int] = (),
             generators: Sequence[torch.Generator] | None = None, eos_id: int | None = None) -> torch.Tensor:
    """The final canvas [B, P + gen_length] (gen_length as resolved for the model family)."""
    rows = _rows(model, input_ids, params, attention_mask, generators, stop_ids=stop_ids, eos_id=eos_id)
    for _ in _run(model, rows):
        pass
    return torch.stack([r.tokens for r in rows])
