/* bt86 CPU benchmark: interface between the portable workload and a platform layer.
 *
 * The workload (workload.c) is freestanding C: no libc, no libgcc helpers (no
 * 64-bit division), no floating point.  A platform provides _start, which calls
 * bench_main() and exits with its return value, and plat_puts().
 */
#ifndef BT86_BENCH_H
#define BT86_BENCH_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef int i32;
typedef unsigned long long u64;

/* Provided by the platform layer: write a NUL-terminated string to the console. */
void plat_puts(const char *s);

/* Provided by workload.c: runs the workload between two rdtsc reads and prints
 * exactly one line "bt86-bench cycles=<decimal> checksum=<hex>\n".  Returns the
 * process / VM exit status (0). */
int bench_main(void);

/* The workload itself; returns a checksum that depends on every component. */
u32 workload(u32 rounds);

#endif
