/* bt86 paging nanobenchmarks, after Adams & Agesen (ASPLOS 2006).
 *
 * One multiboot v1 kernel (start.S + plat_guest.c + link.ld, like bench-guest).
 * It installs an IDT (#PF on vector 14, interrupt gate; every other exception
 * reports and exits with status 2), identity-maps the first 16 MiB with 4 KiB
 * supervisor writable pages, turns paging on and runs, each timed with rdtsc:
 *
 *   pgfault    touch a not-present page; the guest's #PF handler maps it
 *              (sets the PTE) and returns; then clear the PTE + INVLPG.
 *   ptemod     PTE write (change the frame of one mapped page) + INVLPG,
 *              then a read through it.
 *   cr3switch  reload CR3 alternating between two page directories, reading
 *              one mapped word after each switch.
 *   forklike   copy the parent's page directory and the 1024 PTEs of a 4 MiB
 *              region (256 pages mapped) into a child, switch CR3 to the child,
 *              write each of the 256 pages, switch back.
 *
 * Output: one line per benchmark, `bt86-nano <name> iterations=<n> cycles=<total>`,
 * then `bt86-nano done errors=<n>`. Exit status 0, or 1 if a check failed.
 *
 * The multiboot command line selects the benchmarks: empty (or "all") runs all
 * four; otherwise only those whose names appear in it ("none" runs none: the
 * set-up alone, a baseline for the VMM's counters). */
#include "bench.h"

#define N_PGFAULT   2000
#define N_PTEMOD    5000
#define N_CR3SWITCH 2000
#define N_FORKLIKE  20
#define FORK_PAGES  256

#define PTE_P 0x001u
#define PTE_W 0x002u

#define L_PF     0x40000000u    /* pt_40[0]: not present between iterations */
#define L_PTE    0x40001000u    /* pt_40[1]: retargeted pg_a <-> pg_b */
#define L_AS     0x50000000u    /* PDE 0x140: pt_50a in pd_main, pt_50b in pd_alt */
#define L_FORK   0x80000000u    /* PDE 0x200: pt_80 (parent) / pt_child */
#define P_FORK   0x00800000u    /* physical frames of the fork region: 8 MiB .. 9 MiB */
#define PDX(l) ((l) >> 22)

#define MARK_A 0xaaaa0001u
#define MARK_B 0xbbbb0002u
#define MARK_X 0x11110003u
#define MARK_Y 0x22220004u

typedef volatile u32 page_t[1024] __attribute__((aligned(4096)));

static page_t pd_main, pd_alt, pd_child;
static page_t pt_id[4];
static page_t pt_40, pt_50a, pt_50b, pt_80, pt_child;
static page_t pg_a, pg_b, pg_x, pg_y;

static u64 idt[256] __attribute__((aligned(8)));
static struct __attribute__((packed)) {
    u16 limit;
    u32 base;
} idt_desc;

volatile u32 pf_count, errors;

extern char nano_pf_stub[], nano_exc_stub[];

/* ------------------------------------------------------------------ helpers */

static inline u32 pa(const volatile void *p) { return (u32)p; }  /* identity */
static inline void invlpg(u32 la) { __asm__ volatile("invlpg (%0)" : : "r"(la) : "memory"); }
static inline u32 read_cr2(void) { u32 v; __asm__ volatile("movl %%cr2, %0" : "=r"(v)); return v; }
static inline void write_cr3(u32 v) { __asm__ volatile("movl %0, %%cr3" : : "r"(v) : "memory"); }
static inline u32 rd(u32 la) { return *(volatile u32 *)la; }
static inline void wr(u32 la, u32 v) { *(volatile u32 *)la = v; }

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

/* ------------------------------------------------------------- exceptions */

/* Called by nano_pf_stub with the error code. */
void nano_pf(u32 err)
{
    u32 cr2 = read_cr2();
    if (cr2 != L_PF || (err & PTE_P)) {
        fail("unexpected #PF (cr2, err)", cr2, err);
        plat_puts("bt86-nano done errors=1\n");
        plat_exit(2);
    }
    pf_count++;
    /* Not-present entries are never cached: no INVLPG needed before the retry. */
    pt_40[0] = pa(pg_a) | PTE_P | PTE_W;
}

