/* pmode: a tiny protected-mode OS. Its own GDT (ring-0 and ring-3 flat
 * segments, a 32-bit TSS), ltr, an IDT (exceptions 0-19, the PIC's IRQs at
 * 0x20-0x2f, int $0x40, system calls through a DPL-3 trap gate at 0x80, a
 * DPL-0 gate at 0x81), a user task at CPL 3 entered with iret, and a
 * PIT-driven timer interrupt. Checks what real hardware does:
 *
 *   phase 1  descriptor tables: str, the busy TSS, sgdt/sidt
 *   phase 2  exceptions at CPL 0: #DE, #UD, int3, int $0x40, into, bound,
 *            #GP/#NP from segment loads (fault vs trap EIPs, error codes,
 *            no stack switch, IF cleared by the interrupt gate)
 *   phase 3  the user task at CPL 3: system calls onto the TSS stack, and
 *            cli/sti/hlt/in/out/mov cr0/lgdt/int3/int $0x81 fault with #GP and
 *            the right error code (CPL 3 on the frame, delivered on the TSS
 *            stack); popf cannot change IF or IOPL; sgdt/sidt/str/smsw and
 *            push %cs work
 *   phase 4  the 8259A + 8254 timer (IRQ 0 at ~1 kHz): held while IF=0 (and
 *            visible in the IRR), delivered right after sti's one-instruction
 *            shadow, wakes hlt, ticks while the kernel spins with IF=1, and
 *            while the user task spins at CPL 3 (taken on the TSS stack)
 *
 * The user task cannot print or CHECK itself (port I/O faults at CPL 3): it
 * reports through system calls (1 = write, 4 = check) and the kernel prints.
 *
 * System calls (int $0x80, eax = number; result in eax):
 *   1  write ecx bytes at ebx to the serial port; returns ecx
 *   2  returns ebx * 7 + 0x1234 (computed in the kernel)
 *   3  exit the user task with status ebx (enter_user returns it)
 *   4  CHECK_EQ(ebx, ecx) with the site {file, line, expr} at edx
 * Devices: COM1 (kit), PIC 0x20/0x21/0xa0/0xa1, PIT 0x40/0x43, exit 0xf4. */
#include "kit.h"

#define KCODE   0x08
#define KDATA   0x10
#define UCODE   0x1b
#define UDATA   0x23
#define TSS_SEL 0x28
#define NP_SEL  0x30            /* a not-present ring-0 data segment */
#define BAD_SEL 0x48            /* beyond the GDT limit (7 entries, limit 0x37) */

#define NOERR 0xffffffffu       /* what the stubs push for vectors without an error code */

#define PIC1_CMD  0x20
#define PIC1_DATA 0x21
#define PIC2_CMD  0xa0
#define PIC2_DATA 0xa1
#define PIT_CH0   0x40
#define PIT_CMD   0x43
#define PIT_DIVISOR 1193        /* 1193182 Hz / 1193 = ~1000 Hz */

/* ---------------------------------------------------------------- tables */

