#!/bin/sh
# Starts a node of the Redis Cluster through redis-start.sh, so with the ACL users of
# redis-users.acl, and adds what a cluster node needs besides:
#   sh redis-cluster-start.sh redis-server redis-cluster.conf [options...]
# - the account a replica replicates with: the default user (the administrator, whose
#   password is REDIS_ADMIN_PASSWORD), written to REDIS_AUTH_CONF (default
#   /tmp/redis-masterauth.conf, memory-backed), readable by this user only, and
#   included from the command line, so the password is on no command line;
# - the peers' current addresses in the cluster's own file REDIS_NODES_CONF (default
#   /data/nodes.conf): a pod that is rescheduled gets a new address, and nodes that all
#   restart at once would otherwise look for each other where they no longer are. Each
#   peer's address is looked up again under the hostname it announced.
# REDIS_START_SCRIPT names redis-start.sh (default /usr/local/etc/redis/redis-start.sh).
set -eu

if [ "$#" -eq 0 ]; then
    echo "usage: redis-cluster-start.sh redis-server [options...]" >&2
    exit 2
fi
start_script="${REDIS_START_SCRIPT:-/usr/local/etc/redis/redis-start.sh}"
nodes_conf="${REDIS_NODES_CONF:-/data/nodes.conf}"
auth_conf="${REDIS_AUTH_CONF:-/tmp/redis-masterauth.conf}"

password="${REDIS_ADMIN_PASSWORD:-}"
if [ -z "$password" ]; then
    echo "REDIS_ADMIN_PASSWORD is not set: replicas authenticate to their master with it" >&2
    exit 1
fi
newline='
'
case "$password" in
    *'"'* | *\\* | *"$newline"*)
        echo "REDIS_ADMIN_PASSWORD holds a double quote, a backslash or a line break, which Redis' configuration cannot quote here" >&2
        exit 1 ;;
esac
umask 077
printf 'masteruser default\nmasterauth "%s"\n' "$password" > "$auth_conf"

# Prints a line of nodes.conf with the peer's address looked up again. A peer's line is
#   <id> <ip>:<port>@<bus port>,<hostname>[,<key>=<value>...] <flags> ...
# This node's own line (flag myself) and lines without a hostname stay as they are, and
# so does a peer whose hostname does not resolve (yet): it finds this node itself.
current_address() {
    line=$1
    id=${line%% *}
    rest=${line#* }
    address=${rest%% *}
    rest=${rest#* }
    flags=${rest%% *}
    case "$flags" in
        myself | myself,* | *,myself | *,myself,*) printf '%s\n' "$line"; return ;;
    esac
    case "$address" in
        *:*@*,*) ;;
        *) printf '%s\n' "$line"; return ;;
    esac
    endpoint=${address%%,*}
    extras=${address#*,}
    hostname=${extras%%,*}
    case "$hostname" in
        '' | *=*) printf '%s\n' "$line"; return ;;
    esac
    ip=$(getent hosts "$hostname" | awk 'NR == 1 { print $1 }') || ip=""
    if [ -z "$ip" ]; then
        printf '%s\n' "$line"
        return
    fi
    printf '%s %s:%s,%s %s\n' "$id" "$ip" "${endpoint##*:}" "$extras" "$rest"
}

if [ -s "$nodes_conf" ]; then
    rewritten="$nodes_conf.rewrite"
    : > "$rewritten"
    while IFS= read -r line || [ -n "$line" ]; do
        current_address "$line" >> "$rewritten"
    done < "$nodes_conf"
    mv "$rewritten" "$nodes_conf"
fi

exec sh "$start_script" "$@" --include "$auth_conf"
