/* usertask: a small paging OS whose user task does what user programs do, so
 * that the way bt86 runs user code (translated, or directly in its runner) can
 * be compared: every line it prints not starting with `~` must be the same
 * under `--user-code translate` and `--user-code direct`.
 *
 * The kernel: its own GDT (0x08/0x10 ring 0, 0x1b/0x23 flat ring 3, 0x28 TSS,
 * 0x3b a ring-3 data segment with a base: a TLS block), an IDT (interrupt gates
 * for 0-19 and the PIC's IRQs, DPL-3 gates for int3/into/int $0x80, a DPL-0
 * gate 0x81), 2-level paging (0-8 MiB identity, user pages; 0x40000000: 64
 * demand-paged pages; 0x40100000: a supervisor page), CR4.OSFXSR, and the PIT
 * at ~1 kHz with IF=1 at CPL 3.
 *
 * The user task (CPL 3, IF=1), reporting through system calls:
 *   compute   an xorshift loop (`compute=N` iterations, default 3,000,000;
 *             `only-compute`: stop after it)
 *   syscalls  2,000 system calls (`syscalls=N`; `only-syscalls`: stop after
 *             them), their results summed
 *   demand    64 pages touched: one #PF each, mapped by the kernel, retried
 *   protect   a read of a supervisor page: #PF 0x5, CR2, EIP = the load
 *   faults    #DE, #UD, int3 (#BP, EIP after), into (#OF), cli / hlt (#GP 0),
 *             int $0x81 (#GP 0x40a), each skipped by the kernel
 *   cpuid     leaves 0 and 1 as the kernel sees them
 *   rdtsc     user and kernel TSC reads in order (one clock)
 *   segments  %gs loaded with 0x3b (base = a TLS block) and read through
 *   sse       xmm0-7 and the x87 stack kept across system calls, faults and
 *             timer interrupts; the kernel reads the user's xmm3
 *   smc       a `mov $imm,%eax; ret` in a user page patched and called 200 times
 *   ticks     a spin at CPL 3 until the timer has ticked 5 times
 *   runaway   a task that spins forever (`jmp .`) is ended by the kernel's timer
 *             handler after 20 ticks: a user loop cannot stop the machine
 *
 * System calls (int $0x80, eax = number):
 *   1 write ecx bytes at ebx   2 ebx * 7 + 0x1234   3 exit with ebx
 *   5 report: prints "user: <name at ebx> = 0x<ecx>"   6 the user's xmm3 (low dword)
 *   7 kernel_tsc = the kernel's rdtsc */
#include "kit.h"

#define KCODE   0x08
#define KDATA   0x10
#define UCODE   0x1b
#define UDATA   0x23
#define TSS_SEL 0x28
#define TLS_SEL 0x3b
#define NOERR 0xffffffffu

#define PIC1_CMD  0x20
#define PIC1_DATA 0x21
#define PIC2_CMD  0xa0
#define PIC2_DATA 0xa1
#define PIT_CH0   0x40
#define PIT_CMD   0x43
#define PIT_DIVISOR 1193

#define DEMAND_BASE 0x40000000u
#define DEMAND_PAGES 64
#define SUPER_PAGE  0x40100000u

struct frame {
    uint32_t gs, fs, es, ds;
    uint32_t edi, esi, ebp, esp_pusha, ebx, edx, ecx, eax;
    uint32_t vector, err;
    uint32_t eip, cs, eflags;
    uint32_t user_esp, user_ss;
};

struct __attribute__((packed)) dtr {
    uint16_t limit;
    uint32_t base;
};

struct __attribute__((packed)) tss32 {
    uint16_t link, r0;
    uint32_t esp0;
    uint16_t ss0, r1;
    uint32_t esp1;
    uint16_t ss1, r2;
    uint32_t esp2;
    uint16_t ss2, r3;
    uint32_t cr3, eip, eflags, eax, ecx, edx, ebx, esp, ebp, esi, edi;
    uint16_t es, r4, cs, r5, ss, r6, ds, r7, fs, r8, gs, r9, ldt, r10;
    uint16_t trap, iomap;
};

static uint64_t gdt[8] __attribute__((aligned(8)));
static uint64_t idt[256] __attribute__((aligned(8)));
static struct tss32 tss __attribute__((aligned(16)));
static uint8_t ring0_stack[16384] __attribute__((aligned(16)));
static uint8_t user_stack[16384] __attribute__((aligned(16)));
static struct dtr gdt_desc, idt_desc;

