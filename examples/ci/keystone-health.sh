#!/bin/sh
# Health-check job: poll every URL in KEYSTONE_HEALTH_URLS until each answers 2xx (and,
# if KEYSTONE_HEALTH_EXPECT is set, has it in its body), or fail after
# KEYSTONE_HEALTH_TIMEOUT seconds. Run it against the freshly deployed side before the
# switch; the agent validates that side again before it flips.
#
#   KEYSTONE_HEALTH_URLS      space-separated URLs, e.g. http://green-1:8080/health; default:
#                             http://<address>$KEYSTONE_HEALTH_PATH of each backend of
#                             KEYSTONE_SERVICE in KEYSTONE_TO (default: the idle environment)
#   KEYSTONE_HEALTH_PATH      path for those default URLs (default /health)
#   KEYSTONE_HEALTH_EXPECT    text the body must contain (optional)
#   KEYSTONE_HEALTH_TIMEOUT   seconds (default 120)
#   KEYSTONE_HEALTH_PAUSE     seconds between rounds (default 2)
set -eu
. "$(dirname "$0")/keystone-lib.sh"
if [ -z "${KEYSTONE_HEALTH_URLS:-}" ]; then
    ks_need KEYSTONE_SERVICE
    env=${KEYSTONE_TO:-$(ks_idle_environment)}
    addresses=$(ks_environment_addresses "$env")
    [ -n "$addresses" ] || ks_die "tenant $KEYSTONE_SERVICE has no backend in environment $env"
    KEYSTONE_HEALTH_URLS=$(for a in $addresses; do printf 'http://%s%s ' "$a" "${KEYSTONE_HEALTH_PATH:-/health}"; done)
fi

timeout=${KEYSTONE_HEALTH_TIMEOUT:-120}
pause=${KEYSTONE_HEALTH_PAUSE:-2}
deadline=$(($(date +%s) + timeout))
while :; do
    failing=""
    for url in $KEYSTONE_HEALTH_URLS; do
        if ! body=$(curl -fsS -m 5 "$url" 2>&1); then
            failing="$failing $url ($body)"
        elif [ -n "${KEYSTONE_HEALTH_EXPECT:-}" ]; then
            case $body in
                *"$KEYSTONE_HEALTH_EXPECT"*) ;;
                *) failing="$failing $url (body lacks '$KEYSTONE_HEALTH_EXPECT')" ;;
            esac
        fi
    done
    if [ -z "$failing" ]; then
        ks_log "healthy: $KEYSTONE_HEALTH_URLS"
        exit 0
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
        ks_die "still unhealthy after ${timeout}s:$failing"
    fi
    sleep "$pause"
done
