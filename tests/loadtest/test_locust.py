"""End-to-end: `loadtest/run.sh` drives a real `inkwell-serve` on loopback (the tiny FP and int4 fixture
models of tests/server) with short headless Locust runs, and its report and exit status tell what happened.

Canvases are 16 tokens and 4 steps, runs a few seconds with 3 users, so the file takes well under a minute
on a shared 2-core CPU; users finish their last stream after the run time, so every run completes requests.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ..server.conftest import API_KEY, ServerProcess, free_port
from ..server.fixtures import build_models

RUN_SH = Path(__file__).resolve().parents[2] / "loadtest" / "run.sh"
LOCUSTFILE = RUN_SH.with_name("locustfile.py")
EXTRA_BODY = {"steps": 4, "temperature": 1.0, "seed": 3, "ignore_eos": True}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    fp, int4 = build_models(tmp_path_factory.mktemp("models"))
    log = tmp_path_factory.mktemp("server") / "server.log"
    args = ["--model", f"tiny={fp}", "--model", f"tiny-int4={int4}", "--api-key", API_KEY]
    server = ServerProcess(args, log)
    try:
        server.wait_healthy()
        yield server
    finally:
        server.stop()


def run_loadtest(url: str, out: Path, api_key: str, *args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHON": sys.executable, "INKWELL_API_KEY": api_key}
    command = [str(RUN_SH), "--host", url, "--users", "3", "--run-time", "3s", "--max-tokens", "16",
               "--extra-body", json.dumps(EXTRA_BODY), "--out", str(out), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)


def table(report: str) -> dict[str, list[str]]:
    """The report's comparison table: row label -> cells, the header row under the label ''."""
    rows = [line.strip("|").split("|") for line in report.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows}


@pytest.mark.slow
def test_report_compares_fp_and_int4_with_no_failure(server, tmp_path):
    result = run_loadtest(server.url, tmp_path, API_KEY)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = (tmp_path / "report.md").read_text()
    rows = table(report)
    assert rows[""] == ["`tiny`", "`tiny-int4`"]  # run.py asked GET /v1/models for every served model
    assert all(int(n) > 0 for n in rows["requests"]), report
    assert rows["failures"] == ["0", "0"], report
    assert all(float(x) > 0 for x in rows["requests/s"] + rows["completion tokens/s"]), report
    for label in ("TTFT p50 / p90 / p99 (ms)", "E2E p50 / p90 / p99 (ms)"):
        assert all(len(cell.split(" / ")) == 3 for cell in rows[label]), report
    for model, requests in zip(["tiny", "tiny-int4"], rows["requests"], strict=True):
        with (tmp_path / f"{model}_stats.csv").open() as f:
            e2e = next(r for r in csv.DictReader(f) if (r["Type"], r["Name"]) == ("SSE", f"{model} e2e"))
        assert e2e["Request Count"] == requests and e2e["Failure Count"] == "0"
        # Locust's own final summary counts the same requests (streams that ended after the run time too)
        assert re.findall(rf"SSE\s+{re.escape(model)} e2e\s+(\d+)\s", result.stderr)[0] == requests
    assert report in result.stdout


@pytest.mark.slow
def test_failed_requests_make_the_run_fail(server, tmp_path):
    result = run_loadtest(server.url, tmp_path, "wrong-key", "--model", "tiny", "--", "--loglevel", "WARNING")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    report = (tmp_path / "report.md").read_text()
    rows = table(report)
    assert int(rows["requests"][0]) > 0 and rows["failures"] == rows["requests"], report
    assert "HTTP 401" in report
    assert "requests to tiny failed" in result.stderr


def test_connection_errors_are_failed_requests(tmp_path):
    """The locustfile on its own, configured through the environment, against a port nobody listens on."""
    env = os.environ | {"INKWELL_MODEL": "tiny", "INKWELL_MAX_TOKENS": "16"}
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
               "--users", "2", "--run-time", "2s", "--host", f"http://127.0.0.1:{free_port()}",
               "--csv", str(tmp_path / "down")]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr[-3000:]
    with (tmp_path / "down_stats.csv").open() as f:
        e2e = next(r for r in csv.DictReader(f) if r["Name"] == "tiny e2e")
    assert int(e2e["Request Count"]) > 0 and e2e["Failure Count"] == e2e["Request Count"]
    with (tmp_path / "down_failures.csv").open() as f:
        assert all("no response" in r["Error"] for r in csv.DictReader(f))
    with (tmp_path / "down_exceptions.csv").open() as f:
        assert list(csv.DictReader(f)) == [], "the user's task raised instead of reporting a failure"


def test_unreachable_server_exits_2(tmp_path):
    result = run_loadtest(f"http://127.0.0.1:{free_port()}", tmp_path, API_KEY)
    assert result.returncode == 2
    assert "cannot reach" in result.stderr
