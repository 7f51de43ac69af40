#!/usr/bin/env bash
# A local three-node RabbitMQ cluster for the cluster fault test (docs/scaling.md): the machine's
# rabbitmq-server, run as three extra nodes with their own names, ports, Erlang cookie and data under
# build/cluster/. It never touches the machine's own node (rabbit@localhost, 5672/25672) or its data.
#
#   infra/cluster.sh start           start the three nodes and join them into one cluster
#   infra/cluster.sh stop            stop every node and remove build/cluster/ (data, logs, cookie)
#   infra/cluster.sh status          each node: running or not, and the cluster's members
#   infra/cluster.sh urls            AMQP_URL for the cluster (the three nodes, comma-separated)
#   infra/cluster.sh kill N          kill -9 node N (1-3), as a crash
#   infra/cluster.sh stop-node N     stop node N gracefully
#   infra/cluster.sh start-node N    start node N again (it rejoins the cluster with its data)
#   infra/cluster.sh leaders PREFIX  "queue<TAB>leader node number" for the quorum queues named PREFIX*
#
# APPT_CLUSTER_DIR (default build/cluster) and APPT_CLUSTER_PORT (default 5681: AMQP on 5681-5683,
# distribution on 25681-25683) move it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${APPT_CLUSTER_DIR:-$ROOT/build/cluster}"
PORT="${APPT_CLUSTER_PORT:-5681}"
SBIN="${RABBITMQ_SBIN:-/usr/lib/rabbitmq/bin}"
NODES=(1 2 3)

node_name() { echo "appt-cluster-$1@localhost"; }
amqp_port() { echo $((PORT + $1 - 1)); }

require() {
    if [ ! -x "$SBIN/rabbitmq-server" ]; then
        echo "rabbitmq-server not found in $SBIN: install RabbitMQ (apt-get install rabbitmq-server)" \
            "or set RABBITMQ_SBIN" >&2
        exit 2
    fi
}

# The environment every command for node N runs in: its own files everywhere, so nothing reads or
# writes the machine's node's configuration, cookie (HOME) or data.
node_env() {
    local n=$1 home="$DIR/node$1"
    export HOME="$DIR/home"
    export RABBITMQ_NODENAME
    RABBITMQ_NODENAME="$(node_name "$n")"
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT
    RABBITMQ_NODE_PORT="$(amqp_port "$n")"
    export RABBITMQ_DIST_PORT=$((RABBITMQ_NODE_PORT + 20000))
    export RABBITMQ_CONF_ENV_FILE="$DIR/rabbitmq-env.conf"
    export RABBITMQ_CONFIG_FILE="$home/rabbitmq.conf"
    export RABBITMQ_ADVANCED_CONFIG_FILE="$home/advanced.config"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$DIR/enabled_plugins"
    export RABBITMQ_MNESIA_BASE="$home/mnesia"
    export RABBITMQ_LOG_BASE="$home/log"
    export RABBITMQ_PID_FILE="$home/pid"
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
}

ctl() { # ctl N args...: rabbitmqctl against node N, with the cluster's cookie
    local n=$1
    shift
    (node_env "$n" && "$SBIN/rabbitmqctl" -n "$(node_name "$n")" "$@")
}

prepare() {
    mkdir -p "$DIR/home"
    if [ ! -f "$DIR/home/.erlang.cookie" ]; then
        # A cookie of its own: the cluster's nodes trust each other, and nothing else on the machine.
        umask 077
        head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DIR/home/.erlang.cookie"
        chmod 400 "$DIR/home/.erlang.cookie"
        umask 022
    fi
    : >"$DIR/rabbitmq-env.conf"
    echo "[]." >"$DIR/enabled_plugins"
    for n in "${NODES[@]}"; do
        mkdir -p "$DIR/node$n/log"
        cat >"$DIR/node$n/rabbitmq.conf" <<EOF
listeners.tcp.1 = 127.0.0.1:$(amqp_port "$n")
loopback_users = none
cluster_name = appt-cluster
EOF
    done
}

running() { # running N: the node answers
    ctl "$1" -q ping >/dev/null 2>&1
}