void nano_exc(void)
{
    plat_puts("bt86-nano FAIL unexpected exception (not #PF)\nbt86-nano done errors=1\n");
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
        "call nano_exc\n"
        "1:\tcli\n\thlt\n\tjmp 1b\n"
        /* bench_main(): start.S calls it with the multiboot info pointer still in
         * %ebx (nothing before the call touches %ebx). */
        ".globl bench_main\n"
        "bench_main:\n\t"
        "pushl %ebx\n\t"
        "call nano_main\n\t"
        "addl $4, %esp\n\t"
        "ret\n");

static void set_gate(unsigned vec, u32 handler)
{
    u32 lo = (handler & 0xffff) | (0x08u << 16);
    u32 hi = (handler & 0xffff0000) | (0x8eu << 8);  /* present, DPL 0, 32-bit interrupt gate */
    idt[vec] = ((u64)hi << 32) | lo;
}

/* ---------------------------------------------------------------- set-up */

static void setup(void)
{
    for (unsigned v = 0; v < 32; v++)
        set_gate(v, (u32)nano_exc_stub);
    set_gate(14, (u32)nano_pf_stub);
    idt_desc.limit = sizeof idt - 1;
    idt_desc.base = (u32)idt;
    __asm__ volatile("lidt %0" : : "m"(idt_desc) : "memory");

    /* identity map 0 .. 16 MiB, 4 KiB pages, supervisor, writable */
    for (u32 t = 0; t < 4; t++) {
        for (u32 i = 0; i < 1024; i++)
            pt_id[t][i] = ((t << 22) | (i << 12)) | PTE_P | PTE_W;
        pd_main[t] = pa(pt_id[t]) | PTE_P | PTE_W;
    }
    pg_a[0] = MARK_A;
    pg_b[0] = MARK_B;
    pg_x[0] = MARK_X;
    pg_y[0] = MARK_Y;

    pd_main[PDX(L_PF)] = pa(pt_40) | PTE_P | PTE_W;     /* pt_40[0] not present */
    pt_40[1] = pa(pg_a) | PTE_P | PTE_W;

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
    u32 cr0;
    __asm__ volatile("movl %%cr0, %0" : "=r"(cr0));
    cr0 |= 0x80000000u;                               /* PG (WP left as it is) */
    __asm__ volatile("movl %0, %%cr0\n\tjmp 1f\n1:" : : "r"(cr0) : "memory");
}

/* --------------------------------------------------------- the benchmarks */

static void bench_pgfault(void)
{
    u32 bad = 0, c0 = pf_count;
    u64 t0 = rdtsc();
    for (u32 i = 0; i < N_PGFAULT; i++) {
        bad |= rd(L_PF) ^ MARK_A;       /* faults; the handler maps pg_a; retried */
        pt_40[0] = 0;
        invlpg(L_PF);
    }
    u64 t1 = rdtsc();
    if (bad)
        fail("pgfault read wrong value", bad, 0);
    if (pf_count - c0 != N_PGFAULT)
        fail("pgfault fault count (got, want)", pf_count - c0, N_PGFAULT);
    report("pgfault", N_PGFAULT, t1 - t0);
}

static void bench_ptemod(void)
{
    u32 bad = 0;
    u64 t0 = rdtsc();
    for (u32 i = 0; i < N_PTEMOD; i++) {
        u32 odd = i & 1;
        pt_40[1] = (odd ? pa(pg_b) : pa(pg_a)) | PTE_P | PTE_W;
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
    char cmd[128];
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
    int all = !(has_word(cmd, "pgfault") || has_word(cmd, "ptemod") || has_word(cmd, "cr3switch") ||
                has_word(cmd, "forklike") || has_word(cmd, "none"));

    setup();
    if (all || has_word(cmd, "pgfault"))
        bench_pgfault();
    if (all || has_word(cmd, "ptemod"))
        bench_ptemod();
    if (all || has_word(cmd, "cr3switch"))
        bench_cr3switch();
    if (all || has_word(cmd, "forklike"))
        bench_forklike();

    char line[64];
    char *p = put_str(line, "bt86-nano done errors=");
    p = put_u64(p, errors);
    *p++ = '\n';
    *p = 0;
    plat_puts(line);
    return errors ? 1 : 0;
}
