/* bt86 guest kit: the few libc functions the compiler may call. Loop
 * distribution is off so gcc does not turn these loops into calls to
 * themselves. */
#include "kit.h"

#define KIT_LIBFN __attribute__((optimize("no-tree-loop-distribute-patterns")))

KIT_LIBFN void *memcpy(void *dst, const void *src, size_t n)
{
    uint8_t *d = dst;
    const uint8_t *s = src;
    while (n--)
        *d++ = *s++;
    return dst;
}

KIT_LIBFN void *memmove(void *dst, const void *src, size_t n)
{
    uint8_t *d = dst;
    const uint8_t *s = src;
    if (d < s) {
        while (n--)
            *d++ = *s++;
    } else if (d > s) {
        while (n--)
            d[n] = s[n];
    }
    return dst;
}

KIT_LIBFN void *memset(void *dst, int c, size_t n)
{
    uint8_t *d = dst;
    while (n--)
        *d++ = (uint8_t)c;
    return dst;
}

KIT_LIBFN int memcmp(const void *a, const void *b, size_t n)
{
    const uint8_t *x = a, *y = b;
    for (; n; n--, x++, y++)
        if (*x != *y)
            return *x < *y ? -1 : 1;
    return 0;
}

KIT_LIBFN size_t strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

KIT_LIBFN int strcmp(const char *a, const char *b)
{
    while (*a && *a == *b)
        a++, b++;
    return (uint8_t)*a - (uint8_t)*b;
}

KIT_LIBFN int strncmp(const char *a, const char *b, size_t n)
{
    for (; n; n--, a++, b++) {
        if (*a != *b)
            return (uint8_t)*a - (uint8_t)*b;
        if (!*a)
            return 0;
    }
    return 0;
}

int kit_has_word(const char *s, const char *w)
{
    size_t n = strlen(w);
    for (; s && *s; s++)
        if (strncmp(s, w, n) == 0)
            return 1;
    return 0;
}

/* ---- interrupts: the kit's IDT and the 8259A pair (kit.h) ---- */
struct kit_gate {
    uint16_t off_lo, sel;
    uint8_t zero, type;
    uint16_t off_hi;
} __attribute__((packed));

static struct kit_gate kit_idt[256];

void kit_set_interrupt_gate(uint8_t vector, void (*handler)(void))
{
    uint32_t h = (uint32_t)handler;
    kit_idt[vector] = (struct kit_gate){ (uint16_t)h, KIT_CODE_SEL, 0, 0x8e, (uint16_t)(h >> 16) };
    struct { uint16_t limit; uint32_t base; } __attribute__((packed)) idtr = { sizeof kit_idt - 1, (uint32_t)kit_idt };
    __asm__ volatile("lidt %0" : : "m"(idtr) : "memory");
}

void kit_pic_init(uint8_t master_mask, uint8_t slave_mask)
{
    outb(0x20, 0x11); outb(0xa0, 0x11);   /* ICW1: edge, cascade, ICW4 */
    outb(0x21, 0x20); outb(0xa1, 0x28);   /* ICW2: vector bases */
    outb(0x21, 0x04); outb(0xa1, 0x02);   /* ICW3: cascade on IRQ 2 */
    outb(0x21, 0x01); outb(0xa1, 0x01);   /* ICW4: 8086 mode */
    outb(0x21, master_mask); outb(0xa1, slave_mask);
}

void kit_ring_put(struct kit_ring *r, uint8_t b)
{
    if (r->head - r->tail < sizeof r->buf)
        r->buf[r->head++ % sizeof r->buf] = b;
}

uint8_t kit_ring_get_wait(struct kit_ring *r)
{
    for (;;) {
        __asm__ volatile("cli");
        if (r->head != r->tail) {
            uint8_t b = r->buf[r->tail++ % sizeof r->buf];
            __asm__ volatile("sti");
            return b;
        }
        __asm__ volatile("sti; hlt"); /* atomically enable and wait */
    }
}
