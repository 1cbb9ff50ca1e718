#!/bin/sh
# Webhook job: start a deployment through the agent's signed webhook
# (POST /webhooks/deployment) with curl and openssl, no admin token needed. With a
# token (KEYSTONE_TOKEN), it then waits like keystone-canary.sh and exits with
# keystone-ctl wait's code (10 on a rollback).
#
# Signing: X-Keystone-Timestamp: <unix seconds>, and
#          X-Keystone-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>
#
#   KEYSTONE_API              admin API base URL (default http://127.0.0.1:9100)
#   KEYSTONE_WEBHOOK_SECRET   the agent's webhook.secret (required; a masked CI secret)
#   KEYSTONE_SERVICE          the tenant (required)
#   KEYSTONE_VERSION          labels.version to roll out (required)
#   KEYSTONE_STRATEGY         canary | blue_green | rolling (default canary)
#   KEYSTONE_ENVIRONMENT      blue_green: the environment to switch to (default, with
#                             KEYSTONE_TOKEN: the idle one, see keystone-idle.sh)
#   KEYSTONE_WEBHOOK_CONFIG   optional JSON object of overrides, e.g. {"interval":"1m"}
#   KEYSTONE_PIPELINE_ID, KEYSTONE_PIPELINE_URL, KEYSTONE_COMMIT   kept with the
#                             deployment (default: GitLab's or GitHub's CI variables)
#   KEYSTONE_WAIT             1 to wait (default 1 when KEYSTONE_TOKEN is set)
set -eu
. "$(dirname "$0")/keystone-lib.sh"
ks_need KEYSTONE_WEBHOOK_SECRET KEYSTONE_SERVICE KEYSTONE_VERSION
command -v openssl >/dev/null || ks_die "openssl is needed to sign the request"
command -v curl >/dev/null || ks_die "curl is needed to send the request"

api=${KEYSTONE_API:-http://127.0.0.1:9100}
pipeline_id=${KEYSTONE_PIPELINE_ID:-${CI_PIPELINE_ID:-${GITHUB_RUN_ID:-}}}
pipeline_url=${KEYSTONE_PIPELINE_URL:-${CI_PIPELINE_URL:-}}
if [ -z "$pipeline_url" ] && [ -n "${GITHUB_RUN_ID:-}" ]; then
    pipeline_url="${GITHUB_SERVER_URL:-https://github.com}/${GITHUB_REPOSITORY:-}/actions/runs/$GITHUB_RUN_ID"
fi
commit=${KEYSTONE_COMMIT:-${CI_COMMIT_SHA:-${GITHUB_SHA:-}}}

if [ "${KEYSTONE_STRATEGY:-canary}" = blue_green ] && [ -z "${KEYSTONE_ENVIRONMENT:-}" ]; then
    [ -n "${KEYSTONE_TOKEN:-}" ] || ks_die "blue_green: set KEYSTONE_ENVIRONMENT, or KEYSTONE_TOKEN to look up the idle one"
    KEYSTONE_ENVIRONMENT=$(ks_idle_environment)
fi

body="{\"service\":$(ks_json_string "$KEYSTONE_SERVICE"),\"version\":$(ks_json_string "$KEYSTONE_VERSION"),\"strategy\":$(ks_json_string "${KEYSTONE_STRATEGY:-canary}")"
if [ -n "${KEYSTONE_ENVIRONMENT:-}" ]; then
    body="$body,\"environment\":$(ks_json_string "$KEYSTONE_ENVIRONMENT")"
fi
body="$body,\"pipeline\":{\"id\":$(ks_json_string "$pipeline_id"),\"url\":$(ks_json_string "$pipeline_url"),\"commit\":$(ks_json_string "$commit")}"
if [ -n "${KEYSTONE_WEBHOOK_CONFIG:-}" ]; then
    body="$body,\"config\":$KEYSTONE_WEBHOOK_CONFIG"
fi
body="$body}"

ts=$(date +%s)
sig=$(printf '%s.%s' "$ts" "$body" |
    openssl dgst -sha256 -hmac "$KEYSTONE_WEBHOOK_SECRET" | sed 's/^.*= *//')
answer_file=$(mktemp)
trap 'rm -f "$answer_file"' EXIT
status=$(curl -sS -m 30 -o "$answer_file" -w '%{http_code}' -X POST \
    -H 'Content-Type: application/json' \
    -H "X-Keystone-Timestamp: $ts" \
    -H "X-Keystone-Signature: sha256=$sig" \
    --data-binary "$body" "$api/webhooks/deployment") || ks_die "cannot reach $api"
answer=$(cat "$answer_file")
[ "$status" = 202 ] || ks_die "the webhook answered HTTP $status: $answer"
id=$(printf '%s\n' "$answer" | ks_json_field deployment_id)
[ -n "$id" ] || ks_die "no deployment_id in the webhook's answer: $answer"
ks_log "webhook accepted: deployment $id"
printf '%s\n' "$id"

wait=${KEYSTONE_WAIT:-}
if [ -z "$wait" ]; then
    if [ -n "${KEYSTONE_TOKEN:-}" ]; then wait=1; else wait=0; fi
fi
if [ "$wait" = 1 ]; then
    ks_wait "$id"
fi
