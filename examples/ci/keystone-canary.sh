#!/bin/sh
# Canary job: start a canary of KEYSTONE_SERVICE's backends labelled KEYSTONE_VERSION,
# then wait for it. Exits with keystone-ctl wait's code, so a rollback fails the job
# (10), and so does a canary left awaiting approval (11) or still running (12).
#
#   KEYSTONE_SERVICE   the tenant (required)
#   KEYSTONE_VERSION   labels.version of the canary backends (required)
#   KEYSTONE_INITIAL_TRAFFIC, KEYSTONE_INCREMENT, KEYSTONE_INTERVAL, KEYSTONE_MAX_TRAFFIC,
#   KEYSTONE_HEALTH_THRESHOLD, KEYSTONE_ROLLBACK_THRESHOLD   optional overrides of the
#                      tenant's canary_config (e.g. 10, 30, 2m, 100, 0.95, 0.9)
#   KEYSTONE_API, KEYSTONE_TOKEN, KEYSTONE_CTL, KEYSTONE_WAIT_TIMEOUT: see keystone-lib.sh
set -eu
. "$(dirname "$0")/keystone-lib.sh"
ks_need KEYSTONE_SERVICE KEYSTONE_VERSION

set -- canary start "$KEYSTONE_SERVICE" --version "$KEYSTONE_VERSION"
for pair in \
    initial-traffic:"${KEYSTONE_INITIAL_TRAFFIC:-}" \
    increment:"${KEYSTONE_INCREMENT:-}" \
    interval:"${KEYSTONE_INTERVAL:-}" \
    max-traffic:"${KEYSTONE_MAX_TRAFFIC:-}" \
    health-threshold:"${KEYSTONE_HEALTH_THRESHOLD:-}" \
    rollback-threshold:"${KEYSTONE_ROLLBACK_THRESHOLD:-}"; do
    if [ -n "${pair#*:}" ]; then
        set -- "$@" "--${pair%%:*}" "${pair#*:}"
    fi
done

ks_run_and_wait "canary of $KEYSTONE_SERVICE $KEYSTONE_VERSION" deployment_id "$@"
