#!/usr/bin/env bash
# Set up (if needed) and run the whole CPU test suite: unit tests, then the harness's CPU mode.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 MPLBACKEND=Agg
exec "${STEGO_VENV:-.venv}/bin/python" -m pytest tests benchmarks -q --durations=10 "$@"
