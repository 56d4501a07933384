#!/bin/sh
# /init of the interactive console test (tests' linux::SHELL_INIT): a busybox shell on
# the serial console, as a person would get it. cttyhack makes the console the shell's
# controlling terminal (in a session of its own, from setsid), so Ctrl-C typed on it
# interrupts the foreground command.
export PATH=/bin HOME=/root PS1='bt86-guest# '
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
cd /root
echo "bt86-shell: welcome to busybox on bt86"
exec setsid cttyhack sh
