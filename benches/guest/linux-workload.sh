# The Linux benchmark's workload (benches' linux::WORKLOAD), for busybox sh: in the
# guest after its /init has mounted everything, and natively on the host as a reference.
# $BIN holds busybox's applets (true, dd, md5sum, sha256sum, awk); $SCRATCH is a folder on a
# tmpfs. Lines "bt86-linux: NAME UPTIME" mark the phases: the host timestamps each line
# as it arrives (wall time, taken the same way for every engine); UPTIME is the
# machine's own clock, read without starting a process (`read` is a shell builtin).
mark() { read up rest < /proc/uptime; echo "bt86-linux: $1 $up"; }
$BIN/dd if=/dev/zero of=$SCRATCH/f bs=1M count=16 2>/dev/null
mark fork-start
i=0
while [ $i -lt 300 ]; do $BIN/true; i=$((i + 1)); done
mark fork-end
mark hash-start
$BIN/md5sum $SCRATCH/f
$BIN/sha256sum $SCRATCH/f
mark hash-end
mark awk-start
$BIN/awk 'BEGIN { s = 0; for (i = 0; i < 2000000; i++) s += i * i % 7; print "awk: " s }'
mark awk-end
rm -f $SCRATCH/f
mark done
