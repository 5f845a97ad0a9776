#!/bin/sh
# Removes what Skiff's install.sh installed, and everything the agent made on this host: stops the
# units (or processes), runs `skiff-agent uninstall` with the agent's flags (pods' containers and
# shims, mounts, cgroups, eBPF pins and links, nftables tables, routes, the bridge, its data), then
# deletes the control plane's data, the units, the binaries and the configuration.
#
#   skiff-uninstall.sh [--config-dir DIR]   (default: where install.sh wrote it)
set -eu

say() { echo "skiff-uninstall: $*"; }
die() { echo "skiff-uninstall: $*" >&2; exit 1; }

config_dir=/etc/skiff
while [ $# -gt 0 ]; do
    case "$1" in
        --config-dir) [ $# -ge 2 ] || die "--config-dir needs a value"; config_dir=$2; shift ;;
        -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done
[ "$(id -u)" = 0 ] || die "run as root"
[ -f "$config_dir/install.env" ] || die "$config_dir/install.env not found: nothing installed here (or give --config-dir)"
SKIFF_CONTROL_ARGS=
. "$config_dir/install.env"

# The value of a flag (`--flag VALUE` or `--flag=VALUE`) among quoted words, or a default.
flag_value() { # flag, words, default
    want=$1
    default=$3
    eval "set -- $2"
    while [ $# -gt 0 ]; do
        case "$1" in
            "$want="*) echo "${1#*=}"; return ;;
            "$want") if [ $# -ge 2 ]; then echo "$2"; return; fi ;;
        esac
        shift
    done
    echo "$default"
}

stop_plain() { # name
    pidfile=$SKIFF_RUN_DIR/$1.pid
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null && grep -qa "$1" "/proc/$pid/cmdline" 2>/dev/null; then
        say "stopping $1 (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        n=0
        while kill -0 "$pid" 2>/dev/null; do
            n=$((n + 1))
            if [ $n -gt 50 ]; then kill -KILL "$pid" 2>/dev/null || true; fi
            [ $n -gt 100 ] && die "$1 (pid $pid) does not stop"
            sleep 0.2
        done
    fi
    rm -f "$pidfile" "$SKIFF_RUN_DIR/$1.log"
}

if [ "$SKIFF_INIT" = systemd ]; then
    # Units written with --no-start on a host systemd does not run: there is nothing to stop.
    running=
    [ -d /run/systemd/system ] && running=1
    for unit in skiff-agent skiff-control; do
        [ -f "$SKIFF_UNIT_DIR/$unit.service" ] || continue
        if [ -n "$running" ]; then
            say "stopping $unit"
            systemctl disable --now "$unit.service" || true
        fi
        rm -f "$SKIFF_UNIT_DIR/$unit.service"
    done
    [ -z "$running" ] || systemctl daemon-reload || true
else
    stop_plain skiff-agent
    stop_plain skiff-control
fi

set -- --data-dir "$(flag_value --data-dir "$SKIFF_AGENT_ARGS" "$SKIFF_STATE_DIR/agent")"
for f in --bridge --cgroup-root --bpf-dir --netns; do
    v=$(flag_value "$f" "$SKIFF_AGENT_ARGS" "")
    [ -n "$v" ] && set -- "$@" "$f" "$v"
done
say "removing what the agent made: skiff-agent uninstall $*"
"$SKIFF_BIN/skiff-agent" uninstall "$@"

if [ "$SKIFF_MODE" = server ]; then
    control_data=$(flag_value --data-dir "$SKIFF_CONTROL_ARGS" "$SKIFF_STATE_DIR/control")
    say "removing the control plane's data $control_data"
    rm -rf "$control_data"
fi
rmdir "$SKIFF_STATE_DIR" 2>/dev/null || true
rmdir "$SKIFF_RUN_DIR" 2>/dev/null || true
rm -f "$SKIFF_BIN/skiff-agent" "$SKIFF_BIN/skiff-control"
rm -rf "$config_dir"
say "removed; this script goes last"
rm -f "$SKIFF_BIN/skiff-uninstall.sh"
