#!/bin/busybox sh
# forkd initramfs /init: load the virtio + ext4 modules (Debian builds them as =m), mount the root disk,
# put the forkd agent (and a static busybox for its init) on a tmpfs at /opt/forkd and switch to the
# real root.
/bin/busybox mkdir -p /proc /sys /dev /newroot /usr/bin /usr/sbin /sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# First sign of life: the host treats a boot without this line as hung early and retries it.
echo "forkd-initramfs: init" > /dev/console
for m in $(cat /etc/forkd-modules); do
  insmod "/lib/modules/$m.ko" 2>/dev/null || echo "forkd-initramfs: insmod $m failed" > /dev/console
done
if grep -q 'forkd.probe=1' /proc/cmdline; then
  # Accelerator probe: reaching user space proves this accelerator runs the stock kernel.
  echo "FORKD-PROBE-OK" > /dev/console
  poweroff -f
fi
i=0
while [ ! -b /dev/vda ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i + 1)); done
if ! mount -t ext4 -o rw,noatime /dev/vda /newroot; then
  echo "forkd-initramfs: cannot mount the root disk /dev/vda" > /dev/console
  poweroff -f
fi
mkdir -p /newroot/opt/forkd
mount -t tmpfs -o mode=755,size=64m tmpfs /newroot/opt/forkd
cp -a /forkd/. /newroot/opt/forkd/
mount --move /dev /newroot/dev
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
# The root's own /bin/sh may not exist (distroless) or be anything: our init runs on our busybox.
exec switch_root /newroot /opt/forkd/bin/busybox sh /opt/forkd/init
