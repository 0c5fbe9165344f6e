"""The engine: streams from an asyncio loop while the scheduler thread computes, requests joining mid-run
give the same outputs as alone, cancellation, deadlines, QueueFull, the token budget, two models
round-robin, early stop, and one failing request not taking the others (or the thread) down."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch
from inkwell.engine import DiffusionParams, Engine, EngineRequest, QueueFull, generate, load_model
from inkwell.engine.engine import DeadlineExceeded, RequestCancelled
from torch import nn

from .test_sampler import prompts

PARAMS = DiffusionParams(gen_length=16, block_length=8, steps=8)


@pytest.fixture(scope="module")
def models():
    return {"llada": load_model("tiny-llada", dtype=torch.float64),
            "dream": load_model("tiny-dream", dtype=torch.float64)}


def alone(model, prompt, params, seed):
    seeded = DiffusionParams(**{**params.to_dict(), "seed": seed})
    return generate(model, prompt[None], seeded)[0, len(prompt):]


def request(i, prompt, params=PARAMS, model="llada", **kwargs):
    return EngineRequest(request_id=f"r{i}", model=model, prompt_ids=prompt.tolist(), params=params,
                         seed=kwargs.pop("seed", i), **kwargs)


async def consume(stream):
    events = [e async for e in stream]
    return events, stream.result


def test_streams_from_an_event_loop_match_generation_alone(models):
    varied = [PARAMS, DiffusionParams(gen_length=24, block_length=8, steps=12, temperature=0.8, cache="dual"),
              DiffusionParams(gen_length=16, block_length=16, steps=8, remasking="entropy", cache="prefix")]
    rows = prompts([4, 9, 6], seed=20)

    async def main():
        with Engine(models, max_batch=8) as engine:
            pairs = enumerate(zip(rows, varied, strict=True))
            streams = [engine.stream(request(i, p, q)) for i, (p, q) in pairs]
            return await asyncio.gather(*(consume(s) for s in streams))

    for i, (events, result) in enumerate(asyncio.run(main())):
        expected = alone(models["llada"], rows[i], varied[i], seed=i)
        assert torch.equal(result.answer, expected)
        committed = {c.index: c.token_id for e in events for c in e.commits}
        assert [committed[j] for j in range(len(expected))] == expected.tolist()
        assert result.nfe == len(events) == result.steps and events[-1].masked_remaining == 0


def test_requests_join_a_running_batch_at_a_step_boundary(models):
    rows = prompts([5, 8, 3], seed=21)

    long = DiffusionParams(gen_length=32, block_length=8, steps=32)

    async def main():
        with Engine(models, max_batch=8) as engine:
            first = engine.stream(request(0, rows[0], long))
            await first.__anext__()  # the first request is running when the others join
            later = [engine.stream(request(i, rows[i])) for i in (1, 2)]
            results = await asyncio.gather(consume(first), *(consume(s) for s in later))
            return [r for _, r in results]

    results = asyncio.run(main())
    assert torch.equal(results[0].answer, alone(models["llada"], rows[0], long, 0))
    for i in (1, 2):
        assert torch.equal(results[i].answer, alone(models["llada"], rows[i], PARAMS, i))


def test_two_models_round_robin_and_the_token_budget(models):
    rows = prompts([4, 7, 5, 6], seed=22)
    reqs = [request(i, p, model=("llada", "dream")[i % 2]) for i, p in enumerate(rows)]
    with Engine(models, max_tokens_per_batch=30) as engine:  # every forward row by row
        results = engine.generate(reqs, timeout=120)
    for i, result in enumerate(results):
        assert result.request_id == f"r{i}"
        assert torch.equal(result.answer, alone(models[("llada", "dream")[i % 2]], rows[i], PARAMS, i))


def test_cancellation_takes_effect_at_the_next_step(models):
    long = DiffusionParams(gen_length=64, block_length=8, steps=64)

    async def main():
        with Engine(models) as engine:
            stream = engine.stream(request(0, prompts([5])[0], long))
            await stream.__anext__()
            engine.cancel("r0")
            with pytest.raises(RequestCancelled):
                async for _ in stream:
                    pass
            closed = engine.stream(request(1, prompts([5])[0], long))
            await closed.__anext__()
            await closed.aclose()  # a client that goes away
            for _ in range(200):
                if engine.num_running() == 0:
                    break
                await asyncio.sleep(0.01)
            return engine.num_running(), engine.num_waiting

    assert asyncio.run(main()) == (0, 0)


def test_deadline_fails_only_the_late_request(models):
    rows = prompts([5, 6], seed=23)
    reqs = [request(0, rows[0], DiffusionParams(gen_length=64, block_length=8, steps=64),
                    deadline=time.monotonic() + 0.05),
            request(1, rows[1])]

    async def main():
        with Engine(models) as engine:
            streams = [engine.stream(r) for r in reqs]
            return await asyncio.gather(*(consume(s) for s in streams), return_exceptions=True)

    late, ok = asyncio.run(main())
    assert isinstance(late, DeadlineExceeded)
    assert torch.equal(ok[1].answer, alone(models["llada"], rows[1], PARAMS, 1))


def test_queue_full_and_unknown_model(models):
    engine = Engine(models, max_queue=2)  # not started: nothing drains the queue
    p = prompts([4])[0]
    engine.submit(request(0, p), lambda item: None)
    engine.submit(request(1, p), lambda item: None)
    with pytest.raises(QueueFull, match="max_queue 2"):
        engine.submit(request(2, p), lambda item: None)
    with pytest.raises(ValueError, match=r"unknown model 'gpt'; loaded: \['dream', 'llada'\]"):
        engine.submit(request(3, p, model="gpt"), lambda item: None)
    with pytest.raises(ValueError, match="context length"):
        engine.submit(request(4, torch.zeros(1020, dtype=torch.long)), lambda item: None)
    engine.close()


class Exploding(nn.Module):
    """Wraps a model; any forward whose input holds the token 509 three times in a row raises."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.config = model, model.config

    def forward(self, input_ids, **kwargs):
        hit = input_ids == 509
        if (hit[:, :-2] & hit[:, 1:-1] & hit[:, 2:]).any():
            raise RuntimeError("boom")
        return self.inner(input_ids, **kwargs)


