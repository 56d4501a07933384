/* bt86 nanobenchmarks, after Adams & Agesen (ASPLOS 2006): the kernel operations
 * of issue 10, each in a loop timed with the guest's own rdtsc.
 *
 * One multiboot v1 kernel (start.S + plat_guest.c + link.ld, like bench-guest).
 * Set-up: its own GDT (0x08/0x10 flat ring 0, 0x1b/0x23 flat ring 3, 0x28 a 32-bit
 * TSS whose esp0 is a stack of its own), `ltr`; both PICs masked (so IF=1 is safe);
 * an IDT (#DE and #PF handlers, DPL-3 interrupt gates 0x80 and 0x81 for the CPL-3
 * benchmark; every other exception reports and exits with status 2); the first
 * 16 MiB identity-mapped with 4 KiB supervisor writable pages (the three pages of
 * the CPL-3 loop -- code, data, stack -- are user pages); paging on. Then, each
 * selected by its name on the command line:
 *
 *   syscall    at CPL 3: `int $0x80` through a DPL-3 interrupt gate (stack switch
 *              to the TSS's esp0); the handler pushes %ds and %es, loads the kernel
 *              data selector into both, counts, returns eax + 1, pops %es and %ds,
 *              and irets to CPL 3. The loop and its rdtsc run at CPL 3.
 *   inb        `inb $0x80, %al` (CPL 0; so are all the others).
 *   clisti     `cli; sti`.
 *   pushfpopf  `pushfl; popfl`, with IF=1 (the popf sets IF, as local_irq_restore).
 *   cpuid      `cpuid`, leaf 0.
 *   wptoggle   clear CR0.WP, then set it again: one iteration = two CR0 writes.
 *   pgfault    touch a not-present page; the guest's #PF handler maps it (sets the
 *              PTE) and irets (the access is retried); then clear the PTE + INVLPG.
 *   de         `divl %ecx` with ecx = 0; the #DE handler advances the saved eip past
 *              the 2-byte div and irets.
 *   ptestore   a `mov` to a PTE of the current page table (a page that stays
 *              mapped: the value alternates between two frames), no INVLPG.
 *   callret    a call to a small noinline function and its ret.
 *   cr3reload  `mov %cr3, %eax; mov %eax, %cr3` (the same value).
 *   ptemod     PTE write (change the frame of one mapped page) + INVLPG, then a
 *              read through it.
 *   cr3switch  reload CR3 alternating between two page directories, reading one
 *              mapped word after each switch.
 *   forklike   copy the parent's page directory and the 1024 PTEs of a 4 MiB
 *              region (256 pages mapped) into a child, switch CR3 to the child,
 *              write each of the 256 pages, switch back.
 *
 * Each benchmark checks that its operation did what it should (in the loop where
 * that is cheap, otherwise by a check pass before/after it) and counts errors.
 *
 * Output: one line per benchmark, `bt86-nano <name> iterations=<n> cycles=<total>`,
 * then `bt86-nano done errors=<n>`. Exit status 0, or 1 if a check failed.
 *
 * The multiboot command line selects the benchmarks: empty (or "all") runs all of
 * them; otherwise only those whose names appear in it ("none" runs none: the set-up
 * alone, a baseline for the VMM's counters). */
#include "bench.h"

#define N_SYSCALL   20000
#define N_INB       100000
#define N_CLISTI    100000
#define N_PUSHFPOPF 100000
#define N_CPUID     100000
#define N_WPTOGGLE  20000
#define N_PGFAULT   2000
#define N_DE        10000
#define N_PTESTORE  200000
#define N_CALLRET   5000000
#define N_CR3RELOAD 50000
#define N_PTEMOD    5000
#define N_CR3SWITCH 2000
#define N_FORKLIKE  20
#define FORK_PAGES  256

#define PTE_P 0x001u
#define PTE_W 0x002u
#define PTE_U 0x004u

#define CR0_WP 0x00010000u
#define EFL_CF 0x00000001u
#define EFL_IF 0x00000200u

#define KCODE   0x08
#define KDATA   0x10
#define UCODE   0x1b
#define UDATA   0x23
#define TSS_SEL 0x28

#define L_PF     0x40000000u    /* pt_40[0]: not present between iterations */
#define L_PTE    0x40001000u    /* pt_40[1]: retargeted pg_a <-> pg_b (ptemod) */
#define L_PTS    0x40002000u    /* pt_40[2]: retargeted pg_a <-> pg_b (ptestore) */
#define L_CR3R   0x40003000u    /* pt_40[3]: cr3reload's TLB check */
#define L_RO     0x40004000u    /* pt_40[4]: read-only, wptoggle's check */
#define L_AS     0x50000000u    /* PDE 0x140: pt_50a in pd_main, pt_50b in pd_alt */
#define L_FORK   0x80000000u    /* PDE 0x200: pt_80 (parent) / pt_child */
#define P_FORK   0x00800000u    /* physical frames of the fork region: 8 MiB .. 9 MiB */
#define PDX(l) ((l) >> 22)
#define PTX(l) (((l) >> 12) & 1023)

