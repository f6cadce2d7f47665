#!/bin/sh
# Readiness of a node of the Redis Cluster: the cluster serves every slot and, on a
# replica, the link to its master is up, so its copy is in sync. A rolling update waits
# for it before it restarts the next node, and the PodDisruptionBudget counts it.
# As the administrator (the default user): REDIS_ADMIN_PASSWORD.
set -eu

export REDISCLI_AUTH="${REDIS_ADMIN_PASSWORD:?REDIS_ADMIN_PASSWORD is not set}"
port="${REDIS_PORT:-6379}"

cluster=$(redis-cli -p "$port" cluster info)
case "$cluster" in
    *cluster_state:ok*) ;;
    *) exit 1 ;;
esac
replication=$(redis-cli -p "$port" info replication)
case "$replication" in
    *role:master*) exit 0 ;;
    *master_link_status:up*) exit 0 ;;
esac
exit 1
