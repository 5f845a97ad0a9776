#!/bin/sh
# Installs Skiff on a Linux host, as k3s's installer does: the binaries, their configuration and
# their systemd units (or, on a host without systemd, processes with pid files), then starts them.
#
#   install.sh [--server]                       control plane and an agent on this host
#   install.sh --server --join URL --token T    one more control-plane member (HA), joining the
#                                               member at URL with its server token, and an agent
#   install.sh --agent --url URL --token TOKEN  an agent joining the control plane at URL
#
# Options:
#   --bin-dir DIR        where skiff-control and skiff-agent are taken from (default: this
#                        script's directory if they are there, else ../target/release)
#   --url URL            with --server: where this host's agent reaches the API (default
#                        https://127.0.0.1:6443)
#   --node-name NAME     the agent's node name (default: the host name)
#   --control-arg ARG    one more flag for skiff-control (repeat for each word)
#   --agent-arg ARG      one more flag for skiff-agent (repeat for each word)
#   --init systemd|none  systemd units (the default where systemd runs) or plain processes
#   --prefix DIR         binaries go into DIR/bin (default /usr/local)
#   --config-dir DIR     configuration and admin.kubeconfig (default /etc/skiff)
#   --state-dir DIR      data directories (default /var/lib/skiff)
#   --run-dir DIR        pid files and logs without systemd (default /run/skiff)
#   --unit-dir DIR       systemd units (default /etc/systemd/system)
#   --skip-preflight     install even where `skiff-agent preflight` reports a failure
#   --no-start           with --init systemd: install the binaries, configuration and units but
#                        start nothing (an image prepared before its first boot, or units started
#                        later with `systemctl enable --now skiff-control skiff-agent`)
#
# `PREFIX/bin/skiff-uninstall.sh` (installed beside the binaries) removes everything again.
set -eu

say() { echo "skiff-install: $*"; }
die() { echo "skiff-install: $*" >&2; exit 1; }

mode=server
url=
token=
join=
bin_dir=
node_name=
control_args=
agent_args=
init=
prefix=/usr/local
config_dir=/etc/skiff
state_dir=/var/lib/skiff
run_dir=/run/skiff
unit_dir=/etc/systemd/system
skip_preflight=
no_start=

# Appends one word, shell-quoted, to the list named $1.
append() {
    quoted=$(printf '%s' "$2" | sed "s/'/'\\\\''/g")
    eval "$1=\"\$$1 '$quoted'\""
}

need_value() { [ $# -ge 2 ] || die "$1 needs a value"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --server) mode=server ;;
        --agent) mode=agent ;;
        --join) need_value "$@"; join=$2; shift ;;
        --url) need_value "$@"; url=$2; shift ;;
        --token) need_value "$@"; token=$2; shift ;;
        --bin-dir) need_value "$@"; bin_dir=$2; shift ;;
        --node-name) need_value "$@"; node_name=$2; shift ;;
        --control-arg) need_value "$@"; append control_args "$2"; shift ;;
        --agent-arg) need_value "$@"; append agent_args "$2"; shift ;;
        --init) need_value "$@"; init=$2; shift ;;
        --prefix) need_value "$@"; prefix=$2; shift ;;
        --config-dir) need_value "$@"; config_dir=$2; shift ;;
        --state-dir) need_value "$@"; state_dir=$2; shift ;;
        --run-dir) need_value "$@"; run_dir=$2; shift ;;
        --unit-dir) need_value "$@"; unit_dir=$2; shift ;;
        --skip-preflight) skip_preflight=1 ;;
        --no-start) no_start=1 ;;
        -h|--help) sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done

[ "$(id -u)" = 0 ] || die "run as root (the agent runs pods, cgroups, netlink and eBPF)"
[ "$(uname -s)" = Linux ] || die "Skiff runs on Linux only"
if [ "$mode" = agent ]; then
    [ -n "$url" ] || die "--agent needs --url (the control plane's API URL)"
    [ -n "$token" ] || die "--agent needs --token (the control plane's DATA_DIR/node-token)"
    [ -z "$join" ] || die "--join adds a control-plane member: use it with --server"
fi
if [ -n "$join" ]; then
    [ -n "$token" ] || die "--join needs --token (the first member's DATA_DIR/server-token)"
fi
if [ -z "$init" ]; then
    if [ -d /run/systemd/system ]; then init=systemd; else init=none; fi
fi
case "$init" in systemd|none) ;; *) die "--init must be systemd or none" ;; esac
if [ -n "$no_start" ] && [ "$init" != systemd ]; then
    die "--no-start needs --init systemd (without systemd, this script is what starts the processes)"
