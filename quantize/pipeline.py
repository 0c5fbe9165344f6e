"""`quantize_model`: source model -> calibration -> Stage I prior -> Stage II -> int4 checkpoint.

Stage I holds the whole FP teacher for its rollouts and frees it; Stage II and the export stream the source
file block by block (`WeightSource`), so their peak memory is about one FP block plus the activations.

Input problems (an unreadable model, a group size that does not divide a layer's K, an unwritable output
directory, an unreadable calibration file) are `ValueError`s raised before any expensive work.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from inkwell.engine import load_tokenizer, special_ids
from inkwell.engine.params import DiffusionParams
from torch import nn

from . import arch, calibration
from .driver import quantize_blocks, quantize_rtn
from .export import write_checkpoint
from .plots import plot_prior
from .prior import Prior, build_prior, first_stop, token_weights
from .settings import QuantizeSettings
from .source import WeightSource
from .trajectory import Trajectories, rollouts

logger = logging.getLogger(__name__)
PRIOR_FILE, PRIOR_PLOT, REPORT_FILE, ROLLOUTS_FILE = ("fair_calib_prior.json", "fair_calib_prior.png",
                                                      "quantize_report.json", "stage1_rollouts.pt")
FORMAT_VERSION = 1


def check_out_dir(out: str | Path) -> Path:
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".inkwell-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"output directory {out} is not writable ({err.strerror or err})") from err
    return out


def check_group_size(model: nn.Module, settings: QuantizeSettings) -> None:
    block = arch.blocks(model)[0]
    for name in arch.block_linears(model):
        try:
            settings.group_for(block.get_submodule(name).in_features)
        except ValueError as err:
            raise ValueError(f"layer {name}: {err}") from err


def rollout_params(path: Path | None, settings, order: str) -> DiffusionParams:
    """The served diffusion settings (generation_config.json `diffusion`, overridden by the settings'
    gen_length / steps / block_length), greedy, in commit order `order`."""
    served = {}
    if path is not None and (path / "generation_config.json").is_file():
        served = json.loads((path / "generation_config.json").read_text()).get("diffusion", {})
    keep = {k: served.get(k) for k in ("gen_length", "steps", "block_length")}
    keep |= {k: getattr(settings, k) for k in keep if getattr(settings, k) is not None}
    return DiffusionParams(**keep, remasking=order, temperature=0.0, seed=settings.seed)


def probe_prompts(name: str, model: nn.Module, path: Path | None, s: QuantizeSettings):
    """(prompts, stop ids, description of the calibration source)."""
    try:
        tokenizer = load_tokenizer(name) if path is not None else None
    except ValueError:
        tokenizer = None
    if tokenizer is None:
        c = model.config
        special = {c.mask_token_id, c.eos_token_id, c.bos_token_id, c.pad_token_id}
        vocab = getattr(c, "padded_vocab", c.vocab_size)
        prompts = calibration.random_prompts(vocab, special, s.calib_prompts, s.prompt_tokens, s.seed)
        return prompts, (c.eos_token_id,), "synthetic: seeded random tokens (the model has no tokenizer)"
    source = s.calib_file or calibration.default_calib_file(name)
    if source is None:
        raise ValueError(f"model {name!r} ships no heldout/validation.json: pass --calib-file")
    texts = calibration.read_texts(source)
    prompts = calibration.chat_prompts(texts, tokenizer, s.calib_prompts, s.prompt_tokens, s.seed)
    return prompts, special_ids(name, tokenizer).stop_ids, str(source)


def stage1(source: WeightSource, prompts, params: DiffusionParams, s: QuantizeSettings) -> Trajectories:
    """The FP teacher's rollouts (saved ones with --rollouts-file); the teacher is freed on return."""
    if s.rollouts_file:
        saved = torch.load(s.rollouts_file, weights_only=False)
        if saved["fingerprint"] != calibration.fingerprint(prompts) or saved["params"] != params.to_dict():
            raise ValueError(f"{s.rollouts_file}: rollouts of other prompts or diffusion settings")
        return Trajectories(**saved["trajectories"])
    teacher = source.full_model()
    return rollouts(teacher, prompts, params, s.batch_size, keep_top1=True, desc="Stage I rollouts")


def quantize_model(name: str, settings: QuantizeSettings, out: str | Path) -> dict:
    """Quantize model `name` with `settings` into `out`; returns the `inkwell` block written."""
    s = settings.resolved()
    out = check_out_dir(out)
    source = WeightSource.open(name)
    check_group_size(source.model, s)
    inkwell: dict = {"version": FORMAT_VERSION, "method": s.method, "source_model": name,
                     "settings": s.to_dict(), "calibration": None, "prior_path": None}
    report: dict = {}
    if s.method == "rtn":
        results = quantize_rtn(source, s)
    else:
        results, report, inkwell["calibration"], prior = _calibrated(name, source, s, out)
        if prior is not None:
            inkwell["prior_path"] = PRIOR_FILE
            inkwell["prior_max_min"] = round(prior.ratio(), 4)
    (out / REPORT_FILE).write_text(json.dumps(report, indent=1) + "\n")
    path = source.path
    source_dtype = (json.loads((path / "config.json").read_text()).get("torch_dtype") if path else None)
    write_checkpoint(source, results, out, source_dtype, s.scale_dtype, s.actorder, inkwell)
    return inkwell


def _calibrated(name, source: WeightSource, s: QuantizeSettings, out: Path):
    model, path = source.model, source.path
    prompts, stop_ids, calib_source = probe_prompts(name, model, path, s)
    params = rollout_params(path, s, s.stage1_order).resolve(model.config.model_type)
    traj = stage1(source, prompts, params, s)
    if s.save_rollouts:
        torch.save({"fingerprint": calibration.fingerprint(prompts), "params": params.to_dict(),
                    "trajectories": vars(traj)}, out / ROLLOUTS_FILE)
    prior = Prior.load(s.prior_file) if s.prior_file else build_prior(traj, s.prior, s.lambda1, s.floor,
                                                                     params.gen_length)
    if prior.mode != s.prior:
        raise ValueError(f"{s.prior_file}: a {prior.mode!r} prior, but --prior is {s.prior!r}")
    pad = model.config.eos_token_id if model.config.eos_token_id is not None else 0
    stops = first_stop(traj.tokens, tuple(stop_ids))
    calib = calibration.clean_sequences(traj, pad, stops)
    if s.calib_canvas == "masked":
        calib = calibration.masked_canvases(calib, model.config.mask_token_id, s.seed)
    weights = token_weights(prior, calib.attention_mask, calib.window_start, stops)
    results, report = quantize_blocks(source, calib, weights, s)
    saved_prior = None
    if prior.mode != "uniform":
        prior.save(out / PRIOR_FILE)
        plot_prior(prior, out / PRIOR_PLOT)
        saved_prior = prior
    info = {"source": calib_source, "prompts": len(prompts), "fingerprint": calibration.fingerprint(prompts),
            "sequences": int(calib.ids.shape[0]), "sequence_length": int(calib.ids.shape[1]),
            "window": params.gen_length, "canvas": s.calib_canvas, "rollout_params": params.to_dict(),
            "stop_ids": list(stop_ids), "mean_response_stop": float(stops.float().mean())}
    return results, report, info, saved_prior
