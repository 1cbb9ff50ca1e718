# Shared by the keystone-*.sh scripts (POSIX sh; sourced, not run).
#
# Environment, read by keystone-ctl itself:
#   KEYSTONE_API     admin API base URL (default http://127.0.0.1:9100)
#   KEYSTONE_TOKEN   admin bearer token (a masked CI secret)
# and by these scripts:
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
