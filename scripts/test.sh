#!/usr/bin/env bash
# The one test command: set up, start the local services that are down, lint, type-check,
# audit the locked dependencies, then pytest (extra arguments go to pytest). With CI set, a
# missing tool is fatal and the service fixtures fail instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

in_ci() { [[ -n "${CI:-}" ]]; }
warn() { printf 'test.sh: %s\n' "$*" >&2; }

# True when something accepts TCP connections on 127.0.0.1:$1.
port_open() { timeout 2 bash -c ">/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

wait_for_port() {
  local port=$1 deadline=$((SECONDS + ${2:-30}))
  until port_open "$port"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

# start_service NAME PORT COMMAND...: runs COMMAND when nothing listens on PORT. A service
# that stays down is only a warning here: its fixtures skip locally and fail under CI.
start_service() {
  local name=$1 port=$2
  shift 2
  port_open "$port" && return 0
  warn "$name is down on port $port; starting it"
  if ! "$@" >/dev/null 2>&1 || ! wait_for_port "$port" 60; then
    warn "could not start $name; its tests will skip (or fail under CI)"
  fi
}

start_postgres() {
  command -v pg_ctlcluster >/dev/null && [[ -d /etc/postgresql ]] || return 1
  # shellcheck disable=SC2046  # one directory per installed major version
  pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start
}

start_redis() {
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
    --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
}

start_rabbitmq() {
  rabbitmq-server -detached && timeout 120 rabbitmqctl -q await_startup
}

install_promtool() {
  command -v apt-get >/dev/null || return 0
  command -v promtool >/dev/null && return 0
  warn "promtool is missing; installing prometheus and prometheus-alertmanager"
  local log
  log="$(mktemp)"
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends prometheus prometheus-alertmanager; } >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    if in_ci; then
      warn "could not install promtool (fatal under CI)"
      exit 1
    fi
    warn "could not install promtool; the Prometheus rule tests will skip"
    return 0
  fi
  rm -f "$log"
}

bash scripts/setup.sh
install_promtool
start_service PostgreSQL 5432 start_postgres
start_service Redis 6379 start_redis
start_service RabbitMQ 5672 start_rabbitmq

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy .
# A known vulnerability in requirements.lock fails the run; exit 2 (the vulnerability
# service did not answer) has already printed its one warning line.
.venv/bin/python scripts/audit.py || [[ $? -eq 2 ]]
# Most tests wait on servers or subprocesses, so TEST_WORKERS pytest-xdist workers (4) share
# the cores; each has its own PostgreSQL databases, RabbitMQ vhost and Redis database. The
# fault suite keeps to two of them, one test at a time each (its volume runs, the faults). The
# tests marked serial stop the shared RabbitMQ, so they run alone afterwards. Exit code 5 is
# "no test was selected" (e.g. a path given).
run_pytest() { .venv/bin/pytest -q "$@" || [[ $? -eq 5 ]]; }
run_pytest -n "${TEST_WORKERS:-4}" --dist loadgroup -m "not serial" "$@"
run_pytest -m serial "$@"
