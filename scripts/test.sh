#!/usr/bin/env bash
# Set up (if needed) and run the test suite: the README's second Quickstart command.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests examples scripts
.venv/bin/ruff format --check src tests examples scripts
.venv/bin/python -m pytest -q "$@"
