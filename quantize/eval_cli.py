"""`inkwell-eval`: fidelity of int4 candidates against their FP reference (DESIGN section 7).

    inkwell-eval --reference inkwell-tiny --candidate gptq=out/gptq --candidate out/fair \\
        --prompts 200 --json eval.json --plots plots/

A candidate is `PATH` or `LABEL=PATH`. Prints a table, writes the JSON and (with --plots) PNGs of the
lag CCDF and the flip rates, and of each candidate's Stage I prior when it has one.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .eval_run import FP, EvalSettings, run_eval
from .plots import plot_bars, plot_lines, plot_prior
from .prior import Prior
from .settings import add_arguments, from_args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inkwell-eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", required=True, help="FP model: directory or name")
    parser.add_argument("--candidate", action="append", required=True, help="[LABEL=]PATH (repeatable)")
    parser.add_argument("--json", required=True, help="output JSON file")
    parser.add_argument("--plots", default=None, help="directory for PNG plots")
    parser.add_argument("--markdown", default=None, help="also write the tables as Markdown here")
    add_arguments(parser, EvalSettings)
    return parser


def parse_candidates(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        label, _, path = item.rpartition("=") if "=" in item else (Path(item).name, "", item)
        if label in out or label == FP:
            raise ValueError(f"candidate label {label!r} is used twice or reserved; use LABEL=PATH")
        out[label] = path
    return out


def _fmt(ci: dict, scale: float = 100.0) -> str:
    return f"{ci['value'] * scale:6.2f} [{ci['low'] * scale:6.2f},{ci['high'] * scale:6.2f}]"


def table(result: dict) -> str:
    lines = []
    for order, r in result["orders"].items():
        lines.append(f"\n== {order}: {result['prompts']} prompts, {r['scored_commits']} of {r['commits']} "
                     f"served commits scored, "
                     f"{r['probed_positions']} probed positions in {r['probe_states']} states; values in % "
                     "with 95 % CI ==")
        lines.append(f"{'model':<22}{'flip rate':>24}{'mean-disagree':>24}{'never-agree':>24}"
                     f"{'free-run agree':>24}")
        for label, m in r["models"].items():
            cells = [_fmt(m[k]) if k in m else "-" for k in ("flip_rate", "mean_disagree", "never_agree",
                                                               "free_running_agreement")]
            lines.append(f"{label:<22}" + "".join(f"{c:>24}" for c in cells))
        lines.append("-- paired differences (percentage points) --")
        for m in r["paired"]:
            cells = [_fmt(m[k]) if k in m else "-" for k in ("flip_rate", "mean_disagree", "never_agree",
                                                               "free_running_agreement")]
            lines.append(f"{m['candidate'] + ' - ' + m['minus']:<22}" + "".join(f"{c:>24}" for c in cells))
    lines.append("\n== masked-token NLL (nats/token) with 95 % CI, and minus FP ==")
    for ratio, r in result["nll"]["ratios"].items():
        for label, ci in r["models"].items():
            extra = f"   minus FP {_fmt(r['minus_fp'][label], 1)}" if label in r["minus_fp"] else ""
            lines.append(f"ratio {ratio:<5} {label:<22}{_fmt(ci, 1)}{extra}")
    return "\n".join(lines)


def _md(ci: dict | None, scale: float = 100.0, digits: int = 2) -> str:
    if ci is None:
        return "-"
    v, lo, hi = (ci[k] * scale for k in ("value", "low", "high"))
    return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


METRICS = (("flip_rate", "flip rate"), ("mean_disagree", "mean-disagree"), ("never_agree", "never-agree"),
           ("free_running_agreement", "free-run agreement"))


def markdown(result: dict) -> str:
    """The tables as Markdown: per order, values and paired differences in % with 95 % CIs; then NLL."""
    out = []
    for order, r in result["orders"].items():
        cols = [(k, name) for k, name in METRICS if any(k in m for m in r["models"].values())]
        head = "| model | " + " | ".join(n for _, n in cols) + " | P(lag > 8) | lag never settles |"
        rule = "|---" * (len(cols) + 3) + "|"
        out += [f"\n**{order}**: {result['prompts']} prompts, {r['scored_commits']} of {r['commits']} served "
                f"commits scored, {r['probed_positions']} positions probed in {r['probe_states']} states.\n",
                head, rule]
        for label, m in r["models"].items():
            lag8 = m["lag_ccdf"][8] if len(m["lag_ccdf"]) > 8 else float("nan")
            out.append(f"| {label} | " + " | ".join(_md(m.get(k)) for k, _ in cols)
                       + f" | {lag8 * 100:.1f} | {m['lag_never_settles'] * 100:.1f} |")
        out += ["\nPaired differences (percentage points):\n",
                "| candidate − other | " + " | ".join(n for _, n in cols) + " |",
                "|---" * (len(cols) + 1) + "|"]
        for m in r["paired"]:
            cells = " | ".join(_md(m.get(k)) for k, _ in cols)
            out.append(f"| {m['candidate']} − {m['minus']} | {cells} |")
        out += ["\nMinus the FP teacher's own probe floor (percentage points):\n",
                "| candidate | mean-disagree | never-agree |", "|---|---|---|"]
        for label, m in r["minus_fp_floor"].items():
            out.append(f"| {label} | {_md(m['mean_disagree'])} | {_md(m['never_agree'])} |")
    ratios = result["nll"]["ratios"]
    out += [f"\n**Masked-token NLL** (nats/token; {result['nll']['windows']} windows of "
            f"{result['nll']['length']} tokens), value and minus FP:\n",
            "| model | " + " | ".join(f"ratio {r}" for r in ratios) + " | " +
            " | ".join(f"minus FP @ {r}" for r in ratios) + " |", "|---" * (2 * len(ratios) + 1) + "|"]
    for label in next(iter(ratios.values()))["models"]:
        vals = [_md(r["models"][label], 1, 3) for r in ratios.values()]
        diffs = [_md(r["minus_fp"].get(label), 1, 4) for r in ratios.values()]
        out.append(f"| {label} | " + " | ".join(vals + diffs) + " |")
    out += ["\nPaired NLL differences (nats/token):\n",
            "| candidate − other | " + " | ".join(f"ratio {r}" for r in ratios) + " |",
            "|---" * (len(ratios) + 1) + "|"]
    for i, pair in enumerate(next(iter(ratios.values()))["paired"]):
        cells = [_md(r["paired"][i], 1, 4) for r in ratios.values()]
        out.append(f"| {pair['candidate']} − {pair['minus']} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def write_plots(result: dict, out: Path) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for order, r in result["orders"].items():
        series = {label: (list(range(len(m["lag_ccdf"]))), m["lag_ccdf"]) for label, m in r["models"].items()}
        written.append(plot_lines(series, out / f"lag_ccdf_{order}.png", f"stability lag CCDF ({order})",
                                  "lag x (steps)", "P(lag > x)", logy=True))
        bars = {label: tuple(m["flip_rate"][k] * 100 for k in ("value", "low", "high"))
                for label, m in r["models"].items() if "flip_rate" in m}
        written.append(plot_bars(bars, out / f"flip_rate_{order}.png", f"frontier flip rate ({order})", "%"))
    for label, path in result["candidates"].items():
        prior_file = Path(path) / "fair_calib_prior.json"
        if prior_file.is_file():
            written.append(plot_prior(Prior.load(prior_file), out / f"prior_{label}.png"))
    return [str(p) for p in written if p is not None]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = from_args(args, EvalSettings)
        if settings.threads:
            import torch

            torch.set_num_threads(settings.threads)
        result = run_eval(args.reference, parse_candidates(args.candidate), settings)
    except (ValueError, OSError) as err:  # bad flags, an unreadable model, an unwritable --cache-dir
        sys.stderr.write(f"inkwell-eval: error: {err}\n")
        return 2
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    sys.stdout.write(table(result) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(markdown(result))
    if args.plots:
        result["plots"] = write_plots(result, Path(args.plots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
