"""The markdown report of a load test: one column per model, read back from the CSVs Locust wrote.

Everything comes from Locust's `<prefix>_stats.csv` (the `SSE` entries the locustfile fires) and
`<prefix>_failures.csv`, so a report can be rebuilt from the CSVs alone. Locust keeps response times with
two significant digits above 100 ms (1234 ms is stored as 1200 ms), and so do the percentiles here.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

PERCENTILES = ("50%", "90%", "99%")


@dataclass(frozen=True)
class Latency:
    count: int
    percentiles_ms: tuple[float, ...]  # p50, p90, p99; empty when there was no sample

    def cell(self) -> str:
        if not self.percentiles_ms:
            return "n/a"
        return " / ".join(f"{p:.0f}" for p in self.percentiles_ms)


@dataclass(frozen=True)
class ModelResult:
    model: str
    requests: int
    failures: int
    requests_per_s: float
    tokens_per_request: float  # completion tokens, from the usage chunks
    ttft: Latency
    itl: Latency
    e2e: Latency
    failure_reasons: list[tuple[str, int]] = field(default_factory=list)  # (error, occurrences)

    @property
    def tokens_per_s(self) -> float:
        return self.requests_per_s * self.tokens_per_request


def read_result(prefix: Path, model: str) -> ModelResult:
    """The result of one Locust run whose `--csv` prefix was `prefix`."""
    rows = {(row["Type"], row["Name"]): row for row in _rows(Path(f"{prefix}_stats.csv"))}
    e2e = rows.get(("SSE", f"{model} e2e"))
    if e2e is None:
        return ModelResult(model, 0, 0, 0.0, 0.0, Latency(0, ()), Latency(0, ()), Latency(0, ()),
                           _failures(prefix))
    return ModelResult(
        model=model, requests=int(e2e["Request Count"]), failures=int(e2e["Failure Count"]),
        requests_per_s=float(e2e["Requests/s"]), tokens_per_request=float(e2e["Average Content Size"]),
        ttft=_latency(rows.get(("SSE", f"{model} ttft"))), itl=_latency(rows.get(("SSE", f"{model} itl"))),
        e2e=_latency(e2e), failure_reasons=_failures(prefix))


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _latency(row: dict[str, str] | None) -> Latency:
    if row is None or int(row["Request Count"]) == 0:
        return Latency(0, ())
    return Latency(int(row["Request Count"]), tuple(float(row[p]) for p in PERCENTILES))


def _failures(prefix: Path) -> list[tuple[str, int]]:
    path = Path(f"{prefix}_failures.csv")
    if not path.exists():
        return []
    return [(row["Error"], int(row["Occurrences"])) for row in _rows(path)]


def markdown(results: list[ModelResult], setup: list[tuple[str, str]]) -> str:
    """A title, the run's setup as a list, the comparison table, then any failure reasons."""
    lines = ["# Inkwell load test", ""] + [f"- {key}: {value}" for key, value in setup] + [""]
    lines += ["| | " + " | ".join(f"`{r.model}`" for r in results) + " |",
              "|---|" + "---:|" * len(results)]
    for label, cell in _ROWS:
        lines.append(f"| {label} | " + " | ".join(cell(r) for r in results) + " |")
    lines += ["", "Latencies are Locust's percentiles of the `SSE` entries (p50 / p90 / p99, ms); ITL is the "
              "gap between successive content chunks. tokens/s = requests/s x completion tokens per request."]
    reasons = [line for r in results for line in _failure_lines(r)]
    if reasons:
        lines += ["", "Failures:", "", *reasons]
    return "\n".join(lines) + "\n"


def _failure_lines(result: ModelResult, most: int = 5) -> list[str]:
    """The most frequent failure reasons (Locust groups failures by their exact message)."""
    reasons = sorted(result.failure_reasons, key=lambda reason: -reason[1])
    lines = [f"- `{result.model}`, {n} x: {error}" for error, n in reasons[:most]]
    if len(reasons) > most:
        rest = sum(n for _, n in reasons[most:])
        lines.append(f"- `{result.model}`: {rest} more in {len(reasons) - most} other messages "
                     "(`<model>_failures.csv`)")
    return lines


_ROWS = [
    ("requests", lambda r: str(r.requests)),
    ("failures", lambda r: str(r.failures)),
    ("requests/s", lambda r: f"{r.requests_per_s:.2f}"),
    ("completion tokens/s", lambda r: f"{r.tokens_per_s:.1f}"),
    ("completion tokens per request", lambda r: f"{r.tokens_per_request:.1f}"),
    ("TTFT p50 / p90 / p99 (ms)", lambda r: r.ttft.cell()),
    ("ITL p50 / p90 / p99 (ms)", lambda r: r.itl.cell()),
    ("E2E p50 / p90 / p99 (ms)", lambda r: r.e2e.cell()),
]
