#!/bin/busybox sh
# First stage (initramfs): loads virtio and 9p, mounts the host's root read-only through 9p under a
# tmpfs overlay (nothing the guest writes reaches the host), the guest kernel's modules on
# /lib/modules, and switches to it.
/bin/busybox mkdir -p /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in virtio_pci 9pnet_virtio 9p overlay; do
  modprobe $m || echo "skiff-vm: loading $m failed"
done
fail() { echo "skiff-vm: $1"; echo "SKIFF-VM-EXIT=125"; poweroff -f; }
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=524288,cache=loose hostroot /lower || fail "mounting the host's root"
mount -t tmpfs -o size=12g tmpfs /upper
mkdir -p /upper/u /upper/w
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w /newroot || fail "mounting the overlay"
mkdir -p /newroot/lib/modules /newroot/sbin
mount -t 9p -o trans=virtio,version=9p2000.L,ro modules /newroot/lib/modules || fail "mounting the modules"
# The kernel loads modules on demand (bridge, veth, nf_tables, sch_ingress) through this.
ln -sf /bin/busybox /newroot/sbin/modprobe
cp /stage2.sh /newroot/skiff-vm-init
umount /proc /sys /dev
exec switch_root /newroot /bin/bash /skiff-vm-init
