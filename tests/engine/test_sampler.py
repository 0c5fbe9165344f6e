"""The diffusion sampler in float64 on tiny presets: token-for-token equality with straightforward
step-by-step implementations of LLaDA's `generate()` and Dream's `diffusion_generate` written here,
commit schedules, committed tokens never changing, threshold decoding, step events and seeds."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from inkwell.engine import DiffusionParams, StepEvent, generate, iter_generate
from inkwell.engine.remasking import llada_schedule, propose

MASK, EOS = 511, 510
ALGORITHMS = ["low_confidence", "random", "maskgit_plus", "topk_margin", "entropy", "origin"]


def prompts(lengths, seed=0):
    """Random prompts of the given lengths, token ids below the special ids 509-511."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 500, (n,), generator=g) for n in lengths]


def left_padded(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), EOS)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, length - len(r):] = r
        mask[i, length - len(r):] = 1
    return ids, mask


@torch.no_grad()
def reference_llada(model, prompt, steps, gen_length, block_length, attention_mask=None, cfg_scale=0.0):
    """LLaDA's generate() (low_confidence, temperature 0), one forward over the whole sequence per step.
    The only change: the mask token is never the argmax candidate (DESIGN section 3)."""
    b, p = prompt.shape
    x = torch.full((b, p + gen_length), MASK)
    x[:, :p] = prompt
    attn = None
    if attention_mask is not None:
        attn = torch.cat([attention_mask, torch.ones(b, gen_length, dtype=torch.long)], 1)
    prompt_index = x != MASK
    num_blocks = gen_length // block_length
    per_block = steps // num_blocks
    for nb in range(num_blocks):
        lo, hi = p + nb * block_length, p + (nb + 1) * block_length
        counts = []
        for row in range(b):
            n = int((x[row, lo:hi] == MASK).sum())
            counts.append([n // per_block + (1 if i < n % per_block else 0) for i in range(per_block)])
        for i in range(per_block):
            mask_index = x == MASK
            if cfg_scale > 0:
                un_x = x.clone()
                un_x[prompt_index] = MASK
                both_mask = None if attn is None else torch.cat([attn, attn])
                both = model(torch.cat([x, un_x]), attention_mask=both_mask)
                cond, uncond = both.chunk(2)
                logits = uncond + (cfg_scale + 1) * (cond - uncond)
            else:
                logits = model(x, attention_mask=attn)
            candidates = logits.clone()
            candidates[..., MASK] = -torch.inf
            x0 = candidates.argmax(-1)
            x0_p = torch.gather(F.softmax(logits.double(), -1), -1, x0[..., None])[..., 0]
            x0_p[:, hi:] = -torch.inf
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, -torch.inf)
            for row in range(b):
                chosen = torch.topk(confidence[row], k=counts[row][i]).indices
                x[row, chosen] = x0[row, chosen]
    return x


@torch.no_grad()
def reference_dream(model, prompt, steps, gen_length, alg, eps=1e-3):
    """Dream's diffusion_generate for one row at temperature 0: logits shifted right by one position,
    timesteps linspace(1, eps, steps + 1), `int(n * (1 - s/t))` commits, the rest at the last step."""
    x = torch.cat([prompt, torch.full((gen_length,), MASK)])[None]
    timesteps = torch.linspace(1, eps, steps + 1)
    for i in range(steps):
        mask_index = x[0] == MASK
        logits = model(x)
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)[0]
        mask_logits = logits[mask_index].double()
        mask_logits[:, MASK] = -torch.inf
        probs = mask_logits.softmax(-1)
        confidence, x0 = probs.max(-1)
        if alg == "topk_margin":
            top2 = probs.sort(-1, descending=True).values
            confidence = top2[:, 0] - top2[:, 1]
        elif alg == "entropy":
            confidence = (probs * torch.log(probs + 1e-10)).sum(-1)
        n = mask_index.sum()
        t, s = timesteps[i], timesteps[i + 1]
        k = int(n / 1 * (1 - s / t)) if i < steps - 1 else int(n)
        full = torch.full(x[0].shape, -torch.inf, dtype=torch.float64)
        full[mask_index] = confidence
        if k > 0:
            chosen = torch.topk(full, k).indices
            x_ = torch.full_like(x[0], MASK)
            x_[mask_index] = x0
            x[0, chosen] = x_[chosen]
    return x[0]


