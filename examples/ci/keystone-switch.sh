#!/bin/sh
# Blue/green switch job: move KEYSTONE_SERVICE's traffic to environment KEYSTONE_TO
# (the agent validates that side first), then wait. Exits with keystone-ctl wait's
# code: 0 switched, 10 validation failed or rolled back.
#
#   KEYSTONE_SERVICE           the tenant (required)
#   KEYSTONE_TO                environment to switch to (default: the idle one, see
#                              keystone-idle.sh; set it from that step to pin it per pipeline)
#   KEYSTONE_FROM              environment taking traffic now (default: the agent knows)
#   KEYSTONE_SWITCH_STRATEGY   instant | gradual (default: the tenant's switch_config)
#   KEYSTONE_API, KEYSTONE_TOKEN, KEYSTONE_CTL, KEYSTONE_WAIT_TIMEOUT: see keystone-lib.sh
set -eu
. "$(dirname "$0")/keystone-lib.sh"
ks_need KEYSTONE_SERVICE
KEYSTONE_TO=${KEYSTONE_TO:-$(ks_idle_environment)}

set -- switch "$KEYSTONE_SERVICE" --to "$KEYSTONE_TO"
if [ -n "${KEYSTONE_FROM:-}" ]; then
    set -- "$@" --from "$KEYSTONE_FROM"
fi
if [ -n "${KEYSTONE_SWITCH_STRATEGY:-}" ]; then
    set -- "$@" --strategy "$KEYSTONE_SWITCH_STRATEGY"
fi

ks_run_and_wait "switch of $KEYSTONE_SERVICE to $KEYSTONE_TO" deployment_id "$@"