static uint32_t page_dir[1024] __attribute__((aligned(4096)));
static uint32_t pt_low[2][1024] __attribute__((aligned(4096)));
static uint32_t pt_demand[1024] __attribute__((aligned(4096)));
static uint8_t demand_pool[DEMAND_PAGES][4096] __attribute__((aligned(4096)));
static uint8_t super_page[4096] __attribute__((aligned(4096)));
static uint8_t smc_page[4096] __attribute__((aligned(4096)));
static uint32_t tls_block[4] = {0x7e57d00d, 0xc0ffee11, 0, 0};

extern const uint32_t usertask_exc_stubs[20], usertask_irq_stubs[16];
extern char isr_0x40[], isr_0x80[], isr_0x81[];
extern char user_return_stub[];
uint32_t enter_user(uint32_t eip, uint32_t esp);
uint32_t usertask_user_exit_code;

static uint64_t make_desc(uint32_t base, uint32_t limit, uint8_t access, uint8_t flags)
{
    uint32_t lo = (limit & 0xffff) | ((base & 0xffff) << 16);
    uint32_t hi = ((base >> 16) & 0xff) | ((uint32_t)access << 8) | (limit & 0xf0000) |
                  ((uint32_t)(flags & 0xf) << 20) | (base & 0xff000000);
    return ((uint64_t)hi << 32) | lo;
}

static void set_gate(unsigned vec, uint32_t handler, uint8_t access)
{
    uint32_t lo = (handler & 0xffff) | ((uint32_t)KCODE << 16);
    uint32_t hi = (handler & 0xffff0000) | ((uint32_t)access << 8);
    idt[vec] = ((uint64_t)hi << 32) | lo;
}

/* ------------------------------------------------------- traps */

/* The last exception the user task was armed for. */
volatile uint32_t trap_armed, skip_len, fault_site, fault_next;
volatile uint32_t last_vector, last_err, last_eip_ok, last_cr2, last_count;
volatile uint32_t ticks, user_ticks, demand_faults, unexpected;
volatile uint32_t kill_at;              /* non-zero: end the user task at this tick */
volatile uint64_t kernel_tsc;           /* system call 7 */

static void fail_stop(const char *why, struct frame *f)
{
    printf("FAIL %s: vector 0x%x err 0x%x eip 0x%08x cs 0x%x\n", why, f->vector, f->err, f->eip,
           f->cs & 0xffff);
    kit_failed++;
    kit_finish();
    for (;;)
        __asm__ volatile("cli; hlt");
}

static inline uint32_t read_cr2(void)
{
    uint32_t v;
    __asm__ volatile("movl %%cr2, %0" : "=r"(v));
    return v;
}

/* Returns non-zero to end the user task. */
static uint32_t do_irq(struct frame *f)
{
    unsigned irq = f->vector - 0x20;
    if (irq >= 8)
        outb(PIC2_CMD, 0x20);
    outb(PIC1_CMD, 0x20);
    if (irq != 0)
        return 0;
    ticks++;
    if ((f->cs & 3) == 3) {
        user_ticks++;
        if (kill_at && ticks >= kill_at) {
            kill_at = 0;
            usertask_user_exit_code = 0x77;
            return 1;
        }
    }
    return 0;
}

static uint32_t do_syscall(struct frame *f)
{
    switch (f->eax) {
    case 1: {
        const char *s = (const char *)f->ebx;
        for (uint32_t i = 0; i < f->ecx; i++)
            serial_putc(s[i]);
        f->eax = f->ecx;
        break;
    }
    case 2:
        f->eax = f->ebx * 7 + 0x1234;
        break;
    case 3:
        usertask_user_exit_code = f->ebx;
        return 1;
    case 5:
        printf("user: %s = 0x%08x\n", (const char *)f->ebx, f->ecx);
        break;
    case 7:
        kernel_tsc = rdtsc();
        break;
    case 6: {
        uint32_t v;
        __asm__ volatile("movd %%xmm3, %0" : "=r"(v));
        f->eax = v;
        break;
    }
    default:
        f->eax = 0xffffffff;
        break;
    }
    return 0;
}

