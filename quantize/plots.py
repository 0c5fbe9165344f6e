"""PNG plots (matplotlib, an optional dependency: without it plots are skipped with a warning)."""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no plots (pip install 'inkwell-dllm[plots]')")
        return None
    return plt


def plot_prior(prior, path: str | Path) -> Path | None:
    """The Stage I prior over window positions, with its normalised F and R terms."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(prior.weights, label=f"prior ({prior.mode}), max/min {prior.ratio():.2f}", lw=2)
    for name, values in (("F (frontier, early-boost)", prior.frontier), ("R (masked reliability)",
                                                                         prior.reliability)):
        if values:
            mean = sum(values) / len(values)
            ax.plot([v / mean for v in values], label=f"norm {name}", lw=1, alpha=0.7)
    ax.axhline(prior.floor, color="grey", ls=":", label=f"floor {prior.floor}")
    ax.set_xlabel("answer position i")
    ax.set_ylabel("weight (mean 1)")
    ax.set_title(f"FAIR-Calib Stage I prior: {prior.rollouts} rollouts x {prior.steps} steps")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_lines(series: dict[str, tuple[list[float], list[float]]], path: str | Path, title: str,
               xlabel: str, ylabel: str, logy: bool = False) -> Path | None:
    """One line per name: {name: (xs, ys)}."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (xs, ys) in series.items():
        ax.step(xs, ys, where="post", label=name) if logy else ax.plot(xs, ys, label=name)
    if logy:
        ax.set_yscale("log")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_bars(values: dict[str, tuple[float, float, float]], path: str | Path, title: str,
              ylabel: str) -> Path | None:
    """Bars with error bars: {name: (value, low, high)}."""
    plt = _pyplot()
    if plt is None:
        return None
    names = list(values)
    mid = [values[n][0] for n in names]
    err = [[m - values[n][1] for n, m in zip(names, mid, strict=True)],
           [values[n][2] - m for n, m in zip(names, mid, strict=True)]]
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(names)), 4))
    ax.bar(range(len(names)), mid, yerr=err, capsize=3)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set(title=title, ylabel=ylabel)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
