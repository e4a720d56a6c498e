#!/usr/bin/env bash
# Set up (if needed) and run the test suite: the README's second Quickstart command.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests examples
.venv/bin/python -m pytest -q "$@"
