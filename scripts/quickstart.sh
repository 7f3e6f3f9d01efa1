#!/usr/bin/env bash
# The one command for the embedded default (SQLite file + in-process queue, no services):
# set up, migrate, then run producer, relay and workers in one process (args go to `run`).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
.venv/bin/tocsin db upgrade
exec .venv/bin/tocsin run "$@"