#define MARK_A 0xaaaa0001u
#define MARK_B 0xbbbb0002u
#define MARK_X 0x11110003u
#define MARK_Y 0x22220004u
#define MARK_C 0xcccc0005u

typedef volatile u32 page_t[1024] __attribute__((aligned(4096)));

static page_t pd_main, pd_alt, pd_child;
static page_t pt_id[4];
static page_t pt_40, pt_50a, pt_50b, pt_80, pt_child;
static page_t pg_a, pg_b, pg_c, pg_x, pg_y;

static u64 idt[256] __attribute__((aligned(8)));
static u64 gdt[6] __attribute__((aligned(8))) = {
    0,
    0x00CF9A000000FFFFull,      /* 0x08: ring-0 code, flat, 32-bit */
    0x00CF92000000FFFFull,      /* 0x10: ring-0 data, flat */
    0x00CFFA000000FFFFull,      /* 0x18 (0x1b): ring-3 code, flat, 32-bit */
    0x00CFF2000000FFFFull,      /* 0x20 (0x23): ring-3 data, flat */
    0,                          /* 0x28: the TSS, filled in by setup() */
};
static struct __attribute__((packed)) {
    u16 limit;
    u32 base;
} idt_desc, gdt_desc;

/* A 32-bit TSS: only esp0/ss0 and the I/O map base (past the limit: no bitmap). */
static struct __attribute__((packed)) {
    u32 link, esp0, ss0, esp1, ss1, esp2, ss2, cr3, eip, eflags;
    u32 eax, ecx, edx, ebx, esp, ebp, esi, edi;
    u32 es, cs, ss, ds, fs, gs, ldt;
    u16 trap, iomap;
} tss __attribute__((aligned(16)));

/* The ring-0 stack the TSS switches to on an entry from CPL 3. */
u8 nano_kstack[8192] __attribute__((aligned(4096)));

/* The CPL-3 loop's data page and stack page (user pages). Offsets of the fields
 * are used by the assembly below: n 0, bad 4, ds 8, es 12, t0 16, t1 24. */
struct upage {
    u32 n, bad, ds, es;
    u32 t0_lo, t0_hi, t1_lo, t1_hi;
};
union {
    struct upage u;
    u8 pad[4096];
} nano_upage __attribute__((aligned(4096)));
u8 nano_ustack[4096] __attribute__((aligned(4096)));

volatile u32 pf_count, wp_faults, wp_expect, errors;
volatile u32 nano_sys_count, nano_sys_esp, nano_de_count;
u32 nano_kernel_esp;

extern char nano_pf_stub[], nano_exc_stub[], nano_de_stub[], nano_sys_stub[], nano_uexit_stub[];
extern char nano_user_text[], nano_user_text_end[], nano_user_syscall[], nano_div_insn[];
u32 nano_enter_user(u32 eip, u32 esp);

/* ------------------------------------------------------------------ helpers */

static inline u32 pa(const volatile void *p) { return (u32)p; }  /* identity */
static inline void invlpg(u32 la) { __asm__ volatile("invlpg (%0)" : : "r"(la) : "memory"); }
static inline u32 read_cr2(void) { u32 v; __asm__ volatile("movl %%cr2, %0" : "=r"(v)); return v; }
static inline u32 read_cr0(void) { u32 v; __asm__ volatile("movl %%cr0, %0" : "=r"(v)); return v; }
static inline void write_cr0(u32 v) { __asm__ volatile("movl %0, %%cr0" : : "r"(v) : "memory"); }
static inline u32 read_cr3(void) { u32 v; __asm__ volatile("movl %%cr3, %0" : "=r"(v)); return v; }
static inline void write_cr3(u32 v) { __asm__ volatile("movl %0, %%cr3" : : "r"(v) : "memory"); }
static inline void reload_cr3(void)
{
    __asm__ volatile("movl %%cr3, %%eax\n\tmovl %%eax, %%cr3" : : : "eax", "memory");
}
static inline u32 rd(u32 la) { return *(volatile u32 *)la; }
static inline void wr(u32 la, u32 v) { *(volatile u32 *)la = v; }
static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline u32 get_eflags(void)
{
    u32 f;
    __asm__ volatile("pushfl\n\tpopl %0" : "=r"(f) : : "memory");
    return f;
}
static inline void set_eflags(u32 f) { __asm__ volatile("pushl %0\n\tpopfl" : : "r"(f) : "memory", "cc"); }

static inline u64 rdtsc(void)
{
    u32 lo, hi;
    __asm__ __volatile__("rdtsc" : "=a"(lo), "=d"(hi) :: "memory");
    return (u64)hi << 32 | lo;
}