start_node() {
    local n=$1
    if running "$n"; then
        return 0
    fi
    (node_env "$n" && exec setsid "$SBIN/rabbitmq-server" </dev/null >>"$DIR/node$n/log/console.log" 2>&1) &
    # await_startup waits until the node has booted (it rejoins its cluster first when it has data)
    local deadline=$((SECONDS + 120))
    until ctl "$n" -q --timeout 10 await_startup >/dev/null 2>&1; do
        if ((SECONDS > deadline)); then
            echo "node $n ($(node_name "$n")) did not start: see $DIR/node$n/log/" >&2
            return 1
        fi
        sleep 1
    done
}

stop_node() {
    local n=$1 pid
    pid="$(cat "$DIR/node$n/pid" 2>/dev/null || true)"
    if running "$n"; then
        ctl "$n" -q stop >/dev/null 2>&1 || true
    fi
    for _ in $(seq 60); do
        if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
            return 0
        fi
        sleep 0.5
    done
    kill -9 "$pid" 2>/dev/null || true
}

kill_node() {
    local n=$1 pid
    pid="$(cat "$DIR/node$n/pid" 2>/dev/null || true)"
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
        echo "node $n is not running" >&2
        return 1
    fi
    kill -9 "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
}

cmd_start() {
    require
    prepare
    for n in "${NODES[@]}"; do
        start_node "$n"
    done
    local first
    first="$(node_name 1)"
    for n in "${NODES[@]:1}"; do
        if ctl 1 -q cluster_status --formatter json 2>/dev/null | grep -q "\"$(node_name "$n")\""; then
            continue # joined before (a restart of the script over existing data)
        fi
        ctl "$n" -q stop_app 2>>"$DIR/cluster.log"
        ctl "$n" -q reset 2>>"$DIR/cluster.log"
        ctl "$n" -q join_cluster "$first" 2>>"$DIR/cluster.log"
        ctl "$n" -q start_app 2>>"$DIR/cluster.log"
    done
    cmd_status
}

cmd_stop() {
    for n in "${NODES[@]}"; do
        [ -d "$DIR/node$n" ] && stop_node "$n"
    done
    rm -rf "$DIR"
    echo "cluster stopped, $DIR removed"
}

cmd_status() {
    for n in "${NODES[@]}"; do
        if running "$n"; then
            echo "node $n $(node_name "$n") amqp://127.0.0.1:$(amqp_port "$n")/ running"
        else
            echo "node $n $(node_name "$n") amqp://127.0.0.1:$(amqp_port "$n")/ down"
        fi
    done
    for n in "${NODES[@]}"; do
        if running "$n"; then
            echo "running members: $(ctl "$n" -q eval 'rabbit_nodes:all_running().' | tr -d '\n')"
            return 0
        fi
    done
    return 1
}

cmd_urls() {
    local urls=()
    for n in "${NODES[@]}"; do
        urls+=("amqp://guest:guest@127.0.0.1:$(amqp_port "$n")/")
    done
    (IFS=,; echo "${urls[*]}")
}

cmd_leaders() { # quorum queues named PREFIX*, with the number of the node leading each
    local prefix=$1 n
    for n in "${NODES[@]}"; do
        if running "$n"; then
            ctl "$n" -q list_queues name type leader --no-table-headers |
                awk -v p="$prefix" -F'\t' '$1 ~ "^"p && $2 == "quorum" {
                    sub(/^appt-cluster-/, "", $3); sub(/@.*/, "", $3); print $1 "\t" $3 }'
            return 0
        fi
    done
    echo "no node is running" >&2
    return 1
}

check_n() {
    case "${1:-}" in 1 | 2 | 3) ;; *) echo "give a node number, 1 to 3" >&2 && exit 2 ;; esac
}

case "${1:-}" in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
urls) cmd_urls ;;
kill) check_n "${2:-}" && kill_node "$2" ;;
stop-node) check_n "${2:-}" && stop_node "$2" ;;
start-node) check_n "${2:-}" && require && start_node "$2" ;;
leaders) cmd_leaders "${2:?give a queue name prefix}" ;;
*)
    echo "usage: infra/cluster.sh start|stop|status|urls|kill N|stop-node N|start-node N|leaders PREFIX" >&2
    exit 2
    ;;
esac
