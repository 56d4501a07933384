/* Native platform layer: the workload as a static i386 Linux program, no libc.
 * System calls through int $0x80 (i386 ABI: eax = number, ebx, ecx, edx = args).
 * _start is in start_native.S. */
#include "bench.h"

static int sys3(int nr, int a, int b, int c)
{
    int ret;
    __asm__ __volatile__("int $0x80"
                         : "=a"(ret)
                         : "0"(nr), "b"(a), "c"(b), "d"(c)
                         : "memory");
    return ret;
}

void plat_puts(const char *s)
{
    u32 n = 0;
    while (s[n])
        n++;
    while (n) {
        int w = sys3(4 /* write */, 1, (int)s, (int)n);
        if (w <= 0)
            break;
        s += w;
        n -= (u32)w;
    }
}

void plat_exit(int status)
{
    for (;;)
        sys3(1 /* exit */, status, 0, 0);
}
