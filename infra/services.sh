#!/usr/bin/env bash
# Make sure PostgreSQL and RabbitMQ are reachable, starting the local ones when installed but down.
# Used by `make demo`, `make test` and .ci/run. Honors AMQP_URL and DATABASE_URL: a remote service is
# only checked, never started.
set -u

db_url=${DATABASE_URL:-postgresql+asyncpg://postgres@127.0.0.1:5432/appointments}
amqp_url=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/}

host_port() { # url default_port -> "host port"
  local rest=${1#*://}; rest=${rest#*@}; rest=${rest%%/*}
  local host=${rest%%:*} port=${rest##*:}
  [ "$port" = "$rest" ] && port=$2
  echo "$host $port"
}
reachable() { timeout 3 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }
is_local() { case "$1" in 127.*|localhost|::1) return 0;; *) return 1;; esac; }

read -r pg_host pg_port < <(host_port "$db_url" 5432)
read -r mq_host mq_port < <(host_port "$amqp_url" 5672)
missing=0

if ! reachable "$pg_host" "$pg_port"; then
  if is_local "$pg_host" && command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    echo "services: starting local PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    for _ in $(seq 1 30); do reachable "$pg_host" "$pg_port" && break; sleep 1; done
  fi
fi
if reachable "$pg_host" "$pg_port"; then echo "services: PostgreSQL reachable at $pg_host:$pg_port"
else echo "services: PostgreSQL NOT reachable at $pg_host:$pg_port"; missing=1; fi

if ! reachable "$mq_host" "$mq_port" || { is_local "$mq_host" && command -v rabbitmq-diagnostics >/dev/null 2>&1 \
     && ! timeout 15 rabbitmq-diagnostics -q check_running >/dev/null 2>&1; }; then
  if is_local "$mq_host" && command -v rabbitmq-server >/dev/null 2>&1; then
    if timeout 10 rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
      echo "services: starting the RabbitMQ application"
      timeout 30 rabbitmqctl -q start_app || true
    else
      echo "services: starting local RabbitMQ"
      timeout 60 rabbitmq-server -detached || true
    fi
    for _ in $(seq 1 60); do
      timeout 5 rabbitmq-diagnostics -q check_running >/dev/null 2>&1 && reachable "$mq_host" "$mq_port" && break
      sleep 2
    done
  fi
fi
if reachable "$mq_host" "$mq_port"; then echo "services: RabbitMQ reachable at $mq_host:$mq_port"
else echo "services: RabbitMQ NOT reachable at $mq_host:$mq_port"; missing=1; fi

# `apptctl status` reads unacknowledged counts and dead letters through the management HTTP API.
# Enabling the plugin persists (enabled_plugins file), so this runs once per RabbitMQ installation.
if [ "$missing" -eq 0 ] && is_local "$mq_host" && command -v rabbitmq-plugins >/dev/null 2>&1; then
  if ! timeout 20 rabbitmq-plugins list -e -m 2>/dev/null | grep -qx rabbitmq_management; then
    echo "services: enabling the RabbitMQ management plugin"
    timeout 60 rabbitmq-plugins enable rabbitmq_management >/dev/null || true
  fi
  for _ in $(seq 1 30); do reachable "$mq_host" 15672 && break; sleep 1; done
  if reachable "$mq_host" 15672; then echo "services: RabbitMQ management API reachable at $mq_host:15672"
  else echo "services: RabbitMQ management API NOT reachable at $mq_host:15672 (apptctl status reports unacked as unknown)"; fi
fi

if [ "$missing" -ne 0 ]; then
  echo "services: start them with 'docker compose up -d postgres rabbitmq' (see README), or set DATABASE_URL / AMQP_URL" >&2
  exit 1
fi
