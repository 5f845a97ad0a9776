#!/usr/bin/env bash
# What a fresh Debian or Ubuntu host needs, in one place: `cargo xtask up` runs it with `up`,
# `cargo xtask test` and `.ci/run` with `test`, so the README's commands and CI cannot drift.
#
#   up:   libseccomp-dev and pkg-config (the agent's runtime links libseccomp), curl, nftables and
#         iproute2 (the node's network), kubectl (Debian's kubernetes-client, unless one is on PATH).
#   test: also a registry on loopback (docker-registry, skopeo), busybox-static (the test image),
#         bpftool (the proxy tests dump its maps), qemu-system-x86 (the pure cgroup v2 machine) and
#         python3-venv (the official Python client runs in a pod from a venv), etcd-client (etcdctl
#         against the store's etcd API), systemd (systemd-analyze verifies the install units) and
#         rustfmt/clippy.
#   bench: what test needs, and the peers measured beside Skiff (etcd-server, runc, crun,
#         iptables).
#   peers: what bench needs, and what builds and runs the real upstream components
#         (golang-1.19-go, make, rsync, openssl, gcc; containerd and the CNI plugins for
#         kubelet's node; `cargo xtask bench peers`).
# The eBPF toolchain (nightly rust-src, bpf-linker) is installed by xtask itself when it builds.
set -euo pipefail
want=${1:?usage: prerequisites.sh up|test|bench|peers}
packages=(libseccomp-dev pkg-config curl nftables iproute2)
if [ "$want" = test ] || [ "$want" = bench ] || [ "$want" = peers ]; then
  packages+=(busybox-static docker-registry skopeo bpftool qemu-system-x86 python3-venv etcd-client systemd)
fi
if [ "$want" = bench ] || [ "$want" = peers ]; then
  packages+=(etcd-server runc crun iptables)
fi
if [ "$want" = peers ]; then
  packages+=(golang-1.19-go openssl make rsync gcc libc6-dev containerd containernetworking-plugins)
fi
command -v kubectl >/dev/null 2>&1 || packages+=(kubernetes-client)

if ! command -v dpkg-query >/dev/null 2>&1; then
  echo "prerequisites: not a Debian or Ubuntu host; install the equivalents of: ${packages[*]}" >&2
  exit 0
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "prerequisites: missing ${missing[*]}; run as root, or first: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
  echo "prerequisites: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "prerequisites: all present (${packages[*]})" >&2
fi
if [ "$want" = test ]; then
  rustup component add rustfmt clippy >/dev/null 2>&1
fi
