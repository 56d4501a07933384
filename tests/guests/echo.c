/*
 * echo: an interactive guest. Serial input arrives by interrupt (IRQ 4 through the
 * PIC at vector 0x24); the main loop sleeps in hlt between lines and echoes each line
 * in upper case. The line "exit" ends the run with status 0; when the input ends
 * (EOF on a pipe) nothing can wake the guest any more and bt86 ends the run.
 */
#include "kit.h"

struct gate {
    uint16_t off_lo, sel;
    uint8_t zero, type;
    uint16_t off_hi;
} __attribute__((packed));

static struct gate idt[256];
static volatile char ring[256];
static volatile uint32_t head, tail, irqs;

void irq4_handler(void);
void irq4_stub(void);
__asm__(".globl irq4_stub\nirq4_stub:\n pusha\n call irq4_handler\n popa\n iret\n");

void irq4_handler(void)
{
    while (inb(0x3fd) & 1) {
        char c = (char)inb(0x3f8);
        if (head - tail < sizeof ring)
            ring[head++ % sizeof ring] = c;
    }
    irqs++;
    outb(0x20, 0x20); /* EOI */
}

static void setup(void)
{
    uint32_t h = (uint32_t)irq4_stub;
    idt[0x24] = (struct gate){ (uint16_t)h, 0x08, 0, 0x8e, (uint16_t)(h >> 16) };
    struct { uint16_t limit; uint32_t base; } __attribute__((packed)) idtr = { sizeof idt - 1, (uint32_t)idt };
    __asm__ volatile("lidt %0" : : "m"(idtr));
    outb(0x20, 0x11); outb(0xa0, 0x11);   /* ICW1 */
    outb(0x21, 0x20); outb(0xa1, 0x28);   /* ICW2: vector bases */
    outb(0x21, 0x04); outb(0xa1, 0x02);   /* ICW3: cascade on IRQ 2 */
    outb(0x21, 0x01); outb(0xa1, 0x01);   /* ICW4: 8086 mode */
    outb(0x21, 0xef); outb(0xa1, 0xff);   /* only IRQ 4 */
    outb(0x3f9, 0x01);                    /* IER: received data available */
    outb(0x3fc, 0x0b);                    /* MCR: DTR, RTS, OUT2 (IRQ enable) */
}

static char getc_wait(void)
{
    for (;;) {
        __asm__ volatile("cli");
        if (head != tail) {
            char c = ring[tail++ % sizeof ring];
            __asm__ volatile("sti");
            return c;
        }
        __asm__ volatile("sti; hlt"); /* atomically enable and wait */
    }
}

int kmain(uint32_t magic, uint32_t mbi)
{
    (void)magic; (void)mbi;
    setup();
    printf("echo: type a line (\"exit\" ends)\n");
    char line[80];
    for (;;) {
        printf("> ");
        uint32_t n = 0;
        char c;
        while ((c = getc_wait()) != '\n' && c != '\r')
            if (n < sizeof line - 1)
                line[n++] = c;
        line[n] = 0;
        if (n == 4 && line[0] == 'e' && line[1] == 'x' && line[2] == 'i' && line[3] == 't') {
            printf("bye after %u interrupts\n", irqs);
            return 0;
        }
        for (uint32_t i = 0; i < n; i++)
            if (line[i] >= 'a' && line[i] <= 'z')
                line[i] -= 32;
        printf("%s\n", line);
    }
}
