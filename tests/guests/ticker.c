/*
 * ticker: computes and prints while its timer ticks, for checkpoint tests. Its whole
 * output depends only on its computation, never on when the ticks come, so a run
 * checkpointed anywhere and restored prints exactly what an uninterrupted run does.
 *
 * Set-up: an IDT with IRQ 0 at vector 0x20 (counts ticks), the PIC with IRQ 0 only,
 * PIT channel 0 in mode 2 at about 1 kHz, interrupts on; CR4.OSFXSR set for SSE.
 * The TSC is calibrated against 50 ticks.
 *
 * Each step k (command line `steps=N`, default 300):
 * - x87: a product and a sum kept on the x87 stack through 100,000 multiply-adds,
 *   with a control word that varies by step (precision, rounding): the result's bits
 *   depend on the x87 registers and the control word surviving wherever the run is
 *   stopped;
 * - SSE: integer and single-precision accumulators in xmm0-7 through 100,000
 *   rounds, with MXCSR rounding down on odd steps;
 * - memory: 16 KiB of a 1 MiB buffer (filled at start: the guest touches about
 *   1 MiB) rewritten and summed;
 * - with `paging` on the command line: 2-level paging (0-16 MiB identity, 4 KiB
 *   pages) in four address spaces (page directories), each mapping its own 64 KiB
 *   window at 0x40000000; step k switches CR3 to space k % 4 and adds to its window;
 * - waits for the next tick in `hlt` (with `notimer`: no interrupts at all, no
 *   waiting and no TSC check: for an engine without the PIT, KVM today; with
 *   `nofpu` no x87 and SSE work: for a software KVM that cannot emulate them);
 * - prints one line of results (only every N-th step and the last with `every=N`).
 * Time must go on smoothly: between two steps neither the tick count nor the TSC
 * may move by `maxgap=MS` (default 2000 ms) or more (a checkpoint restored later
 * must not jump the guest's clock); checked at the end, with the step count. Exit 0.
 */
#include "kit.h"

#define BIG (1u << 20)
static uint8_t big[BIG] __attribute__((aligned(4096)));

static volatile uint32_t ticks;

void irq0_stub(void);
__asm__(".globl irq0_stub\nirq0_stub:\n"
        " pushl %eax\n"
        " incl ticks\n"
        " movb $0x20, %al\n"
        " outb %al, $0x20\n"
        " popl %eax\n"
        " iret\n");

static void wait_tick(void)
{
    uint32_t t = ticks;
    while (ticks == t)
        __asm__ volatile("hlt");
}

static const double x87_factor = 1.00000011920928955078125;

/* prod *= factor; sum += prod, n times, all on the x87 stack, under control word cw. */
static uint64_t x87_work(uint32_t n, uint16_t cw)
{
    uint64_t out;
    uint16_t saved;
    __asm__ volatile(
        "fnstcw %[saved]\n"
        "fldcw %[cw]\n"
        "fldl %[f]\n"
        "fld1\n"
        "fldz\n"
        "1:\n"
        "fxch %%st(1)\n"
        "fmul %%st(2), %%st\n"
        "fadd %%st, %%st(1)\n"
        "fxch %%st(1)\n"
        "decl %[n]\n"
        "jnz 1b\n"
        "fstpl %[out]\n"
        "fstp %%st(0)\n"
        "fstp %%st(0)\n"
        "fldcw %[saved]\n"
        : [out] "=m"(out), [n] "+r"(n), [saved] "=m"(saved)
        : [cw] "m"(cw), [f] "m"(x87_factor)
        : "st", "st(1)", "st(2)", "cc", "memory");
    return out;
}

static uint32_t sse_init[32] __attribute__((aligned(16)));
/* ticker-asm.S: loads xmm0-7 from `in`, runs the rounds under `mxcsr`, stores the
 * folded result at `out` (the kit builds C without SSE registers). */
void sse_rounds(uint32_t n, uint32_t mxcsr, const uint32_t *in, uint32_t *out);
static uint32_t sse_out[4] __attribute__((aligned(16)));

/* Integer and float accumulators in xmm0-7 through n rounds under MXCSR `mxcsr`. */
static uint32_t sse_work(uint32_t n, uint32_t mxcsr, uint32_t seed)
{
    for (int i = 0; i < 32; i++) {
        seed = seed * 1103515245u + 12345u;
        sse_init[i] = seed;
    }
    /* xmm4 (sum), xmm5 (increment) and xmm6 are floats: 1.0f, 0.001f + a little, 3.0f. */
    for (int i = 16; i < 20; i++)
        sse_init[i] = 0x3f800000u;
    for (int i = 20; i < 24; i++)
        sse_init[i] = 0x3a83126fu + (uint32_t)(i - 20) * 7;
    for (int i = 24; i < 28; i++)
        sse_init[i] = 0x40400000u;
    sse_rounds(n, mxcsr, sse_init, sse_out);
    return sse_out[0] ^ sse_out[1] ^ sse_out[2] ^ sse_out[3];
}

static uint32_t lcg = 12345;

static uint32_t next_rand(void)
{
    lcg = lcg * 1664525u + 1013904223u;
    return lcg;
}

/* Rewrites 16 KiB of the buffer and sums it. */
static uint32_t memory_work(uint32_t step)
{
    uint32_t *w = (uint32_t *)(big + (step * 16384u) % BIG);
    uint32_t sum = 0;
    for (int i = 0; i < 4096; i++) {
        w[i] = w[i] * 31u + next_rand();
        sum += w[i] ^ (uint32_t)i;
    }
    return sum;
}