/* u64 to decimal without 64-bit division (no libgcc). */
static char *put_u64(char *p, u64 v)
{
    static const u64 pow10[] = {
        10000000000000000000ull, 1000000000000000000ull, 100000000000000000ull,
        10000000000000000ull, 1000000000000000ull, 100000000000000ull,
        10000000000000ull, 1000000000000ull, 100000000000ull, 10000000000ull,
        1000000000ull, 100000000ull, 10000000ull, 1000000ull, 100000ull,
        10000ull, 1000ull, 100ull, 10ull, 1ull,
    };
    int started = 0;
    for (u32 i = 0; i < sizeof(pow10) / sizeof(pow10[0]); i++) {
        char d = '0';
        while (v >= pow10[i]) {
            v -= pow10[i];
            d++;
        }
        if (d != '0' || started || i + 1 == sizeof(pow10) / sizeof(pow10[0])) {
            *p++ = d;
            started = 1;
        }
    }
    return p;
}

static char *put_str(char *p, const char *s)
{
    while (*s)
        *p++ = *s++;
    return p;
}

static char *put_hex32(char *p, u32 v)
{
    for (int sh = 28; sh >= 0; sh -= 4)
        *p++ = "0123456789abcdef"[(v >> sh) & 15];
    return p;
}

void plat_exit(int status);

static void report(const char *name, u32 n, u64 cycles)
{
    char line[128];
    char *p = put_str(line, "bt86-nano ");
    p = put_str(p, name);
    p = put_str(p, " iterations=");
    p = put_u64(p, n);
    p = put_str(p, " cycles=");
    p = put_u64(p, cycles);
    *p++ = '\n';
    *p = 0;
    plat_puts(line);
}

static void fail(const char *what, u32 a, u32 b)
{
    char line[128];
    char *p = put_str(line, "bt86-nano FAIL ");
    p = put_str(p, what);
    p = put_str(p, " 0x");
    p = put_hex32(p, a);
    p = put_str(p, " 0x");
    p = put_hex32(p, b);
    *p++ = '\n';
    *p = 0;
    plat_puts(line);
    errors++;
}

/* Counts a failure if a != b. */
static void check_eq(const char *what, u32 a, u32 b)
{
    if (a != b)
        fail(what, a, b);
}

/* ------------------------------------------------------------- exceptions */

/* Called by nano_pf_stub with the error code. Two faults are expected: a
 * not-present read of L_PF (pgfault: map pg_a) and, while wp_expect is set, a
 * supervisor write to the read-only L_RO with CR0.WP=1 (wptoggle's check: make it
 * writable). */
void nano_pf(u32 err)
{
    u32 cr2 = read_cr2();
    if (cr2 == L_PF && !(err & PTE_P)) {
        pf_count++;
        /* Not-present entries are never cached: no INVLPG needed before the retry. */
        pt_40[PTX(L_PF)] = pa(pg_a) | PTE_P | PTE_W;
        return;
    }
    if (cr2 == L_RO && err == (PTE_P | PTE_W) && wp_expect) {
        wp_faults++;
        pt_40[PTX(L_RO)] = pa(pg_c) | PTE_P | PTE_W;
        invlpg(L_RO);
        return;
    }
    fail("unexpected #PF (cr2, err)", cr2, err);
    plat_puts("bt86-nano done errors=1\n");
    plat_exit(2);
}

void nano_exc(void)
{
    plat_puts("bt86-nano FAIL unexpected exception\nbt86-nano done errors=1\n");
    plat_exit(2);
}

