# Shared by the keystone-*.sh scripts (POSIX sh; sourced, not run).
#
# Environment, read by keystone-ctl itself:
#   KEYSTONE_API     admin API base URL (default http://127.0.0.1:9100)
#   KEYSTONE_TOKEN   admin bearer token (a masked CI secret)
# and by these scripts:
#   KEYSTONE_SERVICE       the tenant
#   KEYSTONE_CTL           the keystone-ctl binary (default: keystone-ctl on PATH)
#   KEYSTONE_WAIT_TIMEOUT  how long `keystone-ctl wait` may take (default 30m)

KEYSTONE_CTL=${KEYSTONE_CTL:-keystone-ctl}
KEYSTONE_WAIT_TIMEOUT=${KEYSTONE_WAIT_TIMEOUT:-30m}

ks_log() {
    printf '%s: %s\n' "${0##*/}" "$*" >&2
}

ks_die() {
    ks_log "$*"
    exit 1
}

# ks_need VAR...: fail with a clear message unless every VAR is set and not empty.
ks_need() {
    for ks_var in "$@"; do
        eval "ks_val=\${$ks_var:-}"
        [ -n "$ks_val" ] || ks_die "set $ks_var (see examples/ci/README.md)"
    done
}

# ks_json_field NAME: the first "NAME": "value" string in the JSON on stdin.
ks_json_field() {
    sed -n "s/.*\"$1\": *\"\\([^\"]*\\)\".*/\\1/p" | head -n 1
}

# ks_json_string TEXT: TEXT as a JSON string literal (quotes, backslashes,
# tabs and newlines escaped; carriage returns dropped).
ks_json_string() {
    printf '%s' "$1" | tr -d '\r' |
        sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/	/\\t/g' |
        awk 'BEGIN { ORS = ""; print "\"" } NR > 1 { print "\\n" } { print } END { print "\"" }'
}

# ks_tenant_jq FILTER [jq args...]: FILTER over `keystone-ctl -o json tenants`, with
# $t bound to KEYSTONE_SERVICE and $tenant to its object (needs jq).
ks_tenant_jq() {
    command -v jq >/dev/null || ks_die "jq is needed to read keystone-ctl's JSON (apt-get install jq)"
    ks_filter=$1
    shift
    ks_json=$("$KEYSTONE_CTL" -o json tenants) || ks_die "keystone-ctl tenants failed: $ks_json"
    printf '%s\n' "$ks_json" | jq -r --arg t "$KEYSTONE_SERVICE" "$@" \
        "[.tenants[] | select(.name == \$t)] as \$found
         | if \$found == [] then error(\"keystone-ctl tenants lists no tenant '\" + \$t + \"'\") else \$found[0] end
         | . as \$tenant | $ks_filter"
}

# ks_idle_environment: the one environment of KEYSTONE_SERVICE whose backends take no
# new connections now (0 % of the traffic): where the next release goes. Fails, naming
# each environment's share, unless exactly one is idle (e.g. while a switch runs).
ks_idle_environment() {
    ks_need KEYSTONE_SERVICE
    ks_envs=$(ks_tenant_jq '[.backends[] | select(.environment != null)] | group_by(.environment)
        | map("\(.[0].environment) \(map(.traffic_percent) | add)") | .[]') || exit 1
    ks_idle=$(printf '%s\n' "$ks_envs" | awk '$2 == 0 { print $1 }')
    case $ks_idle in
        "" | *"
"*)
            ks_die "tenant $KEYSTONE_SERVICE needs exactly one environment without traffic to release to;" \
                "its environments: $(printf '%s\n' "$ks_envs" | awk '{ printf "%s%s %s%%", s, $1, $2; s = ", " }')" \
                "(set KEYSTONE_TO to choose)" ;;
    esac
    printf '%s\n' "$ks_idle"
}

# ks_environment_addresses ENV: the address:port of each backend of KEYSTONE_SERVICE in ENV.
ks_environment_addresses() {
    ks_tenant_jq '.backends[] | select(.environment == $e) | .address' --arg e "$1"
}

# ks_run_and_wait WHAT FIELD ARGS...: `keystone-ctl -o json ARGS...` (WHAT says what it
# does, for the log), then ks_wait for the deployment whose id is FIELD in its answer.
ks_run_and_wait() {
    ks_what=$1
    ks_field=$2
    shift 2
    ks_out=$("$KEYSTONE_CTL" -o json "$@") || {
        ks_code=$?
        ks_die "keystone-ctl $* refused (exit $ks_code): $ks_out"
    }
    ks_id=$(printf '%s\n' "$ks_out" | ks_json_field "$ks_field")
    [ -n "$ks_id" ] || ks_die "no $ks_field in keystone-ctl's answer: $ks_out"
    ks_log "$ks_what: deployment $ks_id"
    ks_wait "$ks_id"
}

# ks_wait ID: follow deployment ID until it ends, printing its progress, and return
# keystone-ctl wait's exit code: 0 completed, 10 rolled back / aborted / failed,
# 11 paused or awaiting approval, 12 timed out (3 agent unreachable, 4 bad token).
ks_wait() {
    ks_code=0
    "$KEYSTONE_CTL" wait "$1" --timeout "$KEYSTONE_WAIT_TIMEOUT" || ks_code=$?
    case $ks_code in
        0) ks_log "deployment $1 completed" ;;
        10) ks_log "deployment $1 was rolled back, aborted or failed; failing the job" ;;
        11) ks_log "deployment $1 is waiting for approval: keystone-ctl canary promote $1 (or abort it)" ;;
        12) ks_log "deployment $1 was still running after $KEYSTONE_WAIT_TIMEOUT" ;;
        *) ks_log "keystone-ctl wait failed (exit $ks_code)" ;;
    esac
    return "$ks_code"
}
