#!/bin/sh
# forkd guest PID 1 setup (runs in the Debian root after switch_root): mounts, hostname, then the agent
# under tini (which reaps orphans). The agent is restarted if it ever exits.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 UV_THREADPOOL_SIZE=8
mkdir -p /dev/pts /dev/shm /run /tmp
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
exec /usr/bin/tini -s -- /bin/sh -c '
  while :; do
    /usr/bin/node --expose-gc /opt/forkd/src/guest/agent/main.js
    echo "forkd-agent exited ($?); restarting" > /dev/console
    sleep 0.5
  done'
