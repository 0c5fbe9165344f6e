"""Train `inkwell-tiny`, the embedded default model: a small LLaDA-architecture masked-diffusion LM on
the Shakespeare corpus of `tiny_corpus.py`, using the engine's own `LLaDAModel`.

Objective (LLaDA, Nie et al. 2025, eq. 3 and its SFT variant): draw t ~ U(0, 1) per row, mask each
token with probability p = (1 - eps) t + eps, and minimise the cross-entropy on masked tokens weighted
by 1/p. A share of rows are SFT examples (earlier speeches as the prompt, the next speech as the reply,
padded with eos to the 128-token canvas): only the reply is masked, the eos padding counts in the loss,
and the loss is normalised by the reply length, so the model learns to end its answers.

Every step draws its batch and masks from a generator seeded by (seed, step), so a run interrupted and
resumed from its checkpoint (written every few minutes under --run-dir, ignored by git) continues
exactly as an uninterrupted one would.

    python recipes/tiny_corpus.py --out data/tiny
    python recipes/train_tiny.py --data data/tiny --run-dir runs/tiny --steps 700
    python recipes/train_tiny.py --data data/tiny --run-dir runs/tiny --steps 2300 --restart-at 700
    python recipes/train_tiny.py ... --export engine/assets/inkwell-tiny   # after (or instead of) training
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from inkwell.engine.models import LLaDAConfig, LLaDAModel

CANVAS = 128  # answer positions of an SFT row (the served default gen_length)
PROMPT = 128  # prompt positions of an SFT row (left-padded)
EPS = 1e-3


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    steps: int = 2400
    batch_size: int = 32
    seq_len: int = 256
    sft_share: float = 0.3
    lr: float = 1.5e-3
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.1
    d_model: int = 256
    n_layers: int = 6
    n_heads: int = 4
    mlp_hidden_size: int = 768
    eval_every: int = 200
    checkpoint_minutes: float = 5.0
    # A second phase continuing a finished run: from restart_at, warm up again to restart_lr and decay
    # by cosine to min_lr_ratio * restart_lr at `steps` (0 = one phase).
    restart_at: int = 0
    restart_lr: float = 1e-3
    restart_warmup: int = 50


class Corpus:
    """Token streams of plays in chat form (alternating user/assistant turns) and SFT examples."""

    def __init__(self, data_dir: Path, split: str, tokenizer) -> None:
        plays = json.loads((data_dir / f"{split}.json").read_text())
        self.tok = tokenizer
        turn_tokens = [("user", "<|user|>"), ("assistant", "<|assistant|>"), ("eot", "<|eot|>")]
        self.ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in turn_tokens}
        texts = [list(p) for p in plays.values()]
        self.plays = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in texts]
        self.stream = torch.tensor([t for play in self.plays for t in self._turns(play, 0)])

    def _turns(self, speeches: list[list[int]], first_role: int) -> list[int]:
        out = []
        for i, s in enumerate(speeches):
            role = "user" if (i + first_role) % 2 == 0 else "assistant"
            out += [self.ids[role], *s, self.ids["eot"]]
        return out

    def windows(self, n: int, length: int, g: torch.Generator) -> torch.Tensor:
        starts = torch.randint(0, len(self.stream) - length, (n,), generator=g)
        return torch.stack([self.stream[s : s + length] for s in starts.tolist()])  # [n, length]

    def sft_example(self, g: torch.Generator) -> tuple[list[int], list[int]]:
        """(prompt ids, reply canvas ids of length CANVAS) for a random speech with short enough reply."""
        tok = self.tok
        while True:
            play = self.plays[int(torch.randint(len(self.plays), (1,), generator=g))]
            i = int(torch.randint(1, len(play), (1,), generator=g))
            if len(play[i]) > CANVAS - 2:
                continue
            n_ctx = int(torch.randint(1, 4, (1,), generator=g))
            for k in range(min(n_ctx, i), 0, -1):  # most context that fits the prompt window
                turns = self._turns(play[i - k : i], first_role=(k + 1) % 2)
                prompt = [tok.bos_token_id, *turns, self.ids["assistant"]]
                if len(prompt) <= PROMPT:
                    reply = [*play[i], self.ids["eot"]]
                    return prompt, reply + [tok.eos_token_id] * (CANVAS - len(reply))


def make_batch(corpus: Corpus, cfg: TrainConfig, g: torch.Generator):
    """input ids [B, L], attention mask [B, L], maskable positions [B, L], rows' loss normaliser [B]."""
    n_sft = round(cfg.batch_size * cfg.sft_share)
    pre = corpus.windows(cfg.batch_size - n_sft, cfg.seq_len, g)
    ids = [pre]
    attn, maskable = [torch.ones_like(pre)], [torch.ones_like(pre)]
    norm = [torch.full((len(pre),), float(cfg.seq_len))]
    eos = corpus.tok.eos_token_id
    for _ in range(n_sft):
        prompt, reply = corpus.sft_example(g)
        pad = cfg.seq_len - len(prompt) - len(reply)
        ids.append(torch.tensor([[eos] * pad + prompt + reply]))
        attn.append(torch.tensor([[0] * pad + [1] * (len(prompt) + len(reply))]))
        maskable.append(torch.tensor([[0] * (pad + len(prompt)) + [1] * len(reply)]))
        norm.append(torch.tensor([float(len(reply))]))
    return torch.cat(ids), torch.cat(attn), torch.cat(maskable).bool(), torch.cat(norm)


