# Second stage (the host's root, read-only under a tmpfs overlay): a pure cgroup v2 machine. Mounts
# what a booted host has, then runs the command from the kernel command line (base64) in the
# workspace and reports its exit status on the console.
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
ln -sf pts/ptmx /dev/ptmx
mount -t tmpfs tmpfs /dev/shm
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
mount -t tmpfs tmpfs /run
dir=$(sed -n 's/.*skiffdir=\([^ ]*\).*/\1/p' /proc/cmdline | base64 -d)
cmd=$(sed -n 's/.*skiffcmd=\([^ ]*\).*/\1/p' /proc/cmdline | base64 -d)
# /tmp must be a real tmpfs (the agent's overlay mounts cannot take an upper dir on overlayfs), and
# the workspace may live under it: kept in view through a bind mount.
mkdir -p /run/skiff-workspace
mount --bind "$dir" /run/skiff-workspace
mount -t tmpfs tmpfs /tmp
mkdir -p "$dir"
mount --bind /run/skiff-workspace "$dir"
echo /sbin/modprobe > /proc/sys/kernel/modprobe
ip link set lo up
hostname skiff-vm
export PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
echo "skiff-vm: $(uname -r), cgroup2 controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
cd "$dir" && /bin/bash -c "$cmd"
echo "SKIFF-VM-EXIT=$?"
echo o > /proc/sysrq-trigger
sleep 10
