#!/bin/sh
# Health-check job: poll every URL in KEYSTONE_HEALTH_URLS until each answers 2xx (and,
# if KEYSTONE_HEALTH_EXPECT is set, has it in its body), or fail after
# KEYSTONE_HEALTH_TIMEOUT seconds. Run it against the freshly deployed side before the
# switch; the agent validates that side again before it flips.
#
#   KEYSTONE_HEALTH_URLS      space-separated URLs (required), e.g. http://green-1:8080/health
#   KEYSTONE_HEALTH_EXPECT    text the body must contain (optional)
#   KEYSTONE_HEALTH_TIMEOUT   seconds (default 120)
#   KEYSTONE_HEALTH_PAUSE     seconds between rounds (default 2)
set -eu
. "$(dirname "$0")/keystone-lib.sh"
ks_need KEYSTONE_HEALTH_URLS

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
