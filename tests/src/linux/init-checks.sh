#!/bin/sh
# /init of the end-to-end test (tests' linux::CHECKS_INIT): real work for the kernel
# and user space, one line per check — "bt86-check: NAME ok" or "bt86-check: NAME FAILED
# (why)" — then "bt86-check: PASS" (or "FAIL n") and power off. The test reads the lines
# from the serial console.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
echo "bt86-check: init running, uptime $(cut -d' ' -f1 /proc/uptime)"

failures=0
# check NAME FUNCTION: runs the function; it prints why on failure.
check() {
	if why=$("$2" 2>&1); then
		echo "bt86-check: $1 ok"
	else
		echo "bt86-check: $1 FAILED ($why)"
		failures=$((failures + 1))
	fi
}

# The kernel is Debian's 686 flavour, running on the 32-bit CPU it expects.
kernel() {
	r=$(uname -r); m=$(uname -m)
	case "$r" in *-686) ;; *) echo "uname -r: $r"; return 1 ;; esac
	[ "$m" = i686 ] || { echo "uname -m: $m"; return 1; }
}

# fork + exec + wait: exit statuses come back through wait, 127 for a missing program.
processes() {
	/bin/true || { echo "true failed"; return 1; }
	/bin/false && { echo "false succeeded"; return 1; }
	sh -c 'exit 7'; s=$?; [ $s -eq 7 ] || { echo "sh -c 'exit 7' gave $s"; return 1; }
	(exit 3) & wait $!; s=$?; [ $s -eq 3 ] || { echo "background (exit 3) gave $s"; return 1; }
	/bin/no-such-program 2>/dev/null; s=$?; [ $s -eq 127 ] || { echo "missing program gave $s"; return 1; }
	# 50 fork+execs, and the pids show they were real processes.
	first=$(sh -c 'echo $$'); i=0
	while [ $i -lt 50 ]; do /bin/true; i=$((i + 1)); done
	last=$(sh -c 'echo $$')
	[ $((last - first)) -ge 51 ] || { echo "pids $first..$last: no new processes"; return 1; }
}

# Pipes between processes, including one larger than a pipe's 64 KiB buffer.
pipes() {
	s=$(seq 1 1000 | awk '{ s += $1 } END { print s }')
	[ "$s" = 500500 ] || { echo "seq | awk: $s"; return 1; }
	u=$(echo hello pipes | tr a-z A-Z | sed 's/PIPES/WORLD/')
	[ "$u" = "HELLO WORLD" ] || { echo "echo | tr | sed: $u"; return 1; }
	n=$(yes 0123456789 | head -n 20000 | wc -c)
	[ "$n" = 220000 ] || { echo "yes | head | wc: $n bytes"; return 1; }
}

# A file in tmpfs: written, read back, compared, removed.
tmpfs() {
	grep -q '^tmp /tmp tmpfs' /proc/mounts || { echo "/tmp is not a tmpfs"; return 1; }
	seq 1 100000 > /tmp/numbers
	n=$(wc -c < /tmp/numbers)
	[ "$n" = 588895 ] || { echo "wrote $n bytes"; return 1; }
	[ "$(tail -n 1 /tmp/numbers)" = 100000 ] || { echo "last line wrong"; return 1; }
	seq 1 100000 | cmp - /tmp/numbers || { echo "read back differs"; return 1; }
	dd if=/dev/zero of=/tmp/zeros bs=64k count=64 2>/dev/null
	z=$(md5sum < /tmp/zeros); z=${z%% *}
	# md5 of 4 MiB of zeros.
	[ "$z" = b5cfa9d6c8febd618f91ac2843d50a1c ] || { echo "md5 of zeros: $z"; return 1; }
	rm /tmp/numbers /tmp/zeros
	[ ! -e /tmp/numbers ] || { echo "rm left the file"; return 1; }
}

# Signals: a background sleep killed (status 128 + 15), a shell that traps a signal it
# sends itself, and a child whose trap ends it its own way. (Checks run in a subshell,
# where $$ is still init: a signal to $$ would reach init.)
signals() {
	sleep 100 & pid=$!
	kill $pid; wait $pid; s=$?
	[ $s -eq 143 ] || { echo "killed sleep gave $s"; return 1; }
	t=$(sh -c 'trap "echo trapped" USR1; kill -USR1 $$; echo after')
	[ "$t" = "trapped
after" ] || { echo "USR1 to itself: $t"; return 1; }
	rm -f /tmp/ready
	sh -c 'trap "kill \$!; exit 5" TERM; sleep 100 & touch /tmp/ready; wait' & child=$!
	while [ ! -e /tmp/ready ]; do sleep 0.05; done
	kill -TERM $child; wait $child; s=$?
	[ $s -eq 5 ] || { echo "trapping child gave $s"; return 1; }
}

check kernel kernel
check processes processes
check pipes pipes
check tmpfs tmpfs
check signals signals

if [ $failures -eq 0 ]; then echo "bt86-check: PASS"; else echo "bt86-check: FAIL $failures"; fi
poweroff -f
