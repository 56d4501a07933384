#!/bin/bash
# Runs one guest ELF on the reference emulator (QEMU TCG, qemu-system-i386)
# and reports the guest's exit status.
#
#   tests/guests/run-qemu.sh path/to/guest.elf ["kernel command line"]
#
# Needs qemu-system-i386 (Debian: apt-get install -y qemu-system-x86).
# QEMU's isa-debug-exit turns a guest write of v to port 0xf4 into the exit
# status (v << 1) | 1; this script decodes it. QEMU exit status 0 means the
# guest did not write the port: with -no-reboot, a triple fault (an
# exception with no usable IDT) ends the run that way. Set QEMU_LOG=file to
# get QEMU's interrupt/exception log (-d int,cpu_reset) in that file.
# Environment: QEMU_TIMEOUT (seconds, default 60).
set -u
elf=${1:?usage: $0 guest.elf [cmdline]}
cmdline=${2:-bt86-test console=ttyS0}
log_args=()
if [ -n "${QEMU_LOG:-}" ]; then
    log_args=(-d int,cpu_reset -D "$QEMU_LOG")
fi
timeout "${QEMU_TIMEOUT:-60}" qemu-system-i386 -kernel "$elf" -append "$cmdline" \
    -m 64 -nographic -no-reboot -net none -display none -monitor none -serial stdio \
    -device isa-debug-exit,iobase=0xf4,iosize=0x04 "${log_args[@]}" </dev/null
status=$?
echo
if [ $status -eq 124 ]; then
    echo "[run-qemu] timed out after ${QEMU_TIMEOUT:-60}s"
    exit 124
elif [ $((status & 1)) -eq 1 ]; then
    echo "[run-qemu] guest exit status $((status >> 1)) (QEMU status $status)"
    exit $((status >> 1))
else
    echo "[run-qemu] QEMU status $status: the guest did not write port 0xf4 (triple fault / reset with -no-reboot?)"
    exit 200
fi
