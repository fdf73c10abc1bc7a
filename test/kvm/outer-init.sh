#!/bin/busybox sh
# /init of the outer VM that test:kvm runs forkd in (TCG with emulated SVM, so its kernel has a real
# /dev/kvm). Its root is the host's root filesystem, read-only over virtio-9p, with a tmpfs overlay on
# top so the suite can write anywhere without touching the host; the job dir (9p, writable) carries the
# stage-2 script in and the log and exit status out.
/bin/busybox mkdir -p /proc /sys /dev /lower /upper /newroot /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "forkd-outer: init" > /dev/console
for m in $(cat /etc/outer-modules); do
  insmod "/lib/modules/$m.ko" || echo "forkd-outer: insmod $m failed" > /dev/console
done
fail() {
  echo "forkd-outer: $1" > /dev/console
  poweroff -f
}
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=524288,cache=loose hostroot /lower || fail "cannot mount the host root"
mount -t tmpfs -o size=90% tmpfs /upper || fail "cannot mount the overlay tmpfs"
mkdir -p /upper/u /upper/w
mount -t overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w overlay /newroot || fail "cannot mount the overlay root"
mkdir -p /newroot/forkd-job
mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 job /newroot/forkd-job || fail "cannot mount the job dir"
[ -f /newroot/forkd-job/stage2.sh ] || fail "no stage2.sh in the job dir"
mount --move /dev /newroot/dev
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
exec switch_root /newroot /bin/sh /forkd-job/stage2.sh
