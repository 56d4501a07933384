/* bt86 guest kit: types, port I/O, serial console, printf, checks, exit.
 *
 * Segment selectors set up by start.S: 0x08 flat ring-0 code, 0x10 flat
 * ring-0 data (DS, ES, FS, GS, SS). GDT = kit_gdt (3 entries, limit 0x17).
 * No IDT is loaded (IDTR is what the loader left: limit 0 under multiboot).
 */
#ifndef BT86_GUEST_KIT_H
#define BT86_GUEST_KIT_H

typedef unsigned char      uint8_t;
typedef unsigned short     uint16_t;
typedef unsigned int       uint32_t;
typedef unsigned long long uint64_t;
typedef signed char        int8_t;
typedef short              int16_t;
typedef int                int32_t;
typedef long long          int64_t;
typedef unsigned int       size_t;
typedef unsigned int       uintptr_t;
typedef int                bool;
#define true  1
#define false 0
#define NULL  ((void *)0)

typedef __builtin_va_list va_list;
#define va_start(ap, last) __builtin_va_start(ap, last)
#define va_arg(ap, type)   __builtin_va_arg(ap, type)
#define va_end(ap)         __builtin_va_end(ap)

#define KIT_CODE_SEL 0x08
#define KIT_DATA_SEL 0x10
#define MULTIBOOT_BOOTLOADER_MAGIC 0x2BADB002u

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define NOINLINE __attribute__((noinline))
#define USED     __attribute__((used))

/* ---- multiboot v1 info (only the fields the kit uses) ---- */
struct multiboot_info {
    uint32_t flags;
    uint32_t mem_lower;   /* flags bit 0 */
    uint32_t mem_upper;   /* flags bit 0 */
    uint32_t boot_device; /* flags bit 1 */
    uint32_t cmdline;     /* flags bit 2: physical address of a NUL-terminated string */
    uint32_t mods_count;  /* flags bit 3 */
    uint32_t mods_addr;
};
#define MBI_FLAG_MEM     (1u << 0)
#define MBI_FLAG_CMDLINE (1u << 2)