uint32_t trap_dispatch(struct frame *f)
{
    uint32_t v = f->vector;
    if (v >= 0x20 && v < 0x30)
        return do_irq(f);
    if (v == 0x80)
        return do_syscall(f);
    if (v == 14) {
        uint32_t cr2 = read_cr2();
        if (!(f->err & 1) && cr2 >= DEMAND_BASE && cr2 < DEMAND_BASE + DEMAND_PAGES * 4096) {
            uint32_t i = (cr2 - DEMAND_BASE) >> 12;
            pt_demand[i] = (uint32_t)demand_pool[i] | 7;
            demand_faults++;
            return 0;               /* retry the access */
        }
        last_cr2 = cr2;
    }
    if ((f->cs & 3) != 3 || !trap_armed) {
        unexpected++;
        fail_stop("unexpected exception", f);
    }
    last_vector = v;
    last_err = f->err;
    last_count++;
    trap_armed = 0;
    if (f->eip == fault_site) {
        last_eip_ok = 1;            /* a fault: skip the instruction */
        f->eip += skip_len;
    } else if (f->eip == fault_next) {
        last_eip_ok = 2;            /* a trap: after the instruction */
    } else {
        last_eip_ok = 0;
        f->eip = fault_next;
    }
    return 0;
}

#define ARM_FAULT "movl $(2f-1f), skip_len\n\tmovl $1f, fault_site\n\tmovl $2f, fault_next\n\tmovl $1, trap_armed\n"
#define DISARM "\n\tmovl $0, trap_armed"

/* ------------------------------------------------------- set-up */

static void setup(void)
{
    gdt[0] = 0;
    gdt[1] = make_desc(0, 0xfffff, 0x9b, 0xc);
    gdt[2] = make_desc(0, 0xfffff, 0x93, 0xc);
    gdt[3] = make_desc(0, 0xfffff, 0xfb, 0xc);
    gdt[4] = make_desc(0, 0xfffff, 0xf3, 0xc);
    gdt[5] = make_desc((uint32_t)&tss, sizeof tss - 1, 0x89, 0x0);
    gdt[6] = 0;
    gdt[7] = make_desc((uint32_t)tls_block, 0xfff, 0xf3, 0x4);   /* 0x3b: byte-granular, 4 KiB */

    memset(&tss, 0, sizeof tss);
    tss.esp0 = (uint32_t)ring0_stack + sizeof ring0_stack;
    tss.ss0 = KDATA;
    tss.iomap = sizeof tss;

    for (unsigned v = 0; v < 20; v++)
        set_gate(v, usertask_exc_stubs[v], 0x8e);
    set_gate(3, usertask_exc_stubs[3], 0xee);   /* int3 and into from CPL 3 */
    set_gate(4, usertask_exc_stubs[4], 0xee);
    for (unsigned i = 0; i < 16; i++)
        set_gate(0x20 + i, usertask_irq_stubs[i], 0x8e);
    set_gate(0x40, (uint32_t)isr_0x40, 0x8e);
    set_gate(0x80, (uint32_t)isr_0x80, 0xef);
    set_gate(0x81, (uint32_t)isr_0x81, 0x8e);

    gdt_desc.limit = sizeof gdt - 1;
    gdt_desc.base = (uint32_t)gdt;
    idt_desc.limit = sizeof idt - 1;
    idt_desc.base = (uint32_t)idt;
    __asm__ volatile("lgdt %0\n\t"
                     "ljmp $0x08, $1f\n"
                     "1:\tmovl $0x10, %%eax\n\t"
                     "movw %%ax, %%ds\n\tmovw %%ax, %%es\n\tmovw %%ax, %%fs\n\t"
                     "movw %%ax, %%gs\n\tmovw %%ax, %%ss\n\t"
                     "lidt %1\n\t"
                     "movw $0x28, %%ax\n\t"
                     "ltr %%ax"
                     : : "m"(gdt_desc), "m"(idt_desc) : "eax", "memory");

    /* paging: 0-8 MiB identity (user, writable), the demand area empty, the
     * supervisor page present but not user */
    for (unsigned t = 0; t < 2; t++)
        for (unsigned i = 0; i < 1024; i++)
            pt_low[t][i] = ((t * 1024 + i) << 12) | 7;
    memset(pt_demand, 0, sizeof pt_demand);
    pt_demand[(SUPER_PAGE - DEMAND_BASE) >> 12] = (uint32_t)super_page | 3;
    memset(page_dir, 0, sizeof page_dir);
    page_dir[0] = (uint32_t)pt_low[0] | 7;
    page_dir[1] = (uint32_t)pt_low[1] | 7;
    page_dir[DEMAND_BASE >> 22] = (uint32_t)pt_demand | 7;
    __asm__ volatile("movl %0, %%cr3" : : "r"(page_dir) : "memory");
    write_cr0((read_cr0() | 0x80000002u) & ~4u);        /* PG, MP; EM off */
    uint32_t cr4;
    __asm__ volatile("movl %%cr4, %0" : "=r"(cr4));
    cr4 |= (1u << 9) | (1u << 10);                       /* OSFXSR, OSXMMEXCPT */
    __asm__ volatile("movl %0, %%cr4" : : "r"(cr4) : "memory");

    /* the PIC (IRQ 0 only) and the PIT at ~1 kHz */
    outb(PIC1_CMD, 0x11);
    outb(PIC2_CMD, 0x11);
    outb(PIC1_DATA, 0x20);
    outb(PIC2_DATA, 0x28);
    outb(PIC1_DATA, 0x04);
    outb(PIC2_DATA, 0x02);
    outb(PIC1_DATA, 0x01);
    outb(PIC2_DATA, 0x01);
    outb(PIC1_DATA, 0xfe);
    outb(PIC2_DATA, 0xff);
    outb(PIT_CMD, 0x34);
    outb(PIT_CH0, PIT_DIVISOR & 0xff);
    outb(PIT_CH0, PIT_DIVISOR >> 8);
}