@pytest.mark.parametrize(("gen_length", "block_length", "steps"), [
    (16, 16, 16), (16, 8, 8), (24, 8, 6), (20, 10, 6), (16, 4, 12), (12, 12, 5),
])
def test_low_confidence_equals_llada_reference(llada64, gen_length, block_length, steps):
    ids = torch.stack(prompts([6, 6], seed=gen_length + steps))
    params = DiffusionParams(gen_length=gen_length, block_length=block_length, steps=steps)
    out = generate(llada64, ids, params)
    assert torch.equal(out, reference_llada(llada64, ids, steps, gen_length, block_length))
    assert not (out == MASK).any()


def test_low_confidence_equals_llada_reference_on_a_padded_batch(llada64):
    ids, mask = left_padded(prompts([3, 9, 6], seed=1))
    params = DiffusionParams(gen_length=16, block_length=8, steps=8)
    out = generate(llada64, ids, params, attention_mask=mask)
    assert torch.equal(out, reference_llada(llada64, ids, 8, 16, 8, attention_mask=mask))


@pytest.mark.parametrize("padded", [False, True])
def test_cfg_equals_llada_reference_with_prompt_masked_in_the_unconditional_copy(llada64, padded):
    rows = prompts([5, 8] if padded else [7, 7], seed=2)
    ids, mask = left_padded(rows)
    mask = mask if padded else None
    params = DiffusionParams(gen_length=16, block_length=8, steps=8, cfg_scale=1.5)
    out = generate(llada64, ids, params, attention_mask=mask)
    assert torch.equal(out, reference_llada(llada64, ids, 8, 16, 8, attention_mask=mask, cfg_scale=1.5))
    unguided = DiffusionParams(gen_length=16, block_length=8, steps=8)
    assert not torch.equal(out, generate(llada64, ids, unguided, attention_mask=mask))


@pytest.mark.parametrize("alg", ["maskgit_plus", "topk_margin", "entropy"])
@pytest.mark.parametrize("steps", [16, 5])
def test_dream_algorithms_equal_dream_reference(dream64, alg, steps):
    prompt = prompts([7], seed=3)[0]
    out = generate(dream64, prompt[None], DiffusionParams(gen_length=16, steps=steps, remasking=alg))
    assert torch.equal(out[0], reference_dream(dream64, prompt, steps, 16, alg))


def collect(model, ids, params, **kwargs) -> list[list[StepEvent | None]]:
    return list(iter_generate(model, ids, params, **kwargs))


def test_llada_commit_counts_follow_the_per_block_schedule(llada64):
    ids = torch.stack(prompts([5, 5], seed=4))
    params = DiffusionParams(gen_length=20, block_length=10, steps=6)  # 3 steps per block: 4, 3, 3
    steps = collect(llada64, ids, params)
    assert llada_schedule(10, 3) == [4, 3, 3]
    for row in range(2):
        counts = [len(step[row].commits) for step in steps]
        assert counts == [4, 3, 3, 4, 3, 3]
        assert [step[row].block for step in steps] == [0, 0, 0, 1, 1, 1]
        assert [step[row].masked_remaining for step in steps] == [16, 13, 10, 6, 3, 0]


