/*
 * vga: a text-mode kernel in the style of the OSDev "Bare Bones" one. It writes only
 * to the VGA text buffer at 0xB8000 (never to the serial port) and moves the cursor
 * through the CRT controller (0x3D4/0x3D5).
 *
 * Screen: row 0 a title (yellow on blue), row 1 the 16 colours, row 2 box-drawing
 * characters from code page 437, row 3 what the VGA registers read back (misc output,
 * cursor start/end, the cursor location written, whether input status 1 toggles its
 * retrace bit), row 4 "scrolled" text written past row 24 and moved up by the kernel,
 * then the cursor at row 5.
 *
 * Command line: "keys" waits for keystrokes on the PS/2 keyboard (IRQ 1, scan code
 * set 1 as the i8042 translates it) and echoes them on row 6 (Backspace erases; Enter
 * or Escape ends); "halt" ends in cli; hlt instead of writing the exit port (for a
 * memory dump under QEMU). Otherwise it exits with status 0 through port 0xf4.
 */
#include "kit.h"

#define COLS 80
#define ROWS 25
static volatile uint16_t *const screen = (volatile uint16_t *)0xb8000;

static void put_at(int row, int col, const char *s, uint8_t attr)
{
    for (; *s && col < COLS; s++, col++)
        screen[row * COLS + col] = (uint16_t)((uint8_t)*s | (attr << 8));
}

static void move_cursor(int row, int col)
{
    uint16_t pos = (uint16_t)(row * COLS + col);
    outb(0x3d4, 0x0f);
    outb(0x3d5, (uint8_t)pos);
    outb(0x3d4, 0x0e);
    outb(0x3d5, (uint8_t)(pos >> 8));
}

static uint8_t crtc(uint8_t index)
{
    outb(0x3d4, index);
    return inb(0x3d5);
}

static char hex(unsigned v) { return "0123456789abcdef"[v & 15]; }

static void put_hex8(char *at, uint8_t v) { at[0] = hex(v >> 4); at[1] = hex(v); }

/* ---- the keyboard, by interrupt ---- */
static struct kit_ring codes;

void irq1_handler(void);
void irq1_stub(void);
__asm__(".globl irq1_stub\nirq1_stub:\n pusha\n call irq1_handler\n popa\n iret\n");

void irq1_handler(void)
{
    while (inb(0x64) & 1) {
        kit_ring_put(&codes, inb(0x60));
    }
    outb(0x20, 0x20);
}

static void keyboard_setup(void)
{
    kit_set_interrupt_gate(0x21, irq1_stub);
    kit_pic_init(0xfd, 0xff);             /* only IRQ 1 */
}

/* Set 1 make codes 0x02..0x35 on a US layout, unshifted and shifted. */
static const char plain[] = "\0\0" "1234567890-=" "\0\0" "qwertyuiop[]" "\0\0" "asdfghjkl;'`" "\0" "\\zxcvbnm,./";
static const char shifted[] = "\0\0" "!@#$%^&*()_+" "\0\0" "QWERTYUIOP{}" "\0\0" "ASDFGHJKL:\"~" "\0" "|ZXCVBNM<>?";

static void read_keys(void)
{
    keyboard_setup();
    put_at(6, 0, "keys> ", 0x0f);
    move_cursor(6, 6);
    int col = 6, shift = 0;
    for (;;) {
        uint8_t c = kit_ring_get_wait(&codes);
        if (c == 0x2a || c == 0x36) { shift = 1; continue; }
        if (c == 0xaa || c == 0xb6) { shift = 0; continue; }
        if (c & 0x80 || c == 0xe0)
            continue;
        if (c == 0x1c || c == 0x01)        /* Enter, Escape */
            break;
        if (c == 0x0e) {                   /* Backspace */
            if (col > 6)
                screen[6 * COLS + --col] = 0x0720;
        } else if (c == 0x39 && col < COLS - 1) {
            screen[6 * COLS + col++] = 0x0f20;
        } else if (c < sizeof plain && plain[c] && col < COLS - 1) {
            char ch = shift ? shifted[c] : plain[c];
            screen[6 * COLS + col++] = (uint16_t)((uint8_t)ch | 0x0f00);
        }
        move_cursor(6, col);
    }
    put_at(7, 0, "keys: done", 0x0a);
}

int kmain(uint32_t magic, uint32_t mbi_addr)
{
    (void)magic;
    const struct multiboot_info *mbi = (const struct multiboot_info *)mbi_addr;
    const char *cmdline = (mbi->flags & MBI_FLAG_CMDLINE) ? (const char *)mbi->cmdline : "";

    for (int i = 0; i < COLS * ROWS; i++)
        screen[i] = 0x1720;                /* grey on blue */
    put_at(0, 0, "bt86 VGA text mode: hello from 0xB8000", 0x1e);
    for (int c = 0; c < 16; c++)
        screen[COLS + c] = (uint16_t)(('0' + (c < 10 ? c : c + 7)) | ((c | (c == 0 ? 0x70 : 0)) << 8));
    static const char box[] = { (char)0xc9, (char)0xcd, (char)0xcd, (char)0xbb, ' ', (char)0xb0, (char)0xb1, (char)0xb2,
                                (char)0xdb, ' ', (char)0x03, (char)0x0e, 0 };
    put_at(2, 0, box, 0x1b);

    /* Registers: what a text-mode kernel reads back. */
    move_cursor(5, 0);
    char line[] = "misc=.. cur_start=.. cur_end=.. cursor=..:.. retrace=.";
    put_hex8(line + 5, inb(0x3cc));
    put_hex8(line + 18, crtc(0x0a));
    put_hex8(line + 29, crtc(0x0b));
    put_hex8(line + 39, crtc(0x0e));
    put_hex8(line + 42, crtc(0x0f));
    uint8_t toggles = 0, first = inb(0x3da) & 8;
    for (int i = 0; i < 100000 && !toggles; i++)
        toggles = (inb(0x3da) & 8) != first;
    line[sizeof line - 2] = toggles ? 'y' : 'n';
    put_at(3, 0, line, 0x17);

    /* Scroll: write row 25 (off screen) by moving rows 1..24 up... the usual way a
     * simple kernel scrolls: copy rows up in memory, then write the last row. */
    put_at(24, 0, "last row before the scroll", 0x17);
    for (int i = 0; i < COLS * (ROWS - 1); i++)
        if (i >= 4 * COLS)
            screen[i] = screen[i + COLS];
    for (int c = 0; c < COLS; c++)
        screen[(ROWS - 1) * COLS + c] = 0x1720;
    put_at(4, 0, "scrolled: row 24 is now row 23", 0x17);

    if (kit_has_word(cmdline, "keys"))
        read_keys();
    if (kit_has_word(cmdline, "halt"))
        for (;;)
            __asm__ volatile("cli; hlt");
    debug_exit(0);
    return 0;
}
