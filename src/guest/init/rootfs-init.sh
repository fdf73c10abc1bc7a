#!/opt/forkd/bin/busybox sh
# forkd guest PID 1 setup (runs in the guest's root after switch_root, on our own static busybox, so a
# root without a shell or coreutils still boots): mounts, hostname, then the agent, restarted if it
# ever exits. The agent runs on the root's own Node (recipe guests) or on the runtime forkd put into
# an image's root (/opt/forkd-runtime: Node, its libraries and their loader, used by the agent alone).
# The root's own tools come first in PATH; busybox applets fill the gaps.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/opt/forkd/bin
export HOME=/root LANG=C.UTF-8 UV_THREADPOOL_SIZE=8
mkdir -p /dev/pts /dev/shm /run /tmp /root /etc
mount -t devpts -o gid=5,mode=620 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
[ -e /proc/sys/kernel/hostname ] && echo forkd-parent > /proc/sys/kernel/hostname
# /etc/hostname follows the kernel's name: a child that is renamed after its restore then has nothing
# to rewrite on disk.
ln -sf /proc/sys/kernel/hostname /etc/hostname
ip link set lo up 2>/dev/null
# A snapshot made with a NIC: every child keeps this address, each alone on its own tap / namespace.
if [ -e /sys/class/net/eth0 ]; then
  ip link set eth0 up
  ip addr add 10.42.0.2/24 dev eth0
  ip route add default via 10.42.0.1
  # The gateway forwards DNS to the sandbox's own resolver on the host (it enforces domain policies).
  rm -f /etc/resolv.conf
  echo 'nameserver 10.42.0.1' > /etc/resolv.conf
fi
cd /root
RT=/opt/forkd-runtime
if [ -x $RT/node ]; then
  AGENT="$RT/ld.so --library-path $RT/lib $RT/node"
else
  AGENT=/usr/bin/node
fi
LOOP="while :; do
    $AGENT --expose-gc /opt/forkd/src/guest/agent/main.js
    echo \"forkd-agent exited (\$?); restarting\" > /dev/console
    sleep 0.5
  done"
# tini reaps orphans where the root has it; otherwise the busybox shell, as PID 1, reaps them itself.
if [ -x /usr/bin/tini ]; then
  exec /usr/bin/tini -s -- /opt/forkd/bin/busybox sh -c "$LOOP"
fi
exec /opt/forkd/bin/busybox sh -c "$LOOP"