def test_a_failing_request_fails_alone_and_the_scheduler_survives(models):
    rows = prompts([5, 6, 7], seed=24)
    bad = torch.tensor([3, 509, 509, 509, 7])

    async def main():
        with Engine({"llada": Exploding(models["llada"])}) as engine:
            streams = [engine.stream(request(i, p, PARAMS)) for i, p in enumerate([rows[0], bad, rows[1]])]
            results = await asyncio.gather(*(consume(s) for s in streams), return_exceptions=True)
            after = await consume(engine.stream(request(9, rows[2])))  # the thread is still alive
            return results, after

    (first, failed, third), after = asyncio.run(main())
    assert isinstance(failed, RuntimeError) and str(failed) == "boom"
    assert torch.equal(first[1].answer, alone(models["llada"], rows[0], PARAMS, 0))
    assert torch.equal(third[1].answer, alone(models["llada"], rows[1], PARAMS, 2))
    assert torch.equal(after[1].answer, alone(models["llada"], rows[2], PARAMS, 9))


def test_early_stop_in_the_engine(models):
    p = prompts([6], seed=7)[0]
    params = DiffusionParams(gen_length=16, block_length=4, steps=16)
    full = alone(models["llada"], p, params, 0)
    stop = int(full[5])
    with Engine(models) as engine:
        result, = engine.generate([request(0, p, params, stop_ids=(stop,), seed=0)])
    first = full.tolist().index(stop)
    assert torch.equal(result.answer[: first + 1], full[: first + 1])
    assert (result.answer[first + 1 :] == 510).all() and result.steps < 16


def test_bench_runs_every_mode_on_a_preset(capsys):
    from inkwell.engine import bench

    bench.main(["--model", "tiny-llada", "--gen-length", "16", "--block-length", "8", "--prompts", "2",
                "--prompt-length", "4", "--batches", "1,2", "--threads", "1"])
    out = capsys.readouterr().out
    for mode in ("reference loop", "threshold 0.9", "threshold + prefix cache", "threshold + dual cache",
                 "engine batch 1", "engine batch 2"):
        assert f"| {mode}" in out
    assert "| reference loop | " in out and "| 100.0% |" in out  # the reference agrees with itself