fi
if [ "$init" = systemd ] && [ -z "$no_start" ] && [ ! -d /run/systemd/system ]; then
    die "--init systemd: systemd does not run on this host (use --init none, or --no-start to only write the units)"
fi

here=$(cd "$(dirname "$0")" && pwd)
if [ -z "$bin_dir" ]; then
    if [ -x "$here/skiff-agent" ]; then bin_dir=$here; else bin_dir=$here/../target/release; fi
fi
for b in skiff-agent skiff-control; do
    [ "$mode" = agent ] && [ "$b" = skiff-control ] && continue
    [ -x "$bin_dir/$b" ] || die "$bin_dir/$b not found (build with \`cargo xtask build\`, or give --bin-dir)"
done

bin=$prefix/bin
control_data=$state_dir/control
agent_data=$state_dir/agent

if [ -n "$no_start" ]; then
    say "no pre-flight checks: nothing starts here (--no-start); \`skiff-agent preflight\` runs them where it starts"
elif say "pre-flight checks" && ! "$bin_dir/skiff-agent" preflight; then
    [ -n "$skip_preflight" ] || die "a pre-flight check failed (above); fix it, or pass --skip-preflight"
    say "continuing despite the failed check (--skip-preflight)"
fi

say "installing the binaries into $bin"
mkdir -p "$bin" "$config_dir"
chmod 0700 "$config_dir"
for b in skiff-agent skiff-control; do
    [ "$mode" = agent ] && [ "$b" = skiff-control ] && continue
    # Beside the running one, then renamed over it: a running agent keeps its binary.
    cp "$bin_dir/$b" "$bin/.$b.new"
    chmod 0755 "$bin/.$b.new"
    mv -f "$bin/.$b.new" "$bin/$b"
done
# The uninstaller, told where this installation's configuration is.
sed "s|^config_dir=/etc/skiff\$|config_dir='$config_dir'|" "$here/uninstall.sh" > "$bin/skiff-uninstall.sh"
chmod 0755 "$bin/skiff-uninstall.sh"

# The agent's own flags: those the uninstaller needs to find what the agent made are read back
# from this file, so they are written once, here.
agent_flags=
append agent_flags --data-dir
append agent_flags "$agent_data"
[ -n "$node_name" ] && append agent_flags --node-name && append agent_flags "$node_name"
if [ "$mode" = server ]; then
    control_flags=
    append control_flags --data-dir
    append control_flags "$control_data"
    if [ -n "$join" ]; then
        printf '%s\n' "$token" > "$config_dir/server-token"
        chmod 0600 "$config_dir/server-token"
        append control_flags --join
        append control_flags "$join"
        append control_flags --token-file
        append control_flags "$config_dir/server-token"
    fi
    control_flags="$control_flags$control_args"
    append agent_flags --token-file
    append agent_flags "$control_data/node-token"
    [ -n "$url" ] && append agent_flags --server && append agent_flags "$url"
else
    append agent_flags --server
    append agent_flags "$url"
    printf '%s\n' "$token" > "$config_dir/node-token"
    chmod 0600 "$config_dir/node-token"
    append agent_flags --token-file
    append agent_flags "$config_dir/node-token"
fi
agent_flags="$agent_flags$agent_args"

{
    echo "# Written by Skiff's install.sh; read by skiff-uninstall.sh and the units."
    echo "SKIFF_MODE=$mode"
    echo "SKIFF_INIT=$init"
    echo "SKIFF_BIN=$bin"
    echo "SKIFF_CONFIG_DIR=$config_dir"
    echo "SKIFF_STATE_DIR=$state_dir"
    echo "SKIFF_RUN_DIR=$run_dir"
    echo "SKIFF_UNIT_DIR=$unit_dir"
    echo "SKIFF_AGENT_ARGS=\"$(printf '%s' "$agent_flags" | sed 's/["\\$`]/\\&/g')\""
    [ "$mode" = server ] && echo "SKIFF_CONTROL_ARGS=\"$(printf '%s' "$control_flags" | sed 's/["\\$`]/\\&/g')\""
} > "$config_dir/install.env"
chmod 0600 "$config_dir/install.env"

