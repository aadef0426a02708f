#!/bin/sh
# /init of lunavm's "shell" initramfs (busybox-static): mounts the kernel's file
# systems, loads the modules named in /lib/modules/load-order (when the
# initramfs carries any: build-initramfs.sh --modules) and runs a shell on the
# console (ttyS0). When the shell exits, the
# machine reboots (with `panic=-1`/`-no-reboot` setups that ends the run).
export PATH=/sbin:/usr/sbin:/bin:/usr/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
if [ -r /lib/modules/load-order ]; then
    while read -r m; do
        if insmod "/lib/modules/$m.ko"; then
            echo "lunavm-init: loaded $m"
        else
            echo "lunavm-init: cannot load $m"
        fi
    done </lib/modules/load-order
fi
echo "lunavm-init: shell on $(cat /sys/class/tty/console/active 2>/dev/null)"
setsid cttyhack /bin/sh
echo "lunavm-init: shell exited with status $?"
reboot -f