/* ------------------------------------------------------- the user task */

static uint32_t compute_n = 3000000;
static uint32_t only_compute, syscalls_n = 2000, only_syscalls;

static inline uint32_t sys3(uint32_t n, uint32_t b, uint32_t c)
{
    uint32_t r;
    __asm__ volatile("int $0x80" : "=a"(r) : "a"(n), "b"(b), "c"(c) : "memory");
    return r;
}

static void report(const char *name, uint32_t v)
{
    sys3(5, (uint32_t)name, v);
}

static uint32_t kernel_cpuid[8];

static void cpuid8(uint32_t *out)
{
    cpuid(0, 0, &out[0], &out[1], &out[2], &out[3]);
    cpuid(1, 0, &out[4], &out[5], &out[6], &out[7]);
}

static uint32_t compute(uint32_t n)
{
    uint32_t h = 0x12345678, s = 0;
    for (uint32_t i = 0; i < n; i++) {
        h ^= h << 13;
        h ^= h >> 17;
        h ^= h << 5;
        s += h * (i | 1);
    }
    return s ^ h;
}

/* The last armed exception as one word: vector, error code (low byte), how
 * the saved EIP related to the instruction (1 at it, 2 after it). */
static uint32_t last_fault(uint32_t count0)
{
    return ((last_count - count0) << 24) | (last_vector << 16) | ((last_err & 0xfff) << 4) | last_eip_ok;
}

