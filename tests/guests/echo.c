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

static struct kit_ring input;
static volatile uint32_t irqs;

void irq4_handler(void);
void irq4_stub(void);
__asm__(".globl irq4_stub\nirq4_stub:\n pusha\n call irq4_handler\n popa\n iret\n");

void irq4_handler(void)
{
    while (inb(0x3fd) & 1) {
        char c = (char)inb(0x3f8);
        kit_ring_put(&input, (uint8_t)c);
    }
    irqs++;
    outb(0x20, 0x20); /* EOI */
}

static void setup(void)
{
    kit_set_interrupt_gate(0x24, irq4_stub);
    kit_pic_init(0xef, 0xff);             /* only IRQ 4 */
    outb(0x3f9, 0x01);                    /* IER: received data available */
    outb(0x3fc, 0x0b);                    /* MCR: DTR, RTS, OUT2 (IRQ enable) */
}

static char getc_wait(void)
{
    return (char)kit_ring_get_wait(&input);
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
