/* Guest platform layer: the workload as a multiboot v1 kernel.
 * Console: 16550 UART at 0x3f8 (poll LSR 0x3fd bit 5, THR empty).
 * Exit: 32-bit write of the status to the isa-debug-exit port 0xf4
 * (bt86 exits with that status; QEMU exits with (status << 1) | 1). */
#include "bench.h"

#define COM1     0x3f8
#define COM1_LSR (COM1 + 5)
#define LSR_THRE 0x20
#define DEBUG_EXIT_PORT 0xf4

static inline void outb(u16 port, u8 v)
{
    __asm__ __volatile__("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline u8 inb(u16 port)
{
    u8 v;
    __asm__ __volatile__("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

static inline void outl(u16 port, u32 v)
{
    __asm__ __volatile__("outl %0, %1" : : "a"(v), "Nd"(port));
}

static void uart_putc(char c)
{
    while (!(inb(COM1_LSR) & LSR_THRE))
        ;
    outb(COM1, (u8)c);
}

void plat_puts(const char *s)
{
    /* No UART initialisation: emulated UARTs (QEMU, bt86) transmit at any
     * divisor; a real one would need LCR/DLL/DLM set up first. */
    while (*s)
        uart_putc(*s++);
}

void plat_exit(int status)
{
    outl(DEBUG_EXIT_PORT, (u32)status);
    for (;;)
        __asm__ __volatile__("cli; hlt");
}
