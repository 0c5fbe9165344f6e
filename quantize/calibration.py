"""How calibration inputs are built, apart from what the algorithms do with them.

- Text: the model's shipped held-out speeches (`heldout/validation.json` next to the weights; the test
  split is left to `inkwell-eval`), or a file given by `--calib-file` (`.json` play -> speeches or a
  list of strings, `.jsonl` with a "text" field or plain strings, anything else plain text split at blank
  lines). A model without a tokenizer (the random-weight presets) gets seeded random-token prompts.
- Probe prompts: single-turn chat prompts built with the model's chat template.
- Stage II sequences: prompt + the FP teacher's response on the window (clean), or the same sequences
  with a random share of the response masked (masked canvases, the dLLM-aware GPTQ baseline).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from inkwell.engine.loader import resolve_model_path

from .trajectory import Trajectories, left_pad


def read_texts(path: str | Path) -> list[str]:
    """Calibration texts from a .json, .jsonl or plain-text file. ValueError names the problem."""
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"calibration file {path}: unreadable ({err})") from err
    if path.suffix == ".json":
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as err:
            raise ValueError(f"calibration file {path}: not valid JSON ({err})") from err
        items = [s for v in data.values() for s in v] if isinstance(data, dict) else list(data)
    elif path.suffix == ".jsonl":
        try:
            rows = [json.loads(line) for line in raw.splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise ValueError(f"calibration file {path}: a line is not valid JSON ({err})") from err
        items = [r.get("text") if isinstance(r, dict) else r for r in rows]
    else:
        items = raw.split("\n\n")
    texts = [s.strip() for s in items if isinstance(s, str) and s.strip()]
    if not texts:
        raise ValueError(f"calibration file {path}: no text found")
    return texts


def default_calib_file(model: str) -> Path | None:
    """The held-out validation text shipped with a model directory, if any."""
    path = resolve_model_path(model)
    if path is None:
        return None
    file = path / "heldout" / "validation.json"
    return file if file.is_file() else None


def chat_ids(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
    """Token ids of `messages` under the model's chat template."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True,
                                        return_dict=False)
    return list(ids)


def chat_prompts(texts: list[str], tokenizer, n: int, max_tokens: int, seed: int) -> list[torch.Tensor]:
    """n single-turn chat prompts of at most `max_tokens` tokens, texts drawn in a seeded order."""
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed)).tolist()
    prompts = []
    for i in order:
        ids = chat_ids(tokenizer, [{"role": "user", "content": texts[i]}], add_generation_prompt=True)
        if len(ids) <= max_tokens:
            prompts.append(torch.tensor(ids, dtype=torch.long))
        if len(prompts) == n:
            return prompts
    raise ValueError(f"only {len(prompts)} calibration texts fit in {max_tokens} prompt tokens; "
                     f"{n} are needed (lower --calib-prompts or raise --prompt-tokens)")


def random_prompts(vocab: int, special: set[int], n: int, max_tokens: int, seed: int) -> list[torch.Tensor]:
    """Seeded random-token prompts for models without a tokenizer (random-weight presets)."""
    g = torch.Generator().manual_seed(seed)
    allowed = torch.tensor([t for t in range(vocab) if t not in special])
    lengths = torch.randint(max(1, max_tokens // 2), max_tokens + 1, (n,), generator=g)
    return [allowed[torch.randint(len(allowed), (int(k),), generator=g)] for k in lengths]


def fingerprint(prompts: list[torch.Tensor]) -> str:
    """sha256 of the prompts' token ids, recorded with the checkpoint."""
    h = hashlib.sha256()
    for p in prompts:
        h.update(json.dumps(p.tolist()).encode())
    return h.hexdigest()[:16]


@dataclass
class CalibrationSet:
    """Stage II sequences [B, L]: left-padded prompt, then the K-position response window."""

    ids: torch.Tensor  # [B, L] long
    attention_mask: torch.Tensor  # [B, L] long, 0 on left padding
    window_start: int  # = padded prompt length P
    stops: torch.Tensor  # [B] index of the teacher's first stop id in the window (K if none)

    def batches(self, size: int):
        for at in range(0, len(self.ids), size):
            yield slice(at, at + size)


def clean_sequences(traj: Trajectories, pad_id: int, stops: torch.Tensor) -> CalibrationSet:
    """prompt + teacher response for every rollout."""
    prompt_ids, prompt_mask = left_pad(traj.prompts, pad_id)
    ids = torch.cat([prompt_ids, traj.tokens], dim=1)
    mask = torch.cat([prompt_mask, torch.ones_like(traj.tokens)], dim=1)
    return CalibrationSet(ids, mask, prompt_ids.shape[1], stops)


def masked_canvases(calib: CalibrationSet, mask_id: int, seed: int) -> CalibrationSet:
    """The same sequences with each response masked at its own ratio r ~ U(0, 1) (seeded)."""
    g = torch.Generator().manual_seed(seed)
    ids = calib.ids.clone()
    response = ids[:, calib.window_start:]  # view
    ratio = torch.rand(len(ids), 1, generator=g)
    hide = torch.rand(response.shape, generator=g) < ratio
    response[hide] = mask_id
    return CalibrationSet(ids, calib.attention_mask, calib.window_start, calib.stops)
