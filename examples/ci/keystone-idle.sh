#!/bin/sh
# Idle-side step: prints KEYSTONE_TO=<env>, the environment of KEYSTONE_SERVICE that takes
# no traffic now (from `keystone-ctl tenants -o json`), in the format of GitLab's dotenv
# reports and GitHub's $GITHUB_OUTPUT, so the deploy, health-check and switch jobs of one
# pipeline agree on it: blue→green on one release, green→blue on the next.
#
#   KEYSTONE_SERVICE   the tenant (required)
#   KEYSTONE_API, KEYSTONE_TOKEN, KEYSTONE_CTL: see keystone-lib.sh; needs jq
set -eu
. "$(dirname "$0")/keystone-lib.sh"
ks_need KEYSTONE_SERVICE

to=$(ks_idle_environment)
ks_log "$KEYSTONE_SERVICE's idle environment: $to"
printf 'KEYSTONE_TO=%s\n' "$to"