__asm__(".text\n"
        ".globl nano_pf_stub\n"
        "nano_pf_stub:\n\t"
        "pushal\n\t"
        "cld\n\t"
        "pushl 32(%esp)\n\t"          /* the error code */
        "call nano_pf\n\t"
        "addl $4, %esp\n\t"
        "popal\n\t"
        "addl $4, %esp\n\t"           /* drop the error code */
        "iret\n"

        ".globl nano_exc_stub\n"
        "nano_exc_stub:\n\t"
        "cld\n\t"
        "movl $0x10, %eax\n\t"
        "movw %ax, %ds\n\t"
        "movw %ax, %es\n\t"
        "call nano_exc\n"
        "1:\tcli\n\thlt\n\tjmp 1b\n"

        /* #DE (interrupt gate, CPL 0): only the div of de_loop() may fault; skip
         * its 2 bytes (f7 f1). */
        ".globl nano_de_stub\n"
        "nano_de_stub:\n\t"
        "cmpl $nano_div_insn, (%esp)\n\t"
        "jne nano_exc_stub\n\t"
        "addl $2, (%esp)\n\t"
        "incl nano_de_count\n\t"
        "iret\n"

        /* int $0x80 from CPL 3 (DPL-3 interrupt gate, on the TSS stack): a kernel
         * entry's segment-register work around a trivial system call that returns
         * eax + 1. Clobbers ecx. */
        ".globl nano_sys_stub\n"
        "nano_sys_stub:\n\t"
        "pushl %ds\n\t"
        "pushl %es\n\t"
        "movl $0x10, %ecx\n\t"
        "movw %cx, %ds\n\t"
        "movw %cx, %es\n\t"
        "incl nano_sys_count\n\t"
        "movl %esp, nano_sys_esp\n\t"
        "incl %eax\n\t"
        "popl %es\n\t"
        "popl %ds\n\t"
        "iret\n"

        /* u32 nano_enter_user(u32 eip, u32 esp): runs code at CPL 3 (CS 0x1b,
         * SS/DS/ES/FS/GS 0x23, EFLAGS 0x202) until it executes int $0x81. */
        ".globl nano_enter_user\n"
        "nano_enter_user:\n\t"
        "pushl %ebp\n\t"
        "pushl %ebx\n\t"
        "pushl %esi\n\t"
        "pushl %edi\n\t"
        "pushfl\n\t"
        "movl %esp, nano_kernel_esp\n\t"
        "movl 24(%esp), %eax\n\t"
        "movl 28(%esp), %ecx\n\t"
        "movl $0x23, %edx\n\t"
        "movw %dx, %ds\n\t"
        "movw %dx, %es\n\t"
        "movw %dx, %fs\n\t"
        "movw %dx, %gs\n\t"
        "pushl $0x23\n\t"
        "pushl %ecx\n\t"
        "pushl $0x202\n\t"
        "pushl $0x1b\n\t"
        "pushl %eax\n\t"
        "iret\n"

        /* int $0x81 from CPL 3: back to nano_enter_user's caller. */
        ".globl nano_uexit_stub\n"
        "nano_uexit_stub:\n\t"
        "movl $0x10, %eax\n\t"
        "movw %ax, %ds\n\t"
        "movw %ax, %es\n\t"
        "movw %ax, %fs\n\t"
        "movw %ax, %gs\n\t"
        "movl nano_kernel_esp, %esp\n\t"
        "popfl\n\t"
        "popl %edi\n\t"
        "popl %esi\n\t"
        "popl %ebx\n\t"
        "popl %ebp\n\t"
        "xorl %eax, %eax\n\t"
        "ret\n"

        /* The CPL-3 code, on pages of its own (user pages). The syscall loop:
         * n = nano_upage.n system calls, each returning its argument + 1. */
        ".section .text.nano_user, \"ax\", @progbits\n"
        ".balign 4096\n"
        ".globl nano_user_text\n"
        "nano_user_text:\n"
        ".globl nano_user_syscall\n"
        "nano_user_syscall:\n\t"
        "movl nano_upage, %esi\n\t"
        "xorl %ebx, %ebx\n\t"
        "xorl %edi, %edi\n\t"
        "rdtsc\n\t"
        "movl %eax, nano_upage+16\n\t"
        "movl %edx, nano_upage+20\n"
        "1:\tmovl %ebx, %eax\n\t"
        "int $0x80\n\t"
        "incl %ebx\n\t"
        "xorl %ebx, %eax\n\t"          /* 0 if the call returned i + 1 */
        "orl %eax, %edi\n\t"
        "cmpl %esi, %ebx\n\t"
        "jne 1b\n\t"
        "rdtsc\n\t"
        "movl %eax, nano_upage+24\n\t"
        "movl %edx, nano_upage+28\n\t"
        "movl %edi, nano_upage+4\n\t"
        "xorl %eax, %eax\n\t"
        "movw %ds, %ax\n\t"
        "movl %eax, nano_upage+8\n\t"
        "movw %es, %ax\n\t"
        "movl %eax, nano_upage+12\n\t"
        "int $0x81\n"
        "2:\tjmp 2b\n"
        ".balign 4096\n"
        ".globl nano_user_text_end\n"
        "nano_user_text_end:\n"
        ".text\n"

        /* bench_main(): start.S calls it with the multiboot info pointer still in
         * %ebx (nothing before the call touches %ebx). */
        ".globl bench_main\n"
        "bench_main:\n\t"
        "pushl %ebx\n\t"
        "call nano_main\n\t"
        "addl $4, %esp\n\t"
        "ret\n");

/* dpl 0 or 3; a 32-bit interrupt gate */
static void set_gate(unsigned vec, u32 handler, u32 dpl)
{
    u32 lo = (handler & 0xffff) | ((u32)KCODE << 16);
    u32 hi = (handler & 0xffff0000) | ((0x8eu | (dpl << 5)) << 8);
    idt[vec] = ((u64)hi << 32) | lo;
}

/* ---------------------------------------------------------------- set-up */

static void make_user(u32 la)
{
    pt_id[PDX(la)][PTX(la)] |= PTE_U;
    pd_main[PDX(la)] |= PTE_U;
}

