#!/usr/bin/env bash
# Headless load test of a running inkwell-serve, one Locust run per served model (FP against int4), then
# report.md comparing them; exits non-zero if any request failed. Options: loadtest/run.py --help.
#
#   loadtest/run.sh --host http://127.0.0.1:8000 --users 8 --run-time 60s --out runs/loadtest
#
# Uses $PYTHON, else the repository's .venv (installed with `pip install -e ".[loadtest]"`), else python3.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-$here/../.venv/bin/python}"
[ -x "$python" ] || python=python3
exec "$python" "$here/run.py" "$@"
