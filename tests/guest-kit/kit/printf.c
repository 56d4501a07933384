/* bt86 guest kit: a minimal printf to the serial console, and the checks. */
#include "kit.h"

static int put_num(uint32_t v, unsigned base, int upper, int width, char pad, int neg)
{
    char buf[16];
    const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
    int n = 0, out = 0;
    do {
        buf[n++] = digits[v % base];
        v /= base;
    } while (v);
    if (neg) {
        if (pad == '0') {
            serial_putc('-');
            out++;
            width--;
        } else {
            buf[n++] = '-';
        }
    }
    for (; width > n; width--, out++)
        serial_putc(pad);
    while (n > 0) {
        serial_putc(buf[--n]);
        out++;
    }
    return out;
}

int vprintf(const char *fmt, va_list ap)
{
    int out = 0;
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            serial_putc(*fmt);
            out++;
            continue;
        }
        fmt++;
        char pad = ' ';
        int width = 0;
        if (*fmt == '0') {
            pad = '0';
            fmt++;
        }
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        while (*fmt == 'l' || *fmt == 'h')
            fmt++;
        switch (*fmt) {
        case 'd':
        case 'i': {
            int v = va_arg(ap, int);
            out += put_num(v < 0 ? -(uint32_t)v : (uint32_t)v, 10, 0, width, pad, v < 0);
            break;
        }
        case 'u':
            out += put_num(va_arg(ap, uint32_t), 10, 0, width, pad, 0);
            break;
        case 'x':
        case 'X':
            out += put_num(va_arg(ap, uint32_t), 16, *fmt == 'X', width, pad, 0);
            break;
        case 'p':
            serial_puts("0x");
            out += 2 + put_num(va_arg(ap, uint32_t), 16, 0, 8, '0', 0);
            break;
        case 'c':
            serial_putc((char)va_arg(ap, int));
            out++;
            break;
        case 's': {
            const char *s = va_arg(ap, const char *);
            if (!s)
                s = "(null)";
            int len = (int)strlen(s);
            for (; width > len; width--, out++)
                serial_putc(' ');
            serial_puts(s);
            out += len;
            break;
        }
        case '%':
            serial_putc('%');
            out++;
            break;
        case '\0':
            return out;
        default:
            serial_putc('%');
            serial_putc(*fmt);
            out += 2;
            break;
        }
    }
    return out;
}

int printf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vprintf(fmt, ap);
    va_end(ap);
    return n;
}

int kit_passed, kit_failed;

void kit_check(int ok, const char *file, int line, const char *expr)
{
    if (ok)
        kit_passed++;
    else
        kit_failed++;
    printf("%s %s:%d %s\n", ok ? "PASS" : "FAIL", file, line, expr);
}

void kit_check_eq(uint32_t a, uint32_t b, const char *file, int line, const char *expr)
{
    if (a == b) {
        kit_passed++;
        printf("PASS %s:%d %s\n", file, line, expr);
    } else {
        kit_failed++;
        printf("FAIL %s:%d %s (0x%08x != 0x%08x)\n", file, line, expr, a, b);
    }
}

int kit_finish(void)
{
    uint32_t status = kit_failed == 0 ? 0 : 1;
    printf("RESULT: %d passed, %d failed\n", kit_passed, kit_failed);
    debug_exit(status);
    return (int)status;
}

void kit_exit(uint32_t v)
{
    debug_exit(v);
    for (;;)
        __asm__ volatile("cli; hlt");
}