static uint32_t user_main(void)
{
    uint32_t c0, v;

    v = compute(compute_n);
    report("compute", v);
    if (only_compute)
        return 0x55;

    v = 0;
    for (uint32_t i = 0; i < syscalls_n; i++)
        v += sys3(2, i, 0);
    report("syscalls", v);
    if (only_syscalls)
        return 0x55;

    v = 0;
    for (uint32_t i = 0; i < DEMAND_PAGES; i++) {
        volatile uint32_t *p = (volatile uint32_t *)(DEMAND_BASE + i * 4096 + (i * 52 & 0xffc));
        if (i & 1)
            *p = i * 3 + 1;
        else
            v += *p;
    }
    for (uint32_t i = 0; i < DEMAND_PAGES; i++)
        v += *(volatile uint32_t *)(DEMAND_BASE + i * 4096 + (i * 52 & 0xffc));
    report("demand", v);
    report("demand_faults", demand_faults);

    c0 = last_count;
    __asm__ volatile(ARM_FAULT "1:\tmovl (%1), %0\n2:" DISARM : "=r"(v) : "r"(SUPER_PAGE + 0x84) : "memory");
    report("protect", last_fault(c0));
    report("protect_cr2", last_cr2);
    c0 = last_count;
    __asm__ volatile(ARM_FAULT "1:\tmovl %0, (%1)\n2:" DISARM : : "r"(5), "r"(SUPER_PAGE + 0x88) : "memory");
    report("protect_write", last_fault(c0));

    c0 = last_count;
    __asm__ volatile("xorl %%edx, %%edx\n\t" ARM_FAULT "1:\tdivl %%ecx\n2:" DISARM : : "a"(7), "c"(0) : "edx", "memory");
    report("div0", last_fault(c0));
    c0 = last_count;
    __asm__ volatile(ARM_FAULT "1:\tud2\n2:" DISARM : : : "memory");
    report("ud2", last_fault(c0));
    c0 = last_count;
    __asm__ volatile(ARM_FAULT "1:\tint3\n2:" DISARM : : : "memory");
    report("int3", last_fault(c0));
    c0 = last_count;
    __asm__ volatile("movl $0x7fffffff, %%eax\n\taddl $1, %%eax\n\t" ARM_FAULT "1:\tinto\n2:" DISARM : : : "eax", "memory");
    report("into", last_fault(c0));
    c0 = last_count;
    __asm__ volatile(ARM_FAULT "1:\tcli\n2:" DISARM : : : "memory");
    report("cli", last_fault(c0));
    c0 = last_count;
    __asm__ volatile(ARM_FAULT "1:\thlt\n2:" DISARM : : : "memory");
    report("hlt", last_fault(c0));
    c0 = last_count;
    __asm__ volatile(ARM_FAULT "1:\tint $0x81\n2:" DISARM : : : "memory");
    report("int81", last_fault(c0));
    c0 = last_count;
    __asm__ volatile(ARM_FAULT "1:\tinb $0x21, %%al\n2:" DISARM : : : "eax", "memory");
    report("in", last_fault(c0));

    /* cpuid at CPL 3 sees what the kernel sees (the guest's CPU model) */
    uint32_t ucpu[8];
    cpuid8(ucpu);
    v = 0;
    for (uint32_t i = 0; i < 8; i++)
        v += ucpu[i] == kernel_cpuid[i];
    report("cpuid_same", v);

    /* rdtsc at CPL 3 and in the kernel give one clock */
    uint64_t u1 = rdtsc();
    sys3(7, 0, 0);
    uint64_t u2 = rdtsc();
    report("rdtsc_one_clock", u1 < kernel_tsc && kernel_tsc < u2);

    /* a segment with a base, loaded by the user task itself */
    uint32_t a, b;
    __asm__ volatile("movw %w2, %%gs\n\tmovl %%gs:0, %0\n\tmovl %%gs:4, %1\n\t"
                     "movl $0x5eed, %%gs:8"
                     : "=&r"(a), "=&r"(b) : "r"(TLS_SEL) : "memory");
    report("tls0", a);
    report("tls1", b);
    report("tls2", tls_block[2]);
    __asm__ volatile("movw %w0, %%gs" : : "r"(UDATA));

    /* x87 and SSE state across system calls, faults and timer interrupts */
    static uint32_t xin[32] __attribute__((aligned(16)));
    static uint32_t xout[32] __attribute__((aligned(16)));
    for (uint32_t i = 0; i < 32; i++)
        xin[i] = 0x01020304u * (i + 1) ^ 0xa5a5a5a5u;
    __asm__ volatile("movdqa 0(%0), %%xmm0\n\tmovdqa 16(%0), %%xmm1\n\tmovdqa 32(%0), %%xmm2\n\t"
                     "movdqa 48(%0), %%xmm3\n\tmovdqa 64(%0), %%xmm4\n\tmovdqa 80(%0), %%xmm5\n\t"
                     "movdqa 96(%0), %%xmm6\n\tmovdqa 112(%0), %%xmm7\n\t"
                     "fninit\n\tfldpi\n\tfld1\n\tfldl2e"
                     : : "r"(xin) : "memory");
    uint32_t t0 = ticks;
    for (uint32_t i = 0; i < 50; i++)
        sys3(2, i, 0);
    c0 = last_count;
    __asm__ volatile(ARM_FAULT "1:\tud2\n2:" DISARM : : : "memory");
    uint32_t spins = 0;
    while (ticks < t0 + 3 && ++spins < 2000000000u)
        ;
    uint32_t kx3 = sys3(6, 0, 0);
    uint16_t fsw;
    __asm__ volatile("movdqa %%xmm0, 0(%1)\n\tmovdqa %%xmm1, 16(%1)\n\tmovdqa %%xmm2, 32(%1)\n\t"
                     "movdqa %%xmm3, 48(%1)\n\tmovdqa %%xmm4, 64(%1)\n\tmovdqa %%xmm5, 80(%1)\n\t"
                     "movdqa %%xmm6, 96(%1)\n\tmovdqa %%xmm7, 112(%1)\n\t"
                     "fnstsw %0"
                     : "=m"(fsw) : "r"(xout) : "memory");
    double l2e, one, pi;
    __asm__ volatile("fstpl %0\n\tfstpl %1\n\tfstpl %2" : "=m"(l2e), "=m"(one), "=m"(pi));
    v = 0;
    for (uint32_t i = 0; i < 32; i++)
        v += xout[i] == xin[i];
    report("sse_kept", v);
    report("sse_kernel_xmm3", kx3 == xin[12]);
    report("x87_top", (fsw >> 11) & 7);
    report("x87_pi", pi > 3.14159 && pi < 3.1416);
    report("x87_one", one == 1.0);
    report("x87_l2e", l2e > 1.4426 && l2e < 1.4427);

    /* self-modifying code in a user page */
    uint8_t *code = smc_page;
    v = 0;
    for (uint32_t i = 0; i < 200; i++) {
        code[0] = 0xb8;
        code[1] = (uint8_t)i;
        code[2] = (uint8_t)(i >> 8);
        code[3] = 0x11;
        code[4] = 0x22;
        code[5] = 0xc3;
        v += ((uint32_t(*)(void))code)();
        v += ((uint32_t(*)(void))code)();
    }
    report("smc", v);

    /* timer interrupts while the task spins */
    t0 = ticks;
    spins = 0;
    while (ticks < t0 + 5 && ++spins < 4000000000u)
        ;
    report("ticks_seen", ticks >= t0 + 5);
    return 0x55;
}

