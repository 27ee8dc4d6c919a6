#!/bin/sh
# The compose broker: Mosquitto, reloaded (SIGHUP) whenever the hub rewrites the ACL
# or the CRL in its broker directory, which is mounted here (the hub cannot signal a
# process in another container). Loud on failure: a missing or unreadable file stops
# the container, so `docker compose ps` and the restart count show it.
set -eu
conf="${ROADSIDE_BROKER_CONF:-/mosquitto/config/mosquitto.conf}"
dir="${ROADSIDE_BROKER_DIR:-/mosquitto/roadside}"
interval="${ROADSIDE_RELOAD_INTERVAL_S:-2}"

# (sh has no pipefail: check the files first, or a missing one would hash as a change)
digest() {
    [ -r "$dir/mosquitto.acl" ] && [ -r "$dir/ca.crl.pem" ] && cat "$dir/mosquitto.acl" "$dir/ca.crl.pem" | sha256sum
}

if ! last="$(digest)"; then
    echo "roadside: cannot read $dir/mosquitto.acl and $dir/ca.crl.pem: run 'roadside pki init' on the hub home" >&2
    exit 1
fi
mosquitto -c "$conf" &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null; wait "$pid"; exit $?' TERM INT
while kill -0 "$pid" 2>/dev/null; do
    sleep "$interval" &
    wait $!
    if ! now="$(digest)"; then
        echo "roadside: ACL or CRL unreadable in $dir: stopping the broker" >&2
        kill -TERM "$pid"
        wait "$pid" || true
        exit 1
    fi
    if [ "$now" != "$last" ]; then
        kill -HUP "$pid"
        echo "roadside: ACL or CRL changed: broker reloaded" >&2
        last="$now"
    fi
done
wait "$pid"