/* ---- port I/O ---- */
static inline void outb(uint16_t port, uint8_t v)  { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outw(uint16_t port, uint16_t v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port)  { uint8_t v;  __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint16_t inw(uint16_t port) { uint16_t v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint32_t inl(uint16_t port) { uint32_t v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }

/* ---- serial console: 16550 UART at COM1 (0x3f8) ---- */
#define COM1      0x3f8
#define COM1_LSR  (COM1 + 5)
#define COM1_SCR  (COM1 + 7)
#define LSR_THRE  0x20
void serial_init(void);              /* optional: 115200 8N1, FIFOs on, interrupts off */
void serial_putc(char c);            /* polls LSR bit 5 (THR empty), then writes THR */
void serial_puts(const char *s);

/* ---- printf: %d %i %u %x %X %p %s %c %%, with optional '0', width and 'l' ---- */
int printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int vprintf(const char *fmt, va_list ap);

/* ---- exit: 32-bit write of v to the isa-debug-exit port 0xf4.
 * bt86 exits with status v; QEMU (isa-debug-exit) exits with (v << 1) | 1. */
#define DEBUG_EXIT_PORT 0xf4
static inline void debug_exit(uint32_t v) { outl(DEBUG_EXIT_PORT, v); }
/* debug_exit, then halt forever if the write did not stop the machine. */
void kit_exit(uint32_t v) __attribute__((noreturn));

/* ---- checks ---- */
extern int kit_passed, kit_failed;
void kit_check(int ok, const char *file, int line, const char *expr);
void kit_check_eq(uint32_t a, uint32_t b, const char *file, int line, const char *expr);
/* Prints "RESULT: N passed, M failed", writes (M == 0 ? 0 : 1) to the
 * debug-exit port and returns that value (if the write did not exit). */
int kit_finish(void);

#ifdef __FILE_NAME__
#define KIT_FILE __FILE_NAME__
#else
#define KIT_FILE __FILE__
#endif
#define CHECK(cond)     kit_check(!!(cond), KIT_FILE, __LINE__, #cond)
#define CHECK_EQ(a, b)  kit_check_eq((uint32_t)(a), (uint32_t)(b), KIT_FILE, __LINE__, #a " == " #b)

/* ---- lib.c (also what the compiler may call) ---- */
void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);
/* Whether `w` occurs in the string `s` (NULL: no). */
int kit_has_word(const char *s, const char *w);

/* ---- interrupts (lib.c) ---- */
/* An interrupt gate (ring 0, KIT_CODE_SEL) for `vector` in the kit's 256-entry IDT,
 * which it loads with lidt. `handler` must end with iret. */
void kit_set_interrupt_gate(uint8_t vector, void (*handler)(void));
/* Initializes the 8259A pair: IRQ 0-7 at vectors 0x20-0x27, IRQ 8-15 at 0x28-0x2f,
 * then the masks (a set bit masks the IRQ). */
void kit_pic_init(uint8_t master_mask, uint8_t slave_mask);
/* A byte queue an interrupt handler fills (kit_ring_put; bytes past 256 queued are
 * dropped) and the main loop empties, sleeping in `sti; hlt` while it is empty
 * (kit_ring_get_wait, which returns with interrupts enabled). */
struct kit_ring {
    volatile uint8_t buf[256];
    volatile uint32_t head, tail;
};
void kit_ring_put(struct kit_ring *r, uint8_t b);
uint8_t kit_ring_get_wait(struct kit_ring *r);

/* ---- a few CPU helpers ---- */
static inline uint32_t read_eflags(void) { uint32_t f; __asm__ volatile("pushfl; popl %0" : "=r"(f)); return f; }
static inline void write_eflags(uint32_t f) { __asm__ volatile("pushl %0; popfl" : : "r"(f) : "cc", "memory"); }
static inline uint32_t read_cr0(void) { uint32_t v; __asm__ volatile("movl %%cr0, %0" : "=r"(v)); return v; }
static inline void write_cr0(uint32_t v) { __asm__ volatile("movl %0, %%cr0" : : "r"(v) : "memory"); }
static inline uint32_t read_cr4(void) { uint32_t v; __asm__ volatile("movl %%cr4, %0" : "=r"(v)); return v; }
static inline void write_cr4(uint32_t v) { __asm__ volatile("movl %0, %%cr4" : : "r"(v) : "memory"); }
static inline uint64_t rdtsc(void) { uint32_t lo, hi; __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi)); return ((uint64_t)hi << 32) | lo; }
static inline void cpuid(uint32_t leaf, uint32_t sub, uint32_t *a, uint32_t *b, uint32_t *c, uint32_t *d)
{
    __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(sub));
}

#define EFLAGS_CF   (1u << 0)
#define EFLAGS_PF   (1u << 2)
#define EFLAGS_AF   (1u << 4)
#define EFLAGS_ZF   (1u << 6)
#define EFLAGS_SF   (1u << 7)
#define EFLAGS_TF   (1u << 8)
#define EFLAGS_IF   (1u << 9)
#define EFLAGS_DF   (1u << 10)
#define EFLAGS_OF   (1u << 11)
#define EFLAGS_IOPL (3u << 12)
#define EFLAGS_ARITH (EFLAGS_CF | EFLAGS_PF | EFLAGS_AF | EFLAGS_ZF | EFLAGS_SF | EFLAGS_OF)

#define CR0_PE (1u << 0)
#define CR0_MP (1u << 1)
#define CR0_EM (1u << 2)
#define CR0_TS (1u << 3)
#define CR0_ET (1u << 4)
#define CR0_NE (1u << 5)
#define CR0_WP (1u << 16)
#define CR0_PG (1u << 31)

#endif
