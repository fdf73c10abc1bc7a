#!/bin/sh
# PID 1 of the outer VM once its overlay root is in place (see outer-init.sh): the rest of a normal
# machine's setup, then the job, then power off. /forkd-job/env.sh (written by run.ts) sets REPO,
# KMODS (the kernel's module tree), RELEASE, and JOB (the command to run).
. /forkd-job/env.sh
log() { echo "forkd-outer: $*" > /dev/console; }
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /dev/shm /dev/pts && mount -t tmpfs tmpfs /dev/shm && mount -t devpts devpts /dev/pts
mount -t cgroup2 none /sys/fs/cgroup
# The guest kernel's whole module tree, so modprobe (and the kernel's own module autoloading, for
# iptables, veth, ...) work as on a normal machine.
mkdir -p "/lib/modules/$RELEASE" && mount --bind "$KMODS" "/lib/modules/$RELEASE"
# /tmp: the scratch disk run.ts made (a sparse file on the host), so the suites' data is not held in RAM.
modprobe virtio_blk && modprobe ext4 || log "cannot load virtio_blk/ext4"
i=0
while [ ! -b /dev/vda ] && [ $i -lt 500 ]; do sleep 0.02; i=$((i + 1)); done
mount -t ext4 -o noatime,discard /dev/vda /tmp && chmod 1777 /tmp || log "cannot mount the scratch disk on /tmp"
for m in kvm_amd tun veth; do modprobe "$m" || log "modprobe $m failed"; done
ip link set lo up
hostname forkd-outer
log "kvm: $(ls -l /dev/kvm 2>&1)"
cd "$REPO" || log "no $REPO"
sh -c "$JOB" > /forkd-job/out.log 2>&1
echo $? > /forkd-job/rc
log "job exit $(cat /forkd-job/rc)"
sync
/bin/busybox poweroff -f
