#!/bin/sh
# Starts Redis with the ACL users of redis-users.acl (beside this file), their
# passwords taken from the environment, then runs the command it is given:
#   sh redis-start.sh redis-server /usr/local/etc/redis/redis.conf
# It writes the ACL file Redis reads to REDIS_ACL_FILE (default /tmp/redis-users.acl,
# a tmpfs or emptyDir), readable by this user only, with each #${NAME} of the template
# replaced by the SHA-256 of the variable NAME: the file holds no password.
set -eu

if [ "$#" -eq 0 ]; then
    echo "usage: redis-start.sh redis-server [options...]" >&2
    exit 2
fi
template="$(dirname "$0")/redis-users.acl"
acl_file="${REDIS_ACL_FILE:-/tmp/redis-users.acl}"

# The placeholder's opening, literally.
# shellcheck disable=SC2016
open='#${'

umask 077
: > "$acl_file"
while IFS= read -r line || [ -n "$line" ]; do
    case "$line" in
        '' | '#'*) continue ;;
    esac
    while :; do
        case "$line" in
            *"$open"*'}'*) ;;
            *) break ;;
        esac
        before="${line%%"$open"*}"
        rest="${line#*"$open"}"
        name="${rest%%'}'*}"
        after="${rest#*'}'}"
        case "$name" in
            '' | *[!A-Z0-9_]*)
                echo "redis-users.acl: #\${$name} does not name a variable" >&2
                exit 1 ;;
        esac
        eval "value=\${$name:-}"
        if [ -z "$value" ]; then
            echo "$name is not set: it holds a Redis user's password (redis-users.acl)" >&2
            exit 1
        fi
        # printf is the shell's own: the password is on no command line.
        digest="$(printf '%s' "$value" | sha256sum | cut -d' ' -f1)"
        line="$before#$digest$after"
    done
    printf '%s\n' "$line" >> "$acl_file"
done < "$template"

exec "$@" --aclfile "$acl_file"