static void setup(void)
{
    /* mask both PICs: the CPL-3 loop runs with IF=1, clisti and pushfpopf set IF */
    outb(0x21, 0xff);
    outb(0xa1, 0xff);

    /* GDT with ring-3 segments and a TSS */
    u32 base = (u32)&tss, limit = sizeof tss - 1;
    tss.esp0 = (u32)nano_kstack + sizeof nano_kstack;
    tss.ss0 = KDATA;
    tss.iomap = sizeof tss;
    gdt[5] = ((u64)((base >> 16) & 0xff) | (0x89u << 8) | (limit & 0xf0000u) | (base & 0xff000000u)) << 32 |
             ((limit & 0xffff) | ((base & 0xffff) << 16));
    gdt_desc.limit = sizeof gdt - 1;
    gdt_desc.base = (u32)gdt;
    __asm__ volatile("lgdt %0\n\t"
                     "ljmp $0x08, $1f\n"
                     "1:\tmovl $0x10, %%eax\n\t"
                     "movw %%ax, %%ds\n\t"
                     "movw %%ax, %%es\n\t"
                     "movw %%ax, %%fs\n\t"
                     "movw %%ax, %%gs\n\t"
                     "movw %%ax, %%ss\n\t"
                     "movw $0x28, %%ax\n\t"
                     "ltr %%ax"
                     : : "m"(gdt_desc) : "eax", "memory");

    for (unsigned v = 0; v < 32; v++)
        set_gate(v, (u32)nano_exc_stub, 0);
    set_gate(0, (u32)nano_de_stub, 0);
    set_gate(14, (u32)nano_pf_stub, 0);
    set_gate(0x80, (u32)nano_sys_stub, 3);
    set_gate(0x81, (u32)nano_uexit_stub, 3);
    idt_desc.limit = sizeof idt - 1;
    idt_desc.base = (u32)idt;
    __asm__ volatile("lidt %0" : : "m"(idt_desc) : "memory");

    /* identity map 0 .. 16 MiB, 4 KiB pages, supervisor, writable */
    for (u32 t = 0; t < 4; t++) {
        for (u32 i = 0; i < 1024; i++)
            pt_id[t][i] = ((t << 22) | (i << 12)) | PTE_P | PTE_W;
        pd_main[t] = pa(pt_id[t]) | PTE_P | PTE_W;
    }
    /* the CPL-3 loop's pages */
    for (u32 la = (u32)nano_user_text; la < (u32)nano_user_text_end; la += 4096)
        make_user(la);
    make_user((u32)&nano_upage);
    make_user((u32)nano_ustack);

    pg_a[0] = MARK_A;
    pg_b[0] = MARK_B;
    pg_c[0] = MARK_C;
    pg_x[0] = MARK_X;
    pg_y[0] = MARK_Y;

    pd_main[PDX(L_PF)] = pa(pt_40) | PTE_P | PTE_W;     /* pt_40[0] not present */
    pt_40[PTX(L_PTE)] = pa(pg_a) | PTE_P | PTE_W;
    pt_40[PTX(L_PTS)] = pa(pg_a) | PTE_P | PTE_W;
    pt_40[PTX(L_CR3R)] = pa(pg_a) | PTE_P | PTE_W;
    pt_40[PTX(L_RO)] = pa(pg_c) | PTE_P;                /* read-only */

    pt_50a[0] = pa(pg_x) | PTE_P | PTE_W;
    pt_50b[0] = pa(pg_y) | PTE_P | PTE_W;
    pd_main[PDX(L_AS)] = pa(pt_50a) | PTE_P | PTE_W;

    for (u32 i = 0; i < FORK_PAGES; i++)
        pt_80[i] = (P_FORK + (i << 12)) | PTE_P | PTE_W;
    pd_main[PDX(L_FORK)] = pa(pt_80) | PTE_P | PTE_W;

    for (u32 i = 0; i < 1024; i++)
        pd_alt[i] = pd_main[i];
    pd_alt[PDX(L_AS)] = pa(pt_50b) | PTE_P | PTE_W;

    write_cr3(pa(pd_main));
    u32 cr0 = read_cr0();
    cr0 |= 0x80000000u;                               /* PG (WP left as it is) */
    __asm__ volatile("movl %0, %%cr0\n\tjmp 1f\n1:" : : "r"(cr0) : "memory");
}

/* --------------------------------------------------------- the benchmarks */

static void bench_syscall(void)
{
    nano_upage.u.n = N_SYSCALL;
    nano_upage.u.bad = 0xdead;
    u32 c0 = nano_sys_count;
    nano_enter_user((u32)nano_user_syscall, (u32)nano_ustack + sizeof nano_ustack);
    /* back at CPL 0 */
    u16 cs;
    __asm__ volatile("movw %%cs, %0" : "=r"(cs));
    check_eq("syscall: not back at CPL 0 (cs, want)", cs, KCODE);
    check_eq("syscall: wrong return values (bad, 0)", nano_upage.u.bad, 0);
    check_eq("syscall: handler runs (got, want)", nano_sys_count - c0, N_SYSCALL);
    /* the handler's esp after its two pushes: the 5-word frame + ds + es below esp0 */
    check_eq("syscall: handler not on the TSS stack (esp, want)", nano_sys_esp,
             (u32)nano_kstack + sizeof nano_kstack - 28);
    check_eq("syscall: user ds after iret (ds, want)", nano_upage.u.ds, UDATA);
    check_eq("syscall: user es after iret (es, want)", nano_upage.u.es, UDATA);
    u64 t0 = (u64)nano_upage.u.t0_hi << 32 | nano_upage.u.t0_lo;
    u64 t1 = (u64)nano_upage.u.t1_hi << 32 | nano_upage.u.t1_lo;
    report("syscall", N_SYSCALL, t1 - t0);
}