/* ---- paging: four address spaces ---- */
#define SPACES 4
#define WINDOW 0x40000000u
#define WINDOW_PAGES 16
#define PRIVATE_BASE (16u << 20)
static uint32_t pd[SPACES][1024] __attribute__((aligned(4096)));
static uint32_t pt_low[4][1024] __attribute__((aligned(4096)));
static uint32_t pt_window[SPACES][1024] __attribute__((aligned(4096)));

static void paging_on(void)
{
    for (uint32_t t = 0; t < 4; t++)
        for (uint32_t i = 0; i < 1024; i++)
            pt_low[t][i] = ((t * 1024 + i) << 12) | 3;
    for (uint32_t s = 0; s < SPACES; s++) {
        for (uint32_t t = 0; t < 4; t++)
            pd[s][t] = (uint32_t)pt_low[t] | 3;
        for (uint32_t j = 0; j < WINDOW_PAGES; j++)
            pt_window[s][j] = (PRIVATE_BASE + s * WINDOW_PAGES * 4096 + j * 4096) | 3;
        pd[s][WINDOW >> 22] = (uint32_t)pt_window[s] | 3;
    }
    __asm__ volatile("movl %0, %%cr3" : : "r"(pd[0]) : "memory");
    write_cr0(read_cr0() | CR0_PG);
}

static uint32_t space_work(uint32_t step)
{
    uint32_t s = step % SPACES;
    __asm__ volatile("movl %0, %%cr3" : : "r"(pd[s]) : "memory");
    volatile uint32_t *win = (volatile uint32_t *)WINDOW;
    uint32_t sum = 0;
    for (uint32_t j = 0; j < WINDOW_PAGES; j++) {
        uint32_t at = j * 1024 + step % 1024;
        win[at] += step + j;
        sum += win[at] * (j + 1);
    }
    return sum;
}

/* The number after `key` (e.g. "steps=") on the command line, or `otherwise`. */
static uint32_t parse_number(const char *s, const char *key, uint32_t otherwise)
{
    size_t n = strlen(key);
    for (; s && *s; s++) {
        if (strncmp(s, key, n) == 0) {
            uint32_t v = 0;
            for (s += n; *s >= '0' && *s <= '9'; s++)
                v = v * 10 + (uint32_t)(*s - '0');
            return v;
        }
    }
    return otherwise;
}

int kmain(uint32_t magic, uint32_t mbi_addr)
{
    struct multiboot_info *mbi = (struct multiboot_info *)mbi_addr;
    const char *cmdline = (magic == MULTIBOOT_BOOTLOADER_MAGIC && (mbi->flags & MBI_FLAG_CMDLINE)) ? (const char *)mbi->cmdline : "";
    uint32_t steps = parse_number(cmdline, "steps=", 300);
    uint32_t maxgap = parse_number(cmdline, "maxgap=", 2000);
    uint32_t every = parse_number(cmdline, "every=", 1);
    if (every == 0)
        every = 1;
    int paging = kit_has_word(cmdline, "paging");
    int timer = !kit_has_word(cmdline, "notimer");
    int fpu = !kit_has_word(cmdline, "nofpu");
    printf("ticker: %u steps%s\n", steps, paging ? ", paging in 4 address spaces" : "");

    write_cr0((read_cr0() | CR0_MP) & ~(CR0_EM | CR0_TS));
    write_cr4(read_cr4() | 0x600); /* OSFXSR | OSXMMEXCPT */
    for (uint32_t i = 0; i < BIG; i += 4)
        *(uint32_t *)(big + i) = next_rand();
    if (paging)
        paging_on();

    uint32_t per_tick = 1;
    if (timer) {
        kit_set_interrupt_gate(0x20, irq0_stub);
        kit_pic_init(0xfe, 0xff);
        outb(0x43, 0x34);             /* channel 0, lo/hi, mode 2 */
        outb(0x40, 1193 & 0xff);      /* ~1 kHz */
        outb(0x40, 1193 >> 8);
        __asm__ volatile("sti");

        wait_tick();
        uint64_t t0 = rdtsc();
        uint32_t k0 = ticks;
        while (ticks - k0 < 50)
            __asm__ volatile("hlt");
        per_tick = (uint32_t)(rdtsc() - t0) / 50;
        if (per_tick == 0)
            per_tick = 1;
    }

    static const uint16_t cws[3] = { 0x037f, 0x027f, 0x0f7f };
    uint32_t worst_ticks = 0, worst_tsc = 0, done = 0;
    uint32_t last_ticks = ticks;
    uint64_t last_tsc = rdtsc();
    for (uint32_t k = 0; k < steps; k++) {
        uint64_t x = fpu ? x87_work(100000, cws[k % 3]) : 0;
        uint32_t v = fpu ? sse_work(100000, (k & 1) ? 0x3f80 : 0x1f80, k) : 0;
        uint32_t m = memory_work(k);
        uint32_t p = paging ? space_work(k) : 0;
        if (timer)
            wait_tick();
        if (k % every == 0 || k + 1 == steps)
            printf("step %u: x87 %08x%08x sse %08x mem %08x space %08x\n", k, (uint32_t)(x >> 32), (uint32_t)x, v, m, p);
        uint32_t now_ticks = ticks;
        uint64_t now_tsc = rdtsc();
        uint64_t d = now_tsc - last_tsc;
        uint32_t d_tsc = (d >> 32) ? 0xffffffffu : (uint32_t)d / per_tick;
        if (now_ticks - last_ticks > worst_ticks)
            worst_ticks = now_ticks - last_ticks;
        if (d_tsc > worst_tsc)
            worst_tsc = d_tsc;
        last_ticks = now_ticks;
        last_tsc = now_tsc;
        done++;
    }
    CHECK_EQ(done, steps);
    CHECK(worst_ticks < maxgap); /* no step saw maxgap ms of timer ticks */
    CHECK(!timer || worst_tsc < maxgap); /* nor of TSC */
    return kit_finish();
}
