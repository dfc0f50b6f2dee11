#!/bin/sh
# Container health check: GET /readyz on the worker's metrics listener (healthy = consuming from
# RabbitMQ with Redis reachable, not draining), with no HTTP client in the image (bash's /dev/tcp). The port comes from GENQ__WORKER__METRICS_ADDR (default 9464).
addr="${GENQ__WORKER__METRICS_ADDR:-0.0.0.0:9464}"
port="${addr##*:}"
exec bash -c '
  exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
  printf "GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n" >&3
  IFS= read -r status <&3
  case "$status" in "HTTP/1."?" 200"*) exit 0 ;; *) exit 1 ;; esac
' healthcheck "$port"