static void bench_inb(void)
{
    u32 first = 0;
    __asm__ volatile("inb $0x80, %%al" : "+a"(first));
    first &= 0xff;
    u32 bad = 0;
    u64 t0 = rdtsc();
    for (u32 i = 0; i < N_INB; i++) {
        u32 v = i << 8;                 /* inb writes %al only */
        __asm__ volatile("inb $0x80, %%al" : "+a"(v));
        bad |= v ^ ((i << 8) | first);
    }
    u64 t1 = rdtsc();
    check_eq("inb: eax other than the first read (xor, 0)", bad, 0);
    report("inb", N_INB, t1 - t0);
}

static void bench_clisti(void)
{
    u32 f0 = get_eflags();
    /* check pass: cli clears IF, sti sets it (seen by pushf) */
    u32 off, on;
    __asm__ volatile("cli\n\tpushfl\n\tpopl %0\n\tsti\n\tpushfl\n\tpopl %1"
                     : "=r"(off), "=r"(on) : : "memory");
    check_eq("clisti: IF after cli (eflags & IF, 0)", off & EFL_IF, 0);
    check_eq("clisti: IF after sti (eflags & IF, IF)", on & EFL_IF, EFL_IF);
    __asm__ volatile("cli" ::: "memory");
    u64 t0 = rdtsc();
    for (u32 i = 0; i < N_CLISTI; i++)
        __asm__ volatile("cli\n\tsti" ::: "memory");
    u64 t1 = rdtsc();
    check_eq("clisti: IF after the loop (eflags & IF, IF)", get_eflags() & EFL_IF, EFL_IF);
    set_eflags(f0);
    report("clisti", N_CLISTI, t1 - t0);
}

static void bench_pushfpopf(void)
{
    u32 f0 = get_eflags();
    /* check pass: popf writes CF and IF */
    u32 a, b;
    __asm__ volatile("pushfl\n\t"
                     "orl $0x201, (%%esp)\n\t"           /* CF, IF */
                     "popfl\n\t"
                     "pushfl\n\t"
                     "popl %0\n\t"
                     "pushfl\n\t"
                     "andl $0xfffffdfe, (%%esp)\n\t"     /* ~(CF | IF) */
                     "popfl\n\t"
                     "pushfl\n\t"
                     "popl %1"
                     : "=r"(a), "=r"(b) : : "memory", "cc");
    check_eq("pushfpopf: popf set CF|IF (flags, want)", a & (EFL_CF | EFL_IF), EFL_CF | EFL_IF);
    check_eq("pushfpopf: popf cleared CF|IF (flags, want)", b & (EFL_CF | EFL_IF), 0);
    __asm__ volatile("sti" ::: "memory");             /* the loop runs with IF=1 */
    u32 before = get_eflags();
    u64 t0 = rdtsc();
    for (u32 i = 0; i < N_PUSHFPOPF; i++)
        __asm__ volatile("pushfl\n\tpopfl" ::: "memory", "cc");
    u64 t1 = rdtsc();
    u32 after = get_eflags();
    /* the arithmetic flags differ (the loop's cmp); IF, IOPL, DF, AC, ID must not */
    check_eq("pushfpopf: system flags changed (after, before)", after & 0x00247600u, before & 0x00247600u);
    set_eflags(f0);
    report("pushfpopf", N_PUSHFPOPF, t1 - t0);
}

static void bench_cpuid(void)
{
    u32 a0, b0, c0, d0;
    __asm__ volatile("cpuid" : "=a"(a0), "=b"(b0), "=c"(c0), "=d"(d0) : "a"(0), "c"(0));
    if (a0 < 1 || !b0)
        fail("cpuid: leaf 0 (max leaf, vendor ebx)", a0, b0);
    u32 bad = 0;
    u64 t0 = rdtsc();
    for (u32 i = 0; i < N_CPUID; i++) {
        u32 a, b, c, d;
        __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(0), "c"(0));
        bad |= (a ^ a0) | (b ^ b0) | (c ^ c0) | (d ^ d0);
    }
    u64 t1 = rdtsc();
    check_eq("cpuid: leaf 0 changed between calls (xor, 0)", bad, 0);
    report("cpuid", N_CPUID, t1 - t0);
}

/* With CR0.WP=0 a supervisor write to the read-only L_RO succeeds; with WP=1 it
 * takes #PF(P|W), whose handler makes the page writable (then made read-only
 * again). */
static void check_wp(const char *when)
{
    u32 cr0 = read_cr0();
    u32 f0 = wp_faults;
    write_cr0(cr0 & ~CR0_WP);
    wr(L_RO, MARK_A);                   /* no fault */
    check_eq(when, wp_faults - f0, 0);
    check_eq(when, rd(L_RO), MARK_A);
    write_cr0(cr0 | CR0_WP);
    wp_expect = 1;
    wr(L_RO, MARK_C);                   /* #PF, made writable, retried */
    wp_expect = 0;
    check_eq(when, wp_faults - f0, 1);
    check_eq(when, pg_c[0], MARK_C);
    pt_40[PTX(L_RO)] = pa(pg_c) | PTE_P;
    invlpg(L_RO);
    write_cr0(cr0);
}

