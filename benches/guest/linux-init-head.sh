#!/bin/sh
# /init of the Linux benchmark (benches' linux::guest_init): this, then linux-workload.sh,
# then "done" and power off. "init" is marked as soon as /proc is there to read the
# guest's uptime from.
export PATH=/bin BIN=/bin SCRATCH=/tmp
mount -t proc proc /proc
read up rest < /proc/uptime; echo "bt86-linux: init $up"
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