# One unit per process; `sh -c` reads the quoted flags back from install.env.
write_unit() { # name, description, after
    cat > "$unit_dir/$1.service" <<EOF
[Unit]
Description=$2
Wants=network-online.target
After=network-online.target $3

[Service]
Type=simple
EnvironmentFile=$config_dir/install.env
ExecStart=/bin/sh -c 'eval exec $bin/$1 \$\$$4'
# The agent's pods run under their own shims: stopping the agent leaves them running.
KillMode=process
Delegate=yes
LimitNOFILE=1048576
TasksMax=infinity
Restart=always
RestartSec=2
# skiff-control exits 3 once removed from the cluster: it stays stopped.
RestartPreventExitStatus=3

[Install]
WantedBy=multi-user.target
EOF
}

start_plain() { # name, variable with its flags
    name=$1
    mkdir -p "$run_dir"
    eval "flags=\$$2"
    eval "set -- $flags"
    # Its own session (setsid), so it outlives this script; output to a log beside the pid file.
    setsid "$bin/$name" "$@" >> "$run_dir/$name.log" 2>&1 < /dev/null &
    echo $! > "$run_dir/$name.pid"
}

wait_for() { # file, what, seconds
    n=0
    while [ ! -s "$1" ]; do
        n=$((n + 1))
        [ $n -le $(($3 * 5)) ] || die "$2 did not appear within $3 s (see the log: $4)"
        sleep 0.2
    done
}

# Until the API server answers /readyz, at the address its admin kubeconfig names.
wait_api() { # log
    server=$(sed -n 's/^ *server: *//p' "$control_data/admin.kubeconfig" | head -n 1)
    n=0
    until curl -ksf --max-time 2 "$server/readyz" > /dev/null 2>&1; do
        n=$((n + 1))
        [ $n -le 300 ] || die "the API server at $server did not get ready within 60 s (see the log: $1)"
        sleep 0.2
    done
}

if [ "$mode" = server ] && [ -z "$no_start" ] && ! command -v curl > /dev/null; then
    die "curl is needed to wait for the API server (apt-get install curl)"
fi

if [ "$init" = systemd ]; then
    mkdir -p "$unit_dir"
    if [ "$mode" = server ]; then
        write_unit skiff-control "Skiff control plane (API server, scheduler, controllers, store)" "" SKIFF_CONTROL_ARGS
        write_unit skiff-agent "Skiff node agent (kubelet and service proxy)" "skiff-control.service" SKIFF_AGENT_ARGS
    else
        write_unit skiff-agent "Skiff node agent (kubelet and service proxy)" "" SKIFF_AGENT_ARGS
    fi
    if [ -n "$no_start" ]; then
        [ -d /run/systemd/system ] && systemctl daemon-reload
        units=skiff-agent
        [ "$mode" = server ] && units="skiff-control skiff-agent"
        say "units written to $unit_dir, not started (--no-start): systemctl enable --now $units"
        say "remove everything with $bin/skiff-uninstall.sh"
        exit 0
    fi
    systemctl daemon-reload
    if [ "$mode" = server ]; then
        say "starting skiff-control"
        systemctl enable --now skiff-control.service
        wait_for "$control_data/node-token" "the control plane's node token" 120 "journalctl -u skiff-control"
        wait_for "$control_data/admin.kubeconfig" "the admin kubeconfig" 60 "journalctl -u skiff-control"
        wait_api "journalctl -u skiff-control"
    fi
    say "starting skiff-agent"
    systemctl enable --now skiff-agent.service
else
    if [ "$mode" = server ]; then
        say "starting skiff-control (log: $run_dir/skiff-control.log)"
        start_plain skiff-control control_flags
        wait_for "$control_data/node-token" "the control plane's node token" 120 "$run_dir/skiff-control.log"
        wait_for "$control_data/admin.kubeconfig" "the admin kubeconfig" 60 "$run_dir/skiff-control.log"
        wait_api "$run_dir/skiff-control.log"
    fi
    say "starting skiff-agent (log: $run_dir/skiff-agent.log)"
    start_plain skiff-agent agent_flags
fi

if [ "$mode" = server ]; then
    cp "$control_data/admin.kubeconfig" "$config_dir/admin.kubeconfig"
    chmod 0600 "$config_dir/admin.kubeconfig"
    say "installed: export KUBECONFIG=$config_dir/admin.kubeconfig"
    say "more nodes: install.sh --agent --url https://THIS-HOST:6443 --token \"\$(cat $control_data/node-token)\""
    say "more control-plane members: install.sh --server --join https://THIS-HOST:6443 --token \"\$(cat $control_data/server-token)\" --control-arg --raft-listen --control-arg THEIR-ADDRESS:6444"
else
    say "installed: the agent joins $url"
fi
say "remove everything with $bin/skiff-uninstall.sh"