static void bench_wptoggle(void)
{
    u32 cr0 = read_cr0();
    u32 off = cr0 & ~CR0_WP, on = cr0 | CR0_WP;
    check_wp("wptoggle: WP semantics before the loop (got, want)");
    u64 t0 = rdtsc();
    for (u32 i = 0; i < N_WPTOGGLE; i++) {
        write_cr0(off);
        write_cr0(on);
    }
    u64 t1 = rdtsc();
    check_eq("wptoggle: CR0 after the loop (cr0, want)", read_cr0(), on);
    check_wp("wptoggle: WP semantics after the loop (got, want)");
    write_cr0(cr0);
    report("wptoggle", N_WPTOGGLE, t1 - t0);
}

static void bench_pgfault(void)
{
    u32 bad = 0, c0 = pf_count;
    u64 t0 = rdtsc();
    for (u32 i = 0; i < N_PGFAULT; i++) {
        bad |= rd(L_PF) ^ MARK_A;       /* faults; the handler maps pg_a; retried */
        pt_40[PTX(L_PF)] = 0;
        invlpg(L_PF);
    }
    u64 t1 = rdtsc();
    if (bad)
        fail("pgfault read wrong value", bad, 0);
    if (pf_count - c0 != N_PGFAULT)
        fail("pgfault fault count (got, want)", pf_count - c0, N_PGFAULT);
    report("pgfault", N_PGFAULT, t1 - t0);
}

/* n divisions by zero; returns the or of every (eax ^ dividend) and edx after the
 * skipped div (both must be unchanged: 0). */
static __attribute__((noinline)) u32 de_loop(u32 n)
{
    u32 bad;
    __asm__ volatile("xorl %%edi, %%edi\n"
                     "1:\tmovl %%ebx, %%eax\n\t"
                     "xorl %%edx, %%edx\n\t"
                     "xorl %%ecx, %%ecx\n"
                     ".globl nano_div_insn\n"
                     "nano_div_insn:\n\t"
                     "divl %%ecx\n\t"             /* f7 f1: #DE, skipped by the handler */
                     "xorl %%ebx, %%eax\n\t"
                     "orl %%eax, %%edi\n\t"
                     "orl %%edx, %%edi\n\t"
                     "decl %%ebx\n\t"
                     "jnz 1b"
                     : "=D"(bad), "+b"(n)
                     :
                     : "eax", "ecx", "edx", "cc", "memory");
    return bad;
}

static void bench_de(void)
{
    u32 c0 = nano_de_count;
    u64 t0 = rdtsc();
    u32 bad = de_loop(N_DE);
    u64 t1 = rdtsc();
    check_eq("de: registers changed by the faulting div (xor, 0)", bad, 0);
    check_eq("de: handler runs (got, want)", nano_de_count - c0, N_DE);
    report("de", N_DE, t1 - t0);
}

static void bench_ptestore(void)
{
    const u32 val[2] = {pa(pg_a) | PTE_P | PTE_W, pa(pg_b) | PTE_P | PTE_W};
    volatile u32 *pte = &pt_40[PTX(L_PTS)];
    *pte = val[0];
    invlpg(L_PTS);
    check_eq("ptestore: first read (got, want)", rd(L_PTS), MARK_A);   /* mapped, in use */
    u64 t0 = rdtsc();
    for (u32 i = 0; i < N_PTESTORE; i++)
        *pte = val[i & 1];
    u64 t1 = rdtsc();
    u32 last = (N_PTESTORE - 1) & 1;
    check_eq("ptestore: PTE after the loop (got, want)", *pte, val[last]);
    invlpg(L_PTS);
    check_eq("ptestore: read after INVLPG (got, want)", rd(L_PTS), last ? MARK_B : MARK_A);
    report("ptestore", N_PTESTORE, t1 - t0);
}

static __attribute__((noinline, noipa)) u32 nano_inc(u32 x)
{
    return x + 1;
}

static void bench_callret(void)
{
    u32 x = 0;
    u64 t0 = rdtsc();
    for (u32 i = 0; i < N_CALLRET; i++)
        x = nano_inc(x);
    u64 t1 = rdtsc();
    check_eq("callret: result (got, want)", x, N_CALLRET);
    report("callret", N_CALLRET, t1 - t0);
}

static void bench_cr3reload(void)
{
    u32 cr3 = read_cr3();
    u64 t0 = rdtsc();
    for (u32 i = 0; i < N_CR3RELOAD; i++)
        reload_cr3();
    u64 t1 = rdtsc();
    check_eq("cr3reload: CR3 after the loop (got, want)", read_cr3(), cr3);
    /* check pass: a CR3 reload flushes a changed PTE (no INVLPG) */
    volatile u32 *pte = &pt_40[PTX(L_CR3R)];
    for (u32 k = 0; k < 4; k++) {
        u32 odd = k & 1;
        check_eq("cr3reload: read before the PTE write (got, want)", rd(L_CR3R), odd ? MARK_B : MARK_A);
        *pte = (odd ? pa(pg_a) : pa(pg_b)) | PTE_P | PTE_W;
        reload_cr3();
        check_eq("cr3reload: read after the reload (got, want)", rd(L_CR3R), odd ? MARK_A : MARK_B);
    }
    report("cr3reload", N_CR3RELOAD, t1 - t0);
}