static uint32_t user_runaway(void)
{
    for (;;)
        __asm__ volatile("" ::: "memory");
    return 0;
}

/* An escape attempt: a far jump to selector 0x33 (in the guest's GDT an empty
 * entry: #GP; on an x86-64 host the 64-bit code segment), into 64-bit code that
 * makes host system calls (getpid; with `escape=2` it first clears the byte
 * that turns Syscall User Dispatch off in bt86's runner; `escape=3` maps guest
 * physical page 0 from bt86's guest-RAM fd through a `syscall; ret` of the
 * runner's own code, and reads it) and, if they ever returned, would set
 * escape_flag. The guest must get a #GP and go on. */
volatile uint32_t escape_flag;
static uint32_t escape_kind;

static uint32_t user_escape(void)
{
    uint8_t *p = smc_page;
    if (escape_kind == 3) {
        /* with dispatch on, borrow a `syscall; ret` of bt86's runner code (at
         * 0x1000000000) for mmap(0x50000000, 4096, PROT_READ, MAP_SHARED|MAP_FIXED,
         * 100 (the runner's guest-RAM fd), 0): guest physical page 0, which no user
         * page maps; read it, and set the flag if that worked */
        uint32_t flag = (uint32_t)&escape_flag;
        const uint8_t map[] = {
            0x48, 0xbb, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, /* movabs rbx, 0x1000000000 */
            0x66, 0x81, 0x3b, 0x0f, 0x05,             /* 1: cmp word [rbx], 0x050f */
            0x75, 0x06,                               /* jne 2f */
            0x80, 0x7b, 0x02, 0xc3,                   /* cmp byte [rbx+2], 0xc3 */
            0x74, 0x05,                               /* je 3f */
            0x48, 0xff, 0xc3,                         /* 2: inc rbx */
            0xeb, 0xee,                               /* jmp 1b */
            0xb8, 0x09, 0x00, 0x00, 0x00,             /* 3: mov eax, 9 (mmap) */
            0xbf, 0x00, 0x00, 0x00, 0x50,             /* mov edi, 0x50000000 */
            0xbe, 0x00, 0x10, 0x00, 0x00,             /* mov esi, 4096 */
            0xba, 0x01, 0x00, 0x00, 0x00,             /* mov edx, PROT_READ */
            0x41, 0xba, 0x11, 0x00, 0x00, 0x00,       /* mov r10d, MAP_SHARED|MAP_FIXED */
            0x41, 0xb8, 0x64, 0x00, 0x00, 0x00,       /* mov r8d, 100 */
            0x45, 0x31, 0xc9,                         /* xor r9d, r9d */
            0xff, 0xd3,                               /* call rbx */
            0x8b, 0x04, 0x25, 0x00, 0x00, 0x00, 0x50, /* mov eax, [0x50000000] */
            0xc7, 0x04, 0x25, (uint8_t)flag, (uint8_t)(flag >> 8), (uint8_t)(flag >> 16),
            (uint8_t)(flag >> 24), 1, 0, 0, 0,        /* mov dword [escape_flag], 1 */
        };
        memcpy(p, map, sizeof map);
        p += sizeof map;
    } else if (escape_kind == 2) {
        /* movabs rax, 0x1000010000; mov byte [rax], 0 */
        static const uint8_t flip[] = {0x48, 0xb8, 0x00, 0x00, 0x01, 0x00, 0x10, 0x00, 0x00, 0x00, 0xc6, 0x00, 0x00};
        memcpy(p, flip, sizeof flip);
        p += sizeof flip;
    }
    /* mov eax, 39; syscall; mov dword [escape_flag], 1; jmp . */
    uint32_t flag = (uint32_t)&escape_flag;
    uint8_t tail[] = {0xb8, 39, 0, 0, 0, 0x0f, 0x05, 0xc7, 0x04, 0x25, (uint8_t)flag, (uint8_t)(flag >> 8),
                      (uint8_t)(flag >> 16), (uint8_t)(flag >> 24), 1, 0, 0, 0, 0xeb, 0xfe};
    memcpy(p, tail, sizeof tail);
    struct __attribute__((packed)) { uint32_t off; uint16_t sel; } far = {(uint32_t)smc_page, 0x33};
    uint32_t c0 = last_count;
    /* the 64-bit code clobbers eax, ebx, esi, edi (and a host would clobber rcx and r11) */
    __asm__ volatile(ARM_FAULT "1:\tljmpl *%0\n2:" DISARM : : "m"(far) : "eax", "ebx", "ecx", "edx", "esi", "edi", "memory", "cc");
    report("escape_caught", last_count - c0 == 1 && last_vector == 13);
    report("escape_flag", escape_flag);
    return 0x99;
}

