#!/usr/bin/env bash
# Make sure a RabbitMQ broker answers on 127.0.0.1:5672 (guest/guest).
# Starts the installed broker if none answers; installs it first on a bare Debian machine.
set -euo pipefail

amqp_up() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

if amqp_up; then
  exit 0
fi

if ! command -v rabbitmq-server >/dev/null 2>&1; then
  echo "ensure-rabbitmq: installing rabbitmq-server from Debian's packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq rabbitmq-server >/dev/null
fi

echo "ensure-rabbitmq: starting rabbitmq-server" >&2
rabbitmq-server -detached || true

for _ in $(seq 1 120); do
  if amqp_up && rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
    echo "ensure-rabbitmq: broker is up" >&2
    exit 0
  fi
  sleep 1
done
echo "ensure-rabbitmq: RabbitMQ did not come up on 127.0.0.1:5672 within 120 s" >&2
exit 1
