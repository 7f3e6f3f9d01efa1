#!/usr/bin/env bash
# Writes requirements.lock: every runtime dependency of `pip install .`, pinned and hashed,
# resolved for Python 3.11+ on any platform (markers keep the Linux 3.11/3.12 set exact).
# Existing pins are kept; extra arguments go to uv, e.g. `bash scripts/lock.sh --upgrade`
# or `--upgrade-package aiohttp`. Run scripts/audit.sh afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
if [[ ! -x .venv/bin/uv ]]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check 'uv>=0.5'
fi

.venv/bin/uv pip compile pyproject.toml --quiet --universal --python-version 3.11 \
  --generate-hashes --custom-compile-command 'bash scripts/lock.sh' \
  --output-file requirements.lock "$@"