def diffusion_loss(model, ids, attn, maskable, norm, mask_id: int, g: torch.Generator) -> torch.Tensor:
    """LLaDA's masked-diffusion loss: sum over masked tokens of CE / p, per row / norm, mean over rows."""
    b, length = ids.shape
    t = torch.rand(b, generator=g)
    p = ((1 - EPS) * t + EPS)[:, None].expand(b, length)  # [B, L]
    masked = (torch.rand(b, length, generator=g) < p) & maskable
    noisy = torch.where(masked, torch.full_like(ids, mask_id), ids)
    logits = model(noisy, attention_mask=attn)  # [B, L, V]
    ce = F.cross_entropy(logits[masked], ids[masked], reduction="none") / p[masked]
    per_row = torch.zeros(b).index_add_(0, masked.nonzero()[:, 0], ce)
    return (per_row / norm).mean()


@torch.no_grad()
def masked_ce(model, corpus: Corpus, ratio: float, mask_id: int, n: int = 64, length: int = 256) -> float:
    """Mean cross-entropy (nats) of masked tokens at a fixed mask ratio on fixed held-out windows."""
    g = torch.Generator().manual_seed(1234)
    ids = corpus.windows(n, length, g)
    masked = torch.rand(ids.shape, generator=g) < ratio
    total, count = 0.0, 0
    for rows in torch.split(torch.arange(n), 16):
        x, m = ids[rows], masked[rows]
        logits = model(torch.where(m, torch.full_like(x, mask_id), x))
        total += F.cross_entropy(logits[m], x[m], reduction="sum").item()
        count += int(m.sum())
    return total / count


def unigram_entropy(corpus: Corpus) -> float:
    counts = torch.bincount(corpus.stream).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up then cosine decay, over [0, steps), or over [0, restart_at) and [restart_at, steps)."""
    start, end, peak, warmup = 0, cfg.steps, cfg.lr, cfg.warmup
    if cfg.restart_at:
        if step < cfg.restart_at:
            end = cfg.restart_at
        else:
            start, peak, warmup = cfg.restart_at, cfg.restart_lr, cfg.restart_warmup
    step -= start
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, end - start - warmup)
    return peak * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def model_config(cfg: TrainConfig, tokenizer) -> LLaDAConfig:
    vocab = len(tokenizer)
    return LLaDAConfig.from_dict({
        "model_type": "llada", "architectures": ["LLaDAModelLM"], "d_model": cfg.d_model,
        "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "n_kv_heads": cfg.n_heads,
        "mlp_hidden_size": cfg.mlp_hidden_size, "mlp_ratio": cfg.mlp_hidden_size // cfg.d_model,
        "vocab_size": vocab, "embedding_size": vocab, "max_sequence_length": 1024, "rope": True,
        "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "weight_tying": False, "block_type": "llama",
        "activation_type": "silu", "layer_norm_type": "rms", "include_bias": False,
        "mask_token_id": tokenizer.mask_token_id, "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.eos_token_id, "bos_token_id": tokenizer.bos_token_id,
    })


def init_weights(model: torch.nn.Module, g: torch.Generator) -> None:
    for name, p in model.named_parameters():
        if p.ndim > 1:
            residual_out = "blocks" in name and name.endswith(("attn_out.weight", "ff_out.weight"))
            std = 0.02 / math.sqrt(2 * model.config.n_layers) if residual_out else 0.02
            p.data = torch.randn(p.shape, generator=g) * std


def train(args) -> None:
    from transformers import AutoTokenizer

    cfg = TrainConfig(seed=args.seed, steps=args.steps, restart_at=args.restart_at,
                      restart_lr=args.restart_lr)
    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(str(args.data / "tokenizer"))
    train_set, val_set = Corpus(args.data, "train", tokenizer), Corpus(args.data, "validation", tokenizer)
    model = LLaDAModel(model_config(cfg, tokenizer))
    init_weights(model, torch.Generator().manual_seed(cfg.seed))
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest,
                             "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    args.run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = args.run_dir / "checkpoint.pt", args.run_dir / "log.jsonl"
    step = 0
    if ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
        print(f"resumed at step {step}")
    mask_id = tokenizer.mask_token_id
    last_save, t0 = time.time(), time.time()
    while step < cfg.steps:
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss = diffusion_loss(model, *make_batch(train_set, cfg, g), mask_id, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        record = {"step": step, "loss": round(loss.item(), 4), "lr": lr_at(step - 1, cfg),
                  "elapsed_s": round(time.time() - t0, 1)}
        if step % cfg.eval_every == 0 or step == cfg.steps:
            model.eval()
            record["val_ce_0.15"] = round(masked_ce(model, val_set, 0.15, mask_id), 4)
            model.train()
        with log_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if step % 10 == 0 or "val_ce_0.15" in record:
            print(record, flush=True)
        if time.time() - last_save > cfg.checkpoint_minutes * 60 or step == cfg.steps:
            tmp = ckpt_path.with_suffix(".tmp")
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                        "train_config": asdict(cfg)}, tmp)
            tmp.replace(ckpt_path)
            last_save = time.time()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="train inkwell-tiny")
    ap.add_argument("--data", type=Path, default=Path("data/tiny"))
    ap.add_argument("--run-dir", type=Path, default=Path("runs/tiny"))
    ap.add_argument("--steps", type=int, default=TrainConfig.steps)
    ap.add_argument("--restart-at", type=int, default=0,
                    help="continue a run finished at this step with a second warm-up and cosine decay")
    ap.add_argument("--restart-lr", type=float, default=TrainConfig.restart_lr)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    train(ap.parse_args(argv))


if __name__ == "__main__":
    main()
