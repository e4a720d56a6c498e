#!/usr/bin/env bash
# Set up (if needed) and run the main job: the README's first Quickstart command.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/featdistill demo "$@"
