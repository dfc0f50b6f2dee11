#!/usr/bin/env bash
# Celery baseline for `genq bench fleet --vs-celery`: installs Celery 5 (RabbitMQ broker, Redis
# result backend) into .cache/celery-venv (git-ignored) once, then runs scripts/celery_bench.py
# with the arguments given. Prints one JSON line with the figures on its last line.
# Usage: scripts/celery-bench.sh --jobs 4000 [--amqp-url URL] [--redis-url URL]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${GENQ_CELERY_VENV:-$root/.cache/celery-venv}"
if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv" >&2
fi
if ! "$venv/bin/python" -c 'import celery, redis' 2>/dev/null; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check 'celery[redis]>=5.4,<6' >&2
fi
exec "$venv/bin/python" "$root/scripts/celery_bench.py" "$@"
