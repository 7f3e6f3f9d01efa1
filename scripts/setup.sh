#!/usr/bin/env bash
# Creates .venv if missing and installs Tocsin editable with its test extras.
# Idempotent and quiet: it reinstalls only when pyproject.toml changed since the last run.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ! -x .venv/bin/python ]]; then
  python="$(command -v python3.11 || command -v python3)"
  "$python" -m venv .venv
fi

stamp=.venv/.tocsin-setup
wanted="$(sha256sum pyproject.toml | cut -d' ' -f1)"
installed() { .venv/bin/python -c 'import importlib.metadata as m; m.version("tocsin")' 2>/dev/null; }
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$wanted" ]] || ! installed; then
  log="$(mktemp)"
  # Build-backend warnings go to the log; it is shown only when the install fails.
  if ! .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]' >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    exit 1
  fi
  rm -f "$log"
  printf '%s\n' "$wanted" >"$stamp"
fi
