#!/bin/sh
# Creates the Redis Cluster of the nodes given (host:port, at least six), a replica for
# each master, once every node answers; does nothing when any of them already belongs
# to a cluster, so running it again is harmless.
#   sh redis-cluster-create.sh redis-cluster-0.redis-cluster-nodes:6379 ...
# As the administrator (the default user): REDIS_ADMIN_PASSWORD. REDIS_CLUSTER_WAIT_S
# (default 600) bounds the wait for each node.
set -eu

if [ "$#" -lt 6 ]; then
    echo "usage: redis-cluster-create.sh host:port ... (six nodes or more: three masters, three replicas)" >&2
    exit 2
fi
export REDISCLI_AUTH="${REDIS_ADMIN_PASSWORD:?REDIS_ADMIN_PASSWORD is not set}"
wait_s="${REDIS_CLUSTER_WAIT_S:-600}"

# The value of a field of CLUSTER INFO.
field() {
    printf '%s\n' "$1" | tr -d '\r' | awk -F: -v name="$2" '$1 == name { print $2 }'
}

addresses=""
for node in "$@"; do
    host=${node%:*}
    port=${node##*:}
    waited=0
    until [ "$(redis-cli -h "$host" -p "$port" ping 2>/dev/null)" = PONG ]; do
        if [ "$waited" -ge "$wait_s" ]; then
            echo "redis-cluster-create: $node did not answer within ${wait_s} s" >&2
            exit 1
        fi
        sleep 2
        waited=$((waited + 2))
    done
    info=$(redis-cli -h "$host" -p "$port" cluster info)
    known=$(field "$info" cluster_known_nodes)
    assigned=$(field "$info" cluster_slots_assigned)
    if [ "${known:-1}" -gt 1 ] || [ "${assigned:-0}" -gt 0 ]; then
        echo "redis-cluster-create: $node already belongs to a cluster ($known nodes known, $assigned slots assigned): nothing to do"
        exit 0
    fi
    # CLUSTER MEET takes addresses, not names.
    ip=$(getent hosts "$host" | awk 'NR == 1 { print $1 }')
    if [ -z "$ip" ]; then
        echo "redis-cluster-create: $host does not resolve" >&2
        exit 1
    fi
    addresses="$addresses $ip:$port"
done

echo "redis-cluster-create: creating the cluster of$addresses"
# One word per node.
# shellcheck disable=SC2086
exec redis-cli --cluster create $addresses --cluster-replicas 1 --cluster-yes