static void bench_ptemod(void)
{
    u32 bad = 0;
    u64 t0 = rdtsc();
    for (u32 i = 0; i < N_PTEMOD; i++) {
        u32 odd = i & 1;
        pt_40[PTX(L_PTE)] = (odd ? pa(pg_b) : pa(pg_a)) | PTE_P | PTE_W;
        invlpg(L_PTE);
        bad |= rd(L_PTE) ^ (odd ? MARK_B : MARK_A);
    }
    u64 t1 = rdtsc();
    if (bad)
        fail("ptemod stale read", bad, 0);
    report("ptemod", N_PTEMOD, t1 - t0);
}

static void bench_cr3switch(void)
{
    u32 bad = 0;
    u64 t0 = rdtsc();
    for (u32 i = 0; i < N_CR3SWITCH; i++) {
        u32 odd = i & 1;
        write_cr3(odd ? pa(pd_alt) : pa(pd_main));
        bad |= rd(L_AS) ^ (odd ? MARK_Y : MARK_X);
    }
    u64 t1 = rdtsc();
    write_cr3(pa(pd_main));
    if (bad)
        fail("cr3switch stale read", bad, 0);
    report("cr3switch", N_CR3SWITCH, t1 - t0);
}

static void bench_forklike(void)
{
    u64 t0 = rdtsc();
    for (u32 it = 0; it < N_FORKLIKE; it++) {
        for (u32 i = 0; i < 1024; i++)
            pd_child[i] = pd_main[i];
        for (u32 i = 0; i < 1024; i++)
            pt_child[i] = pt_80[i];
        pd_child[PDX(L_FORK)] = pa(pt_child) | PTE_P | PTE_W;
        write_cr3(pa(pd_child));
        for (u32 k = 0; k < FORK_PAGES; k++)
            wr(L_FORK + (k << 12), (it << 16) | k);
        write_cr3(pa(pd_main));
    }
    u64 t1 = rdtsc();
    /* the child shares the parent's frames: the parent sees the last writes */
    u32 bad = 0;
    for (u32 k = 0; k < FORK_PAGES; k++)
        bad |= rd(L_FORK + (k << 12)) ^ (((N_FORKLIKE - 1) << 16) | k);
    if (bad)
        fail("forklike parent does not see the child's writes", bad, 0);
    report("forklike", N_FORKLIKE, t1 - t0);
}

/* ------------------------------------------------------------------ main */

struct mb_info {
    u32 flags, mem_lower, mem_upper, boot_device, cmdline;
};

static const struct {
    const char *name;
    void (*run)(void);
} benches[] = {
    {"syscall", bench_syscall},     {"inb", bench_inb},         {"clisti", bench_clisti},
    {"pushfpopf", bench_pushfpopf}, {"cpuid", bench_cpuid},     {"wptoggle", bench_wptoggle},
    {"pgfault", bench_pgfault},     {"de", bench_de},           {"ptestore", bench_ptestore},
    {"callret", bench_callret},     {"cr3reload", bench_cr3reload}, {"ptemod", bench_ptemod},
    {"cr3switch", bench_cr3switch}, {"forklike", bench_forklike},
};
#define N_BENCHES (sizeof benches / sizeof benches[0])

/* Does `name` appear as a word in `s`? */
static int has_word(const char *s, const char *name)
{
    for (const char *p = s; *p; p++) {
        if (p != s && p[-1] != ' ' && p[-1] != ',')
            continue;
        const char *a = p, *b = name;
        while (*b && *a == *b)
            a++, b++;
        if (!*b && (*a == 0 || *a == ' ' || *a == ','))
            return 1;
    }
    return 0;
}

int nano_main(const struct mb_info *mbi)
{
    char cmd[256];
    u32 n = 0;
    if (mbi && (mbi->flags & 4) && mbi->cmdline) {
        const char *s = (const char *)mbi->cmdline;
        while (s[n] && n + 1 < sizeof cmd) {
            cmd[n] = s[n];
            n++;
        }
    }
    cmd[n] = 0;
    /* QEMU passes the kernel's file name as the first word of the command line:
     * consider only what selects a benchmark. */
    int all = !has_word(cmd, "none");
    for (u32 i = 0; i < N_BENCHES; i++)
        if (has_word(cmd, benches[i].name))
            all = 0;

    setup();
    for (u32 i = 0; i < N_BENCHES; i++)
        if (all || has_word(cmd, benches[i].name))
            benches[i].run();

    char line[64];
    char *p = put_str(line, "bt86-nano done errors=");
    p = put_u64(p, errors);
    *p++ = '\n';
    *p = 0;
    plat_puts(line);
    return errors ? 1 : 0;
}
