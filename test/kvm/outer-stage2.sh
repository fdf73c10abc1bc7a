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
# TMPDIR: the scratch disk run.ts made (a sparse file on the host), so the suites' data is not held in
# RAM. Not mounted over /tmp: the repository itself may live there, on the host's root.
modprobe virtio_blk && modprobe ext4 || log "cannot load virtio_blk/ext4"
i=0
while [ ! -b /dev/vda ] && [ $i -lt 500 ]; do sleep 0.02; i=$((i + 1)); done
mkdir -p /forkd-scratch
if mount -t ext4 -o noatime,discard /dev/vda /forkd-scratch; then
  mkdir -m 1777 /forkd-scratch/tmp
  export TMPDIR=/forkd-scratch/tmp
else
  log "cannot mount the scratch disk"
fi
for m in kvm_amd tun veth; do modprobe "$m" || log "modprobe $m failed"; done
ip link set lo up
hostname forkd-outer
log "kvm: $(ls -l /dev/kvm 2>&1)"
# Heartbeat: the host takes a machine whose clock stopped ticking (a stuck vCPU) for wedged.
( while :; do cat /proc/uptime > /forkd-job/heartbeat; sleep 10; done ) &
cd "$REPO" || log "no $REPO"
sh -c "$JOB" > /forkd-job/out.log 2>&1
echo $? > /forkd-job/rc
log "job exit $(cat /forkd-job/rc)"
sync
/bin/busybox poweroff -f