struct frame {
    uint32_t gs, fs, es, ds;
    uint32_t edi, esi, ebp, esp_pusha, ebx, edx, ecx, eax;
    uint32_t vector, err;
    uint32_t eip, cs, eflags;
    uint32_t user_esp, user_ss;         /* only for an entry from CPL 3 */
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

static uint64_t gdt[7] __attribute__((aligned(8)));
static uint64_t idt[256] __attribute__((aligned(8)));
static struct tss32 tss __attribute__((aligned(16)));
static uint8_t ring0_stack[8192] __attribute__((aligned(16)));
static uint8_t user_stack[8192] __attribute__((aligned(16)));
struct dtr gdt_desc, idt_desc;          /* also used by the user task (lgdt/sgdt) */

extern uint8_t kit_stack_bottom[], kit_stack_top[];
extern const uint32_t pmode_exc_stubs[20], pmode_irq_stubs[16];
extern char isr_0x40[], isr_0x80[], isr_0x81[];
extern char user_return_stub[];
uint32_t enter_user(uint32_t eip, uint32_t esp);

static uint64_t make_desc(uint32_t base, uint32_t limit, uint8_t access, uint8_t flags)
{
    uint32_t lo = (limit & 0xffff) | ((base & 0xffff) << 16);
    uint32_t hi = ((base >> 16) & 0xff) | ((uint32_t)access << 8) | (limit & 0xf0000) |
                  ((uint32_t)(flags & 0xf) << 20) | (base & 0xff000000);
    return ((uint64_t)hi << 32) | lo;
}

#define GATE_INT_DPL0  0x8e
#define GATE_INT_DPL3  0xee
#define GATE_TRAP_DPL3 0xef

static void set_gate(unsigned vec, uint32_t handler, uint8_t access)
{
    uint32_t lo = (handler & 0xffff) | ((uint32_t)KCODE << 16);
    uint32_t hi = (handler & 0xffff0000) | ((uint32_t)access << 8);
    idt[vec] = ((uint64_t)hi << 32) | lo;
}

/* ------------------------------------------------------- trap recording */

/* The last exception or software interrupt (not IRQs or system calls). */
struct trap_rec {
    uint32_t count;
    uint32_t vector, err, eip, cs, cpl, eflags;
    uint32_t frame;             /* address of the struct frame */
    uint32_t on_tss;            /* entered from CPL 3 and the frame ends exactly at tss.esp0 */
    uint32_t user_esp, user_ss;
    uint32_t handler_if;        /* IF inside the handler */
};
volatile struct trap_rec last;

/* Set by a test just before an instruction that must trap or fault:
 * trap_armed = 1, skip_len = bytes to add to the saved EIP (the faulting
 * instruction's length; 0 for a trap), fault_site / fault_next = the
 * instruction's address and the next one. An exception that arrives while
 * nothing is armed ends the run as a failure. */
volatile uint32_t trap_armed, skip_len, fault_site, fault_next;

volatile uint32_t ticks;                /* IRQ 0 */
volatile uint32_t irq_other;            /* any other IRQ (none is unmasked) */
volatile uint32_t irq_capture;          /* 1: record the next IRQ 0 frame */
volatile uint32_t cap_eip, cap_cs, cap_if;
volatile uint32_t user_irqs;            /* IRQ 0 taken from CPL 3 */
volatile uint32_t user_irqs_ok;         /* ... with CS 0x1b, SS 0x23, IF=1 saved, on the TSS stack */

volatile uint32_t sys_count, sys_frame_ok;
uint32_t pmode_user_exit_code;

struct usite {
    const char *file;
    int line;
    const char *expr;
};

static inline uint32_t frame_end(struct frame *f)
{
    return (uint32_t)f + sizeof(struct frame);
}

static void fail_stop(const char *why, struct frame *f)
{
    printf("FAIL %s: vector 0x%x err 0x%x eip 0x%08x cs 0x%x eflags 0x%08x\n", why,
           f->vector, f->err, f->eip, f->cs & 0xffff, f->eflags);
    kit_failed++;
    kit_finish();
    for (;;)
        __asm__ volatile("cli; hlt");
}

static void do_irq(struct frame *f)
{
    unsigned irq = f->vector - 0x20;
    if (irq == 0) {
        ticks++;
        if (irq_capture) {
            irq_capture = 0;
            cap_eip = f->eip;
            cap_cs = f->cs & 0xffff;
            cap_if = f->eflags & EFLAGS_IF;
        }
        if ((f->cs & 3) == 3) {
            user_irqs++;
            if ((f->cs & 0xffff) == UCODE && (f->user_ss & 0xffff) == UDATA &&
                (f->eflags & EFLAGS_IF) && frame_end(f) == tss.esp0)
                user_irqs_ok++;
        }
    } else if (irq == 7 || irq == 15) {
        /* possibly spurious: check the in-service register before EOI */
        uint16_t port = irq == 7 ? PIC1_CMD : PIC2_CMD;
        outb(port, 0x0b);
        uint8_t isr = inb(port);
        outb(port, 0x0a);
        irq_other++;
        if (!(isr & 0x80)) {
            if (irq == 15)
                outb(PIC1_CMD, 0x20);   /* the master saw a real IRQ 2 */
            return;
        }
    } else {
        irq_other++;
    }
    if (irq >= 8)
        outb(PIC2_CMD, 0x20);
    outb(PIC1_CMD, 0x20);
}

static uint32_t do_syscall(struct frame *f)
{
    int ok = frame_end(f) == tss.esp0 && (f->cs & 0xffff) == UCODE &&
             (f->user_ss & 0xffff) == UDATA;
    sys_count++;
    if (ok)
        sys_frame_ok++;
    if (sys_count == 1) {
        /* The first system call, checked in detail in the handler. */
        printf("kernel: first system call: eax=%u frame=0x%08x esp0=0x%08x cs=0x%x ss=0x%x "
               "user esp=0x%08x eflags=0x%08x\n",
               f->eax, (uint32_t)f, tss.esp0, f->cs & 0xffff, f->user_ss & 0xffff,
               f->user_esp, f->eflags);
        CHECK_EQ(frame_end(f), tss.esp0);        /* on the TSS's ring-0 stack */
        CHECK_EQ(f->cs & 0xffff, UCODE);
        CHECK_EQ(f->user_ss & 0xffff, UDATA);
        CHECK(f->user_esp > (uint32_t)user_stack && f->user_esp <= (uint32_t)user_stack + sizeof user_stack);
        CHECK_EQ(f->eflags & (EFLAGS_IF | EFLAGS_IOPL), EFLAGS_IF);
        CHECK_EQ(read_eflags() & EFLAGS_IF, EFLAGS_IF); /* a trap gate keeps IF */
        uint32_t ss;
        __asm__ volatile("movl %%ss, %0" : "=r"(ss));
        CHECK_EQ(ss & 0xffff, KDATA);                  /* the TSS's ss0 */
    }
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
        pmode_user_exit_code = f->ebx;
        return 1;
    case 4: {
        const struct usite *s = (const struct usite *)f->edx;
        kit_check_eq(f->ebx, f->ecx, s->file, s->line, s->expr);
        f->eax = f->ebx == f->ecx;
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
    if (v >= 0x20 && v < 0x30) {
        do_irq(f);
        return 0;
    }
    if (v == 0x80)
        return do_syscall(f);

    last.vector = v;
    last.err = f->err;
    last.eip = f->eip;
    last.cs = f->cs & 0xffff;
    last.cpl = f->cs & 3;
    last.eflags = f->eflags;
    last.frame = (uint32_t)f;
    last.on_tss = (f->cs & 3) == 3 && frame_end(f) == tss.esp0;
    last.user_esp = (f->cs & 3) ? f->user_esp : 0;
    last.user_ss = (f->cs & 3) ? (f->user_ss & 0xffff) : 0;
    last.handler_if = read_eflags() & EFLAGS_IF;
    last.count++;
    if (!trap_armed)
        fail_stop("unexpected exception", f);
    trap_armed = 0;
    if (f->eip == fault_site) {
        f->eip += skip_len;             /* a fault: skip the instruction */
    } else if (f->eip != fault_next) {
        /* neither the instruction nor the next one (wrong under any CPU;
         * the test's own check reports it): resume after the instruction
         * rather than at a bogus address */
        printf("note: exception %u saved eip 0x%08x, expected 0x%08x or 0x%08x\n", v,
               f->eip, fault_site, fault_next);
        f->eip = fault_next;
    }
    skip_len = 0;
    return 0;
}

/* Arms the handler for a faulting instruction between labels 1 and 2 (the
 * handler skips it) or for a trapping one (the handler returns after it). */
#define ARM_FAULT "movl $(2f-1f), skip_len\n\tmovl $1f, fault_site\n\tmovl $2f, fault_next\n\tmovl $1, trap_armed\n"
#define ARM_TRAP  "movl $0, skip_len\n\tmovl $1f, fault_site\n\tmovl $2f, fault_next\n\tmovl $1, trap_armed\n"
/* After label 2: disarm, in case the instruction did not trap (so that a
 * later, unrelated exception is not taken for the expected one). */
#define DISARM "\n\tmovl $0, trap_armed\n\tmovl $0, skip_len"

/* ------------------------------------------------------------- phase 1 */

static void setup_tables(void)
{
    gdt[0] = 0;
    gdt[1] = make_desc(0, 0xfffff, 0x9b, 0xc);  /* 0x08 ring-0 code (accessed) */
    gdt[2] = make_desc(0, 0xfffff, 0x93, 0xc);  /* 0x10 ring-0 data */
    gdt[3] = make_desc(0, 0xfffff, 0xfb, 0xc);  /* 0x18 ring-3 code */
    gdt[4] = make_desc(0, 0xfffff, 0xf3, 0xc);  /* 0x20 ring-3 data */
    gdt[5] = make_desc((uint32_t)&tss, sizeof tss - 1, 0x89, 0x0); /* 0x28 available 32-bit TSS */
    gdt[6] = make_desc(0, 0xfffff, 0x13, 0xc);  /* 0x30 data, not present */

    memset(&tss, 0, sizeof tss);
    tss.esp0 = (uint32_t)ring0_stack + sizeof ring0_stack;
    tss.ss0 = KDATA;
    tss.iomap = sizeof tss;                     /* no I/O permission bitmap */

    for (unsigned v = 0; v < 20; v++)
        set_gate(v, pmode_exc_stubs[v], GATE_INT_DPL0);
    for (unsigned i = 0; i < 16; i++)
        set_gate(0x20 + i, pmode_irq_stubs[i], GATE_INT_DPL0);
    set_gate(0x40, (uint32_t)isr_0x40, GATE_INT_DPL0);
    set_gate(0x80, (uint32_t)isr_0x80, GATE_TRAP_DPL3);
    set_gate(0x81, (uint32_t)isr_0x81, GATE_INT_DPL0);

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
}

static void pic_init(void)
{
    outb(PIC1_CMD, 0x11);       /* ICW1: edge, cascade, ICW4 */
    outb(PIC2_CMD, 0x11);
    outb(PIC1_DATA, 0x20);      /* ICW2: vectors 0x20-0x27 */
    outb(PIC2_DATA, 0x28);      /*       and 0x28-0x2f */
    outb(PIC1_DATA, 0x04);      /* ICW3: slave on IRQ 2 */
    outb(PIC2_DATA, 0x02);      /*       slave identity 2 */
    outb(PIC1_DATA, 0x01);      /* ICW4: 8086 mode, normal EOI */
    outb(PIC2_DATA, 0x01);
    outb(PIC1_DATA, 0xff);      /* OCW1: everything masked */
    outb(PIC2_DATA, 0xff);
}

static void phase1(void)
{
    printf("phase 1: GDT, TSS, IDT\n");
    setup_tables();
    pic_init();

    uint32_t v = 0xdead0000;
    __asm__ volatile("str %0" : "+r"(v));
    CHECK_EQ(v & 0xffff, TSS_SEL);
    CHECK_EQ((uint32_t)(gdt[5] >> 40) & 0x8f, 0x8b);   /* ltr marked the TSS busy */
    struct dtr g = {0, 0}, i = {0, 0};
    __asm__ volatile("sgdt %0; sidt %1" : "=m"(g), "=m"(i));
    CHECK_EQ(g.limit, 0x37);
    CHECK_EQ(g.base, (uint32_t)gdt);
    CHECK_EQ(i.limit, 0x7ff);
    CHECK_EQ(i.base, (uint32_t)idt);
    uint32_t cs, ss;
    __asm__ volatile("movl %%cs, %0; movl %%ss, %1" : "=r"(cs), "=r"(ss));
    CHECK_EQ(cs & 0xffff, KCODE);
    CHECK_EQ(ss & 0xffff, KDATA);
    /* the PIC masks read back */
    CHECK_EQ(inb(PIC1_DATA), 0xff);
    CHECK_EQ(inb(PIC2_DATA), 0xff);
}

/* ------------------------------------------------------------- phase 2 */

#define KCHECK_TRAP(name, vec, errc, eip_expected) do {                              \
        kit_check_eq(last.count, c0 + 1, KIT_FILE, __LINE__, name ": one exception");  \
        kit_check_eq(last.vector, vec, KIT_FILE, __LINE__, name ": vector == " #vec);  \
        kit_check_eq(last.err, errc, KIT_FILE, __LINE__, name ": error code == " #errc); \
        kit_check_eq(last.eip, eip_expected, KIT_FILE, __LINE__, name ": saved eip == " #eip_expected); \
        kit_check_eq(last.cs, KCODE, KIT_FILE, __LINE__, name ": saved cs == 0x08 (CPL 0)"); \
        kit_check(last.frame > (uint32_t)kit_stack_bottom && last.frame < (uint32_t)kit_stack_top, \
                  KIT_FILE, __LINE__, name ": frame on the current stack (no switch)"); \
        kit_check_eq(last.handler_if, 0, KIT_FILE, __LINE__, name ": interrupt gate cleared IF"); \
        c0 = last.count;                                                             \
    } while (0)

static void phase2(void)
{
    printf("phase 2: exceptions and software interrupts at CPL 0\n");
    uint32_t c0 = last.count;
    uint32_t a, d;

    /* div by zero: #DE, a fault (saved EIP = the div) */
    a = 1234;
    d = 0;
    __asm__ volatile(ARM_FAULT "1:\tdivl %2\n2:" DISARM : "+a"(a), "+d"(d) : "r"(0) : "memory", "cc");
    KCHECK_TRAP("div by zero", 0, NOERR, fault_site);
    CHECK_EQ(a, 1234);          /* registers as before the instruction */

    /* ... and the flags: a division by a zero register faults before anything
     * changes (bt86 tests the divisor inline: the test must not touch them). */
    a = 1234;
    d = 0;
    __asm__ volatile("movl $1, %%ecx\n\t"
                     "cmpl $2, %%ecx\n\t"  /* 1 - 2: CF set, ZF clear */
                     "movl $0, %%ecx\n\t"  /* mov: the flags stay */
                     ARM_FAULT "1:\tdivl %%ecx\n2:" DISARM
                     : "+a"(a), "+d"(d) : : "ecx", "memory", "cc");
    KCHECK_TRAP("div by zero (ecx)", 0, NOERR, fault_site);
    CHECK_EQ(last.eflags & 0x41, 0x01); /* CF set, ZF clear, as before the div */

    /* ud2: #UD, a fault */
    __asm__ volatile(ARM_FAULT "1:\tud2\n2:" DISARM : : : "memory");
    KCHECK_TRAP("ud2", 6, NOERR, fault_site);

    /* int3: vector 3, a trap (saved EIP = after the int3) */
    __asm__ volatile(ARM_TRAP "1:\tint3\n2:" DISARM : : : "memory");
    KCHECK_TRAP("int3", 3, NOERR, fault_next);
    CHECK_EQ(fault_next - fault_site, 1);

    /* int $0x40 through a gate of our own: a trap */
    __asm__ volatile(ARM_TRAP "1:\tint $0x40\n2:" DISARM : : : "memory");
    KCHECK_TRAP("int $0x40", 0x40, NOERR, fault_next);
    CHECK_EQ(fault_next - fault_site, 2);

    /* into with OF set: vector 4, a trap */
    a = 0x7fffffff;
    __asm__ volatile("addl $1, %0\n\t" ARM_TRAP "1:\tinto\n2:" DISARM : "+r"(a) : : "memory", "cc");
    KCHECK_TRAP("into (OF=1)", 4, NOERR, fault_next);
    /* into with OF clear: nothing */
    a = 1;
    __asm__ volatile("addl $1, %0\n\tinto" : "+r"(a) : : "memory", "cc");
    CHECK_EQ(last.count, c0);

    /* bound out of range: #BR, a fault */
    static int32_t bounds[2] = {0, 10};
    a = 11;
    __asm__ volatile(ARM_FAULT "1:\tboundl %0, %1\n2:" DISARM : : "r"(a), "m"(bounds) : "memory");
    KCHECK_TRAP("bound", 5, NOERR, fault_site);

    /* a selector beyond the GDT limit into %ds: #GP(selector) */
    __asm__ volatile(ARM_FAULT "1:\tmovw %%ax, %%ds\n2:" DISARM : : "a"(BAD_SEL) : "memory");
    KCHECK_TRAP("mov 0x48 to ds", 13, BAD_SEL, fault_site);

    /* a not-present data segment into %es: #NP(selector) */
    __asm__ volatile(ARM_FAULT "1:\tmovw %%ax, %%es\n2:" DISARM : : "a"(NP_SEL) : "memory");
    KCHECK_TRAP("mov 0x30 to es", 11, NP_SEL, fault_site);

    /* a DPL-3 data segment into %ss at CPL 0: #GP(selector & ~3) */
    __asm__ volatile(ARM_FAULT "1:\tmovw %%ax, %%ss\n2:" DISARM : : "a"(UDATA) : "memory");
    KCHECK_TRAP("mov 0x23 to ss", 13, UDATA & ~3u, fault_site);

    uint32_t ds, es, ss;
    __asm__ volatile("movl %%ds, %0; movl %%es, %1; movl %%ss, %2" : "=r"(ds), "=r"(es), "=r"(ss));
    CHECK_EQ(ds & 0xffff, KDATA);
    CHECK_EQ(es & 0xffff, KDATA);
    CHECK_EQ(ss & 0xffff, KDATA);
}

/* ------------------------------------------------------------- phase 3 */

/* ---- the user task (runs at CPL 3: no printf, no CHECK, no port I/O) ---- */

static inline uint32_t sys3(uint32_t n, uint32_t b, uint32_t c, uint32_t d)
{
    uint32_t r;
    __asm__ volatile("int $0x80" : "=a"(r) : "a"(n), "b"(b), "c"(c), "d"(d) : "memory");
    return r;
}

static void ucheck_eq(uint32_t a, uint32_t b, const struct usite *s)
{
    sys3(4, a, b, (uint32_t)s);
}

static void uputs(const char *s)
{
    sys3(1, (uint32_t)s, strlen(s), 0);
}

#define UCHECK_EQ_MSG(a, b, text) do {                                   \
        static const struct usite s_ = {KIT_FILE, __LINE__, text};      \
        ucheck_eq((uint32_t)(a), (uint32_t)(b), &s_);                   \
    } while (0)
#define UCHECK_EQ(a, b) UCHECK_EQ_MSG(a, b, "user: " #a " == " #b)
#define UCHECK(c)       UCHECK_EQ_MSG(!!(c), 1, "user: " #c)

/* After an instruction armed with ARM_FAULT at CPL 3: one #GP (or other)
 * with the error code, saved EIP = the instruction, CS 0x1b / SS 0x23 on the
 * frame, the frame on the TSS's ring-0 stack. */
#define UCHECK_FAULT(name, vec, errc) do {                                           \
        UCHECK_EQ_MSG(last.count, c0 + 1, "user: " name ": one exception");          \
        UCHECK_EQ_MSG(last.vector, vec, "user: " name ": vector == " #vec);          \
        UCHECK_EQ_MSG(last.err, errc, "user: " name ": error code == " #errc);       \
        UCHECK_EQ_MSG(last.eip, fault_site, "user: " name ": saved eip == the instruction"); \
        UCHECK_EQ_MSG(last.cs, UCODE, "user: " name ": saved cs == 0x1b (CPL 3)");    \
        UCHECK_EQ_MSG(last.user_ss, UDATA, "user: " name ": saved ss == 0x23");       \
        UCHECK_EQ_MSG(last.on_tss, 1, "user: " name ": frame on the TSS stack (esp0)"); \
        c0 = last.count;                                                             \
    } while (0)

static uint32_t user_main(void)
{
    uint32_t c0 = last.count;
    uint32_t v, f;

    uputs("user: hello from CPL 3 (system call 1)\n");
    v = sys3(2, 6, 0, 0);
    UCHECK_EQ(v, 6 * 7 + 0x1234);
    v = sys3(2, 0x1000, 0, 0);
    UCHECK_EQ(v, 0x1000 * 7 + 0x1234);
    UCHECK_EQ(sys3(99, 0, 0, 0), 0xffffffff);

    /* where we are */
    uint32_t cs, ss, ds, esp_before, esp_after;
    __asm__ volatile("movl %%esp, %1; pushl %%cs; movl %%esp, %2; popl %0"
                     : "=r"(cs), "=&r"(esp_before), "=&r"(esp_after) : : "memory");
    UCHECK_EQ(cs & 0xffff, UCODE);          /* push %cs */
    UCHECK_EQ(esp_before - esp_after, 4);
    __asm__ volatile("movl %%ss, %0; movl %%ds, %1" : "=r"(ss), "=r"(ds));
    UCHECK_EQ(ss & 0xffff, UDATA);
    UCHECK_EQ(ds & 0xffff, UDATA);
    f = read_eflags();
    UCHECK_EQ(f & (EFLAGS_IF | EFLAGS_IOPL), EFLAGS_IF);
    UCHECK_EQ(last.count, c0);              /* none of that faulted */

    uputs("user: privileged instructions fault with #GP\n");
    __asm__ volatile(ARM_FAULT "1:\tcli\n2:" DISARM : : : "memory");
    UCHECK_FAULT("cli", 13, 0);
    __asm__ volatile(ARM_FAULT "1:\tsti\n2:" DISARM : : : "memory");
    UCHECK_FAULT("sti", 13, 0);
    __asm__ volatile(ARM_FAULT "1:\thlt\n2:" DISARM : : : "memory");
    UCHECK_FAULT("hlt", 13, 0);
    __asm__ volatile(ARM_FAULT "1:\tinb $0x60, %%al\n2:" DISARM : : : "memory", "eax");
    UCHECK_FAULT("in $0x60", 13, 0);
    __asm__ volatile(ARM_FAULT "1:\toutb %%al, $0x80\n2:" DISARM : : "a"(0) : "memory");
    UCHECK_FAULT("out $0x80", 13, 0);
    __asm__ volatile(ARM_FAULT "1:\tinb %%dx, %%al\n2:" DISARM : : "d"(COM1_LSR) : "memory", "eax");
    UCHECK_FAULT("in (%dx)", 13, 0);
    __asm__ volatile(ARM_FAULT "1:\toutb %%al, %%dx\n2:" DISARM : : "a"('!'), "d"(COM1) : "memory");
    UCHECK_FAULT("out (%dx)", 13, 0);
    __asm__ volatile(ARM_FAULT "1:\tmovl %%cr0, %%eax\n2:" DISARM : : : "memory", "eax");
    UCHECK_FAULT("mov cr0, eax", 13, 0);
    __asm__ volatile(ARM_FAULT "1:\tmovl %%eax, %%cr3\n2:" DISARM : : "a"(0) : "memory");
    UCHECK_FAULT("mov eax, cr3", 13, 0);
    __asm__ volatile(ARM_FAULT "1:\tlgdt %0\n2:" DISARM : : "m"(gdt_desc) : "memory");
    UCHECK_FAULT("lgdt", 13, 0);
    __asm__ volatile(ARM_FAULT "1:\tlidt %0\n2:" DISARM : : "m"(idt_desc) : "memory");
    UCHECK_FAULT("lidt", 13, 0);
    __asm__ volatile(ARM_FAULT "1:\tint $0x81\n2:" DISARM : : : "memory");
    UCHECK_FAULT("int $0x81 (DPL 0 gate)", 13, 0x81 * 8 + 2);
    __asm__ volatile(ARM_FAULT "1:\tint3\n2:" DISARM : : : "memory");
    UCHECK_FAULT("int3 (DPL 0 gate)", 13, 3 * 8 + 2);
    f = read_eflags();
    UCHECK_EQ(f & (EFLAGS_IF | EFLAGS_IOPL), EFLAGS_IF);   /* still IF=1 after all that */

    uputs("user: popf keeps IF and IOPL\n");
    /* popf with IF=0 and IOPL=3 in the popped value: silently ignored at
     * CPL 3 with IOPL 0 (no fault); the arithmetic flags do change */
    uint32_t want = (f & ~EFLAGS_IF) | EFLAGS_IOPL | EFLAGS_CF | EFLAGS_ZF;
    uint32_t got;
    __asm__ volatile("pushl %1; popfl; pushfl; popl %0" : "=r"(got) : "r"(want) : "memory", "cc");
    UCHECK_EQ(got & EFLAGS_IF, EFLAGS_IF);
    UCHECK_EQ(got & EFLAGS_IOPL, 0);
    UCHECK_EQ(got & (EFLAGS_CF | EFLAGS_ZF), EFLAGS_CF | EFLAGS_ZF);
    want = f & ~(EFLAGS_IF | EFLAGS_CF | EFLAGS_ZF);
    __asm__ volatile("pushl %1; popfl; pushfl; popl %0" : "=r"(got) : "r"(want) : "memory", "cc");
    UCHECK_EQ(got & EFLAGS_IF, EFLAGS_IF);
    UCHECK_EQ(got & (EFLAGS_CF | EFLAGS_ZF), 0);
    UCHECK_EQ(last.count, c0);              /* popf did not fault */

    uputs("user: unprivileged system instructions work\n");
    struct dtr g = {0, 0}, i = {0, 0};
    __asm__ volatile("sgdt %0; sidt %1" : "=m"(g), "=m"(i) : : "memory");
    UCHECK_EQ(g.limit, 0x37);
    UCHECK_EQ(g.base, (uint32_t)gdt);
    UCHECK_EQ(i.limit, 0x7ff);
    UCHECK_EQ(i.base, (uint32_t)idt);
    v = 0xdead0000;
    __asm__ volatile("str %0" : "+r"(v));
    UCHECK_EQ(v & 0xffff, TSS_SEL);
    v = 0;
    __asm__ volatile("smsw %0" : "=r"(v));
    UCHECK_EQ(v & CR0_PE, CR0_PE);
    UCHECK_EQ(last.count, c0);              /* none of those faulted */

    return 0x55;
}

static uint32_t run_user(uint32_t (*fn)(void))
{
    uint32_t *sp = (uint32_t *)(user_stack + sizeof user_stack - 12);
    *sp = (uint32_t)user_return_stub;
    return enter_user((uint32_t)fn, (uint32_t)sp);
}

static void phase3(void)
{
    printf("phase 3: the user task at CPL 3\n");
    uint32_t c0 = sys_count;
    uint32_t code = run_user(user_main);
    printf("kernel: user task exited with 0x%x after %u system calls\n", code, sys_count - c0);
    CHECK_EQ(code, 0x55);
    CHECK(sys_count - c0 > 10);
    CHECK_EQ(sys_frame_ok, sys_count);      /* every system call on the TSS stack, CS 0x1b, SS 0x23 */
    uint32_t cs, ss, ds;
    __asm__ volatile("movl %%cs, %0; movl %%ss, %1; movl %%ds, %2" : "=r"(cs), "=r"(ss), "=r"(ds));
    CHECK_EQ(cs & 0xffff, KCODE);
    CHECK_EQ(ss & 0xffff, KDATA);
    CHECK_EQ(ds & 0xffff, KDATA);
    CHECK_EQ(read_eflags() & EFLAGS_IF, 0); /* enter_user restored the kernel's EFLAGS */
    CHECK_EQ(irq_other, 0);
}

/* ------------------------------------------------------------- phase 4 */

static uint16_t pit_read0(void)
{
    outb(PIT_CMD, 0x00);                /* latch channel 0 */
    uint8_t lo = inb(PIT_CH0);
    uint8_t hi = inb(PIT_CH0);
    return (uint16_t)(lo | (hi << 8));
}

/* Spins (whatever IF is) until the PIT's channel 0 has reloaded `periods`
 * times (~1 ms each); returns the number of reloads seen (fewer if the
 * iteration bound ran out first). */
static uint32_t pit_wait(uint32_t periods)
{
    uint16_t prev = pit_read0();
    uint32_t seen = 0;
    for (uint32_t iter = 0; seen < periods && iter < 30000000; iter++) {
        uint16_t c = pit_read0();
        if (c > prev)
            seen++;
        prev = c;
    }
    return seen;
}

static uint32_t user_tick_main(void)
{
    uputs("user: spinning until the timer ticks\n");
    uint32_t t0 = ticks;
    uint32_t n = 4000000000u; /* generous: a loaded host may run the alarm late */
    while (ticks < t0 + 5 && --n)
        ;
    UCHECK(n != 0);
    UCHECK(ticks >= t0 + 5);
    return 0x66;
}

static void phase4(void)
{
    printf("phase 4: PIC + PIT timer interrupts\n");
    /* the PIT: channel 0, lobyte/hibyte, mode 2 (rate generator), binary */
    outb(PIT_CMD, 0x34);
    outb(PIT_CH0, PIT_DIVISOR & 0xff);
    outb(PIT_CH0, PIT_DIVISOR >> 8);
    outb(PIC1_DATA, 0xfe);              /* unmask IRQ 0 only */
    CHECK_EQ(inb(PIC1_DATA), 0xfe);
    CHECK_EQ(read_eflags() & EFLAGS_IF, 0);

    /* IF=0: ~20 ms pass, no tick is delivered, IRQ 0 is pending in the IRR */
    uint32_t t0 = ticks;
    uint32_t periods = pit_wait(20);
    uint32_t t1 = ticks;
    outb(PIC1_CMD, 0x0a);               /* OCW3: read the IRR */
    uint8_t irr = inb(PIC1_CMD);
    printf("kernel: IF=0 for %u PIT periods: %u ticks, IRR=0x%02x\n", periods, t1 - t0, irr);
    CHECK_EQ(periods, 20);
    CHECK_EQ(t1, t0);
    CHECK_EQ(irr & 1, 1);

    /* sti; nop: the pending IRQ 0 is taken after the instruction following
     * sti, so the saved EIP is the instruction after the nop */
    uint32_t expect;
    irq_capture = 1;
    __asm__ volatile("movl $1f, %0\n\tsti\n\tnop\n1:\tcli" : "=r"(expect) : : "memory");
    uint32_t t2 = ticks;
    printf("~kernel: after sti;nop: %u tick(s), IRQ saved eip 0x%08x (expected 0x%08x)\n",
           t2 - t1, cap_eip, expect);
    CHECK(t2 > t1);
    CHECK_EQ(irq_capture, 0);
    CHECK_EQ(cap_eip, expect);
    CHECK_EQ(cap_cs, KCODE);
    CHECK_EQ(cap_if, EFLAGS_IF);

    if (t2 == t1) {
        /* no timer interrupt at all: hlt below would never wake up */
        printf("FAIL pmode.c: IRQ 0 never arrived; skipping the hlt and user-task tests\n");
        kit_failed++;
        outb(PIC1_DATA, 0xff);
        return;
    }

    /* sti; hlt: hlt (in sti's shadow) sleeps until IRQ 0 wakes it; the
     * saved EIP is the instruction after hlt */
    t2 = ticks;
    irq_capture = 1;
    __asm__ volatile("movl $1f, %0\n\tsti\n\thlt\n1:\tcli" : "=r"(expect) : : "memory");
    uint32_t t3 = ticks;
    CHECK(t3 > t2);
    CHECK_EQ(cap_eip, expect);
    /* a few more hlt wake-ups */
    for (int k = 0; k < 5; k++)
        __asm__ volatile("sti; hlt; cli" : : : "memory");
    CHECK(ticks >= t3 + 5);

    /* IF=1 in the kernel: ticks arrive while it spins */
    t3 = ticks;
    write_eflags(read_eflags() | EFLAGS_IF);
    periods = pit_wait(50);
    write_eflags(read_eflags() & ~EFLAGS_IF);
    uint32_t t4 = ticks;
    printf("~kernel: IF=1 for %u PIT periods: %u ticks\n", periods, t4 - t3);
    CHECK_EQ(periods, 50);
    /* ~one tick per PIT period. Generous bounds: a host that deschedules
     * the guest makes pit_wait miss reloads (more ticks per counted period;
     * QEMU TCG under load gave up to 68 for 50) */
    CHECK(t4 - t3 >= 25 && t4 - t3 <= 150);

    /* the user task spins at CPL 3 until the timer has ticked */
    uint32_t u0 = user_irqs;
    uint32_t code = run_user(user_tick_main);
    uint32_t u1 = user_irqs;
    printf("~kernel: user task exited with 0x%x; %u ticks taken at CPL 3 (%u on the TSS stack)\n",
           code, u1 - u0, user_irqs_ok);
    CHECK_EQ(code, 0x66);
    CHECK(u1 - u0 >= 5);
    CHECK_EQ(user_irqs_ok, user_irqs);
    CHECK_EQ(sys_frame_ok, sys_count);

    outb(PIC1_DATA, 0xff);              /* mask IRQ 0 again */
    CHECK_EQ(irq_other, 0);
    CHECK_EQ(read_eflags() & EFLAGS_IF, 0);
}

int kmain(uint32_t magic, uint32_t mbi)
{
    (void)magic;
    (void)mbi;
    phase1();
    phase2();
    phase3();
    phase4();
    printf("~pmode: done, %u ticks, %u system calls, %u exceptions\n", ticks, sys_count, last.count);
    return kit_finish();
}
