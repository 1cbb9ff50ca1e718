#!/bin/sh
# Approval step: promote KEYSTONE_SERVICE's canary that waits at max_traffic
# (keystone-canary.sh exited 11) to 100 %, then wait for it. Exits with keystone-ctl
# wait's code (0 promoted). Run it as a manual / approval job.
#
#   KEYSTONE_SERVICE   the tenant (required)
#   KEYSTONE_API, KEYSTONE_TOKEN, KEYSTONE_CTL, KEYSTONE_WAIT_TIMEOUT: see keystone-lib.sh
set -eu
. "$(dirname "$0")/keystone-lib.sh"
ks_need KEYSTONE_SERVICE

ks_run_and_wait "promotion of $KEYSTONE_SERVICE's canary" id \
    canary promote --tenant "$KEYSTONE_SERVICE"