def test_dream_commit_counts_follow_timesteps_per_row(dream64):
    ids = torch.stack(prompts([6], seed=5))
    steps = collect(dream64, ids, DiffusionParams(gen_length=16, steps=4, remasking="maskgit_plus", eps=1e-3))
    t = torch.linspace(1, 1e-3, 5)
    masked, expected = 16, []
    for i in range(4):
        k = int(torch.tensor(float(masked)) * (1 - t[i + 1] / t[i])) if i < 3 else masked
        expected.append(k)
        masked -= k
    assert [len(s[0].commits) for s in steps] == expected
    assert sum(expected) == 16 and expected[-1] > 0


VARIANTS = {"plain": {}, "threshold-dual": {"threshold": 0.004, "cache": "dual"},
            "sampled-prefix": {"temperature": 0.8, "cache": "prefix"}}


@pytest.mark.parametrize(("alg", "variant"), [(a, v) for a in ALGORITHMS for v in VARIANTS
                                              if not (a == "origin" and v == "threshold-dual")])
def test_committed_tokens_never_change(llada64, alg, variant):
    extra = VARIANTS[variant]
    ids, mask = left_padded(prompts([4, 7], seed=6))
    params = DiffusionParams(gen_length=16, block_length=8, steps=8, remasking=alg, seed=1, **extra)
    rows = [dict(), dict()]
    for step in iter_generate(llada64, ids, params, attention_mask=mask):
        for r, event in enumerate(step):
            for c in event.commits if event else ():
                assert c.index not in rows[r], "a position was committed twice"
                rows[r][c.index] = c.token_id
    final = generate(llada64, ids, params, attention_mask=mask)
    for r in range(2):
        assert sorted(rows[r]) == list(range(16)), "every answer position is committed exactly once"
        assert [rows[r][i] for i in range(16)] == final[r, 7:].tolist()


def test_threshold_commits_top1_plus_confident_positions_and_caps_each_block(llada64):
    ids = torch.stack(prompts([6], seed=7))
    strict = collect(llada64, ids, DiffusionParams(gen_length=16, block_length=8, steps=16, threshold=1.0))
    assert [len(s[0].commits) for s in strict] == [1] * 16  # nothing reaches 1.0: top-1 only
    capped = collect(llada64, ids, DiffusionParams(gen_length=16, block_length=8, steps=4, threshold=1.0))
    assert [len(s[0].commits) for s in capped] == [1, 7, 1, 7]  # 2 steps per block: the last commits the rest
    loose = collect(llada64, ids, DiffusionParams(gen_length=16, block_length=8, steps=16, threshold=1e-9))
    assert [len(s[0].commits) for s in loose] == [8, 8]  # everything passes: one step per block
    probs = [c.confidence for s in collect(llada64, ids, DiffusionParams(
        gen_length=16, block_length=8, steps=16, threshold=0.0035)) for c in s[0].commits[1:]]
    assert all(p >= 0.0035 for p in probs)


def test_step_event_fields(llada64):
    ids = torch.stack(prompts([6], seed=8))
    steps = collect(llada64, ids, DiffusionParams(gen_length=8, block_length=4, steps=4),
                    decode=lambda t: "".join(chr(97 + i % 26) for i in t))
    assert [s[0].step for s in steps] == [0, 1, 2, 3]
    for s in steps:
        for c in s[0].commits:
            assert 0 <= c.index < 8 and c.text == chr(97 + c.token_id % 26)
            assert 0 < c.confidence <= 1 and 0 <= c.margin <= c.confidence
    assert "".join(s[0].final_text for s in steps) == "".join(chr(97 + i % 26) for i in generate(
        llada64, ids, DiffusionParams(gen_length=8, block_length=4, steps=4))[0, 6:].tolist())
    assert set(steps[0][0].to_dict()) == {"step", "block", "commits", "masked_remaining", "final_text"}
    assert set(steps[0][0].to_dict()["commits"][0]) == {"index", "token_id", "text", "confidence", "margin"}


