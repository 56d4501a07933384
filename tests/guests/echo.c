/*
 * echo: an interactive guest, a tiny line editor on the serial console. Input arrives
 * by interrupt (IRQ 4 through the PIC at vector 0x24); the main loop sleeps in hlt
 * between keys. Each character is echoed as typed (the terminal is raw: nothing else
 * echoes it), Backspace (DEL or BS) erases the last one, and Enter prints the line in
 * upper case. Commands: "exit" ends the run with status 0; "wait" is a foreground
 * command that waits until Ctrl-C interrupts it. Ctrl-C also cancels the line being
 * typed. When the input ends (EOF on a pipe) nothing can wake the guest any more and
 * bt86 ends the run.
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

static int is(const char *line, const char *word)
{
    return strcmp(line, word) == 0;
}

int kmain(uint32_t magic, uint32_t mbi)
{
    (void)magic; (void)mbi;
    setup();
    printf("echo: type a line (\"exit\" ends, \"wait\" waits for Ctrl-C)\n");
    char line[80];
    for (;;) {
        printf("> ");
        uint32_t n = 0;
        int cancelled = 0;
        char c;
        while ((c = getc_wait()) != '\n' && c != '\r') {
            if (c == 0x03) {                  /* Ctrl-C: drop the line */
                printf("^C\n");
                cancelled = 1;
                break;
            } else if (c == 0x7f || c == 0x08) {
                if (n > 0) {
                    n--;
                    printf("\b \b");
                }
            } else if (n < sizeof line - 1 && c >= 0x20) {
                line[n++] = c;
                printf("%c", c);
            }
        }
        if (cancelled)
            continue;
        printf("\n");
        line[n] = 0;
        if (is(line, "exit")) {
            printf("bye after %u interrupts\n", irqs);
            return 0;
        }
        if (is(line, "wait")) {
            printf("waiting until Ctrl-C...\n");
            while (getc_wait() != 0x03)
                ;
            printf("^C: wait interrupted\n");
            continue;
        }
        for (uint32_t i = 0; i < n; i++)
            if (line[i] >= 'a' && line[i] <= 'z')
                line[i] -= 32;
        printf("%s\n", line);
    }
}
