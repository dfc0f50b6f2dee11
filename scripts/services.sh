#!/usr/bin/env bash
# Start RabbitMQ and Redis on loopback if they are not already running, installing them from the
# OS packages (Debian/Ubuntu apt) when absent. Idempotent.
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

apt_install() {
  if ! command -v apt-get >/dev/null; then
    echo "cannot install $*: no apt-get; install it with your package manager" >&2
    exit 1
  fi
  if [[ -z "${GENQ_APT_UPDATED:-}" ]]; then
    apt-get update -qq
    export GENQ_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

wait_port() {
  local port=$1 name=$2 tries=${3:-120}
  for _ in $(seq "$tries"); do
    port_open "$port" && return 0
    sleep 1
  done
  echo "$name did not open port $port" >&2
  exit 1
}

if ! port_open 6379; then
  command -v redis-server >/dev/null || apt_install redis-server
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  wait_port 6379 redis 30
  echo "started redis"
fi

if ! port_open 5672; then
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
  rabbitmq-server -detached
  wait_port 5672 rabbitmq 180
  echo "started rabbitmq"
fi

# Tools the tests drive: openssl makes test certificates, socat puts TLS in front of RabbitMQ.
command -v openssl >/dev/null || apt_install openssl
command -v socat >/dev/null || apt_install socat

# The management API lets `genq status` show unacked counts (it falls back to AMQP without it).
if command -v rabbitmq-plugins >/dev/null && ! curl -fsS -o /dev/null -u guest:guest http://127.0.0.1:15672/api/overview 2>/dev/null; then
  timeout 120 rabbitmq-plugins enable rabbitmq_management >/dev/null 2>&1 || echo "could not enable rabbitmq_management; genq status will read queue depths over AMQP" >&2
fi