@pytest.mark.parametrize("alg", ["low_confidence", "random", "maskgit_plus", "origin", "entropy"])
def test_seeds_reproduce_sampling(llada64, alg):
    ids = torch.stack(prompts([6], seed=9))
    extra = {"alg_temp": 0.5} if alg == "entropy" else {}
    run = lambda seed: generate(llada64, ids, DiffusionParams(gen_length=16, block_length=8, steps=8,
                                                                remasking=alg, temperature=1.0, top_p=0.95,
                                                                top_k=100, seed=seed, **extra))
    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_rows_of_a_seeded_batch_use_seed_plus_row(llada64):
    ids = torch.stack(prompts([6, 6], seed=10))
    params = DiffusionParams(gen_length=16, block_length=8, steps=8, temperature=1.0, seed=5)
    both = generate(llada64, ids, params)
    alone = DiffusionParams(gen_length=16, block_length=8, steps=8, temperature=1.0, seed=6)
    second = generate(llada64, ids[1:], alone)
    assert torch.equal(both[1], second[0])


def test_logits_eos_inf_never_commits_eos(llada64):
    ids = torch.stack(prompts([6], seed=11))
    base = dict(gen_length=16, block_length=16, steps=16)
    plain = generate(llada64, ids, DiffusionParams(**base))[0, 6:]
    eos = int(plain.mode().values)  # this random model's most common answer token stands in for eos
    no_eos = generate(llada64, ids, DiffusionParams(**base, logits_eos_inf=True), eos_id=eos)[0, 6:]
    assert eos in plain.tolist() and eos not in no_eos.tolist()


def test_confidence_eos_eot_inf_ranks_stop_candidates_last():
    logits = torch.zeros(4, 512, dtype=torch.float64)
    logits[0, EOS] = 9.0  # very confident eos
    logits[1, 7] = 2.0
    logits[2, 300] = 9.5  # an eot (stop id) candidate
    logits[3, 8] = 1.0
    g = torch.Generator().manual_seed(0)
    params = DiffusionParams().resolve("llada")
    plain = propose(logits, params, g, MASK, EOS, (300,))
    demoted = propose(logits, replace(params, confidence_eos_eot_inf=True), g, MASK, EOS, (300,))
    assert plain.score.argsort(descending=True).tolist() == [2, 0, 1, 3]
    assert demoted.score.argsort(descending=True).tolist() == [1, 3, 2, 0]
    assert torch.equal(plain.prob, demoted.prob)  # the reported confidence is unchanged


def test_mask_token_is_never_a_candidate():
    logits = torch.zeros(2, 512, dtype=torch.float64)
    logits[:, MASK] = 5.0
    logits[0, 3] = 4.0
    g = torch.Generator().manual_seed(0)
    for alg in ALGORITHMS:
        for temperature in (0.0, 1.0):
            params = DiffusionParams(remasking=alg, temperature=temperature).resolve("llada")
            p = propose(logits, params, g, MASK, EOS, ())
            assert MASK not in p.token.tolist()
    p = propose(logits, DiffusionParams().resolve("llada"), g, MASK, EOS, ())
    assert p.token[0] == 3 and p.prob[0] == pytest.approx(logits[0].softmax(-1)[3].item())


def test_prompt_too_long_and_bad_inputs_are_rejected(llada64):
    with pytest.raises(ValueError, match="exceeds the model's context length 1024"):
        generate(llada64, torch.zeros(1, 1000, dtype=torch.long), DiffusionParams(gen_length=32))
    with pytest.raises(ValueError, match="non-empty 1-D LongTensor"):
        generate(llada64, torch.zeros(1, 0, dtype=torch.long), DiffusionParams(gen_length=32))
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 512\)"):
        generate(llada64, torch.tensor([[3, 512]]), DiffusionParams(gen_length=32))
    with pytest.raises(ValueError, match=r"input_ids must be \[B, P\]"):
        generate(llada64, torch.zeros(3, dtype=torch.long), DiffusionParams(gen_length=32))