static uint32_t run_user(uint32_t (*fn)(void))
{
    uint32_t *sp = (uint32_t *)(user_stack + sizeof user_stack - 12);
    *sp = (uint32_t)user_return_stub;
    return enter_user((uint32_t)fn, (uint32_t)sp);
}

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
    compute_n = parse_number(cmdline, "compute=", 3000000);
    only_compute = kit_has_word(cmdline, "only-compute");
    only_syscalls = kit_has_word(cmdline, "only-syscalls");
    syscalls_n = parse_number(cmdline, "syscalls=", 2000);
    setup();
    cpuid8(kernel_cpuid);
    printf("usertask: paging on, timer at ~1 kHz\n");
    if (only_compute || only_syscalls) {
        /* for timing: the compute loop alone */
        uint32_t code = run_user(user_main);
        printf("usertask: exit 0x%x\n", code);
        return kit_finish();
    }
    escape_kind = parse_number(cmdline, "escape=", 0);
    if (escape_kind) {
        uint32_t code = run_user(user_escape);
        printf("usertask: escape task exited with 0x%x\n", code);
        CHECK_EQ(code, 0x99);
        CHECK_EQ(escape_flag, 0);
        CHECK_EQ(unexpected, 0);
    }
    uint32_t code = run_user(user_main);
    printf("usertask: user task exited with 0x%x\n", code);
    CHECK_EQ(code, 0x55);
    CHECK_EQ(demand_faults, DEMAND_PAGES);
    CHECK_EQ(unexpected, 0);

    kill_at = ticks + 20;
    code = run_user(user_runaway);
    printf("usertask: runaway task ended by the timer with 0x%x\n", code);
    CHECK_EQ(code, 0x77);
    printf("~usertask: %u ticks, %u at CPL 3\n", ticks, user_ticks);
    CHECK(user_ticks >= 20);
    outb(PIC1_DATA, 0xff);
    return kit_finish();
}
