/* sensitive: the non-virtualizable and privileged instructions at CPL 0 give
 * what real hardware gives (Robin & Irvine's list and the privileged rest).
 *
 * The guest never takes an interrupt or exception: the PIC is masked, IF is
 * set only briefly, and the IDT it loads for sidt is never used. */
#include "kit.h"

/* ---------------------------------------------------------------- helpers */

struct __attribute__((packed)) dtr {
    uint16_t limit;
    uint32_t base;
};

struct __attribute__((packed)) farptr {
    uint32_t offset;
    uint16_t selector;
};

extern uint64_t kit_gdt[];
extern char kit_gdt_end[];

static inline int lar(uint32_t sel, uint32_t *out)
{
    uint32_t v = *out;
    uint8_t z;
    __asm__ volatile("lar %2, %0; setz %1" : "+r"(v), "=q"(z) : "r"(sel) : "cc");
    *out = v;
    return z;
}

static inline int lsl(uint32_t sel, uint32_t *out)
{
    uint32_t v = *out;
    uint8_t z;
    __asm__ volatile("lsl %2, %0; setz %1" : "+r"(v), "=q"(z) : "r"(sel) : "cc");
    *out = v;
    return z;
}

static inline int verr(uint16_t sel)
{
    uint8_t z;
    __asm__ volatile("verr %1; setz %0" : "=q"(z) : "r"(sel) : "cc");
    return z;
}

static inline int verw(uint16_t sel)
{
    uint8_t z;
    __asm__ volatile("verw %1; setz %0" : "=q"(z) : "r"(sel) : "cc");
    return z;
}

static inline uint64_t rdmsr(uint32_t msr)
{
    uint32_t lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return ((uint64_t)hi << 32) | lo;
}

static inline void wrmsr(uint32_t msr, uint64_t v)
{
    __asm__ volatile("wrmsr" : : "c"(msr), "a"((uint32_t)v), "d"((uint32_t)(v >> 32)));
}

static uint64_t make_desc(uint32_t base, uint32_t limit, uint8_t access, uint8_t flags)
{
    uint32_t lo = (limit & 0xffff) | ((base & 0xffff) << 16);
    uint32_t hi = ((base >> 16) & 0xff) | ((uint32_t)access << 8) | (limit & 0xf0000) |
                  ((uint32_t)(flags & 0xf) << 20) | (base & 0xff000000);
    return ((uint64_t)hi << 32) | lo;
}

static uint64_t make_gate(uint16_t sel, uint32_t offset, uint8_t access)
{
    uint32_t lo = (offset & 0xffff) | ((uint32_t)sel << 16);
    uint32_t hi = (offset & 0xffff0000) | ((uint32_t)access << 8);
    return ((uint64_t)hi << 32) | lo;
}

/* ------------------------------------------------------------ eflags */

static void test_eflags(void)
{
    printf("-- pushf/popf, cli/sti\n");
    uint32_t f = read_eflags();
    printf("eflags at entry = 0x%08x\n", f);
    CHECK_EQ(f & EFLAGS_IF, 0);           /* the kit boots with IF=0 */
    CHECK_EQ(f & 0x2, 0x2);               /* bit 1 reads as 1 */
    CHECK_EQ(f & EFLAGS_IOPL, 0);

    /* sti/cli visible through pushf */
    uint32_t on, off;
    __asm__ volatile("sti; pushfl; popl %0; cli; pushfl; popl %1" : "=r"(on), "=r"(off) : : "memory");
    CHECK_EQ(on & EFLAGS_IF, EFLAGS_IF);
    CHECK_EQ(off & EFLAGS_IF, 0);

    /* popf sets and clears IF at CPL 0 */
    uint32_t a, b;
    __asm__ volatile("pushl %2; popfl; pushfl; popl %0; pushl %3; popfl; pushfl; popl %1"
                     : "=&r"(a), "=&r"(b)
                     : "r"(f | EFLAGS_IF), "r"(f & ~EFLAGS_IF)
                     : "cc", "memory");
    CHECK_EQ(a & EFLAGS_IF, EFLAGS_IF);
    CHECK_EQ(b & EFLAGS_IF, 0);

    /* popf at CPL 0 writes IOPL */
    write_eflags(f | EFLAGS_IOPL);
    uint32_t g = read_eflags();
    CHECK_EQ(g & EFLAGS_IOPL, EFLAGS_IOPL);
    write_eflags((f & ~EFLAGS_IOPL) | (1u << 12));
    CHECK_EQ(read_eflags() & EFLAGS_IOPL, 1u << 12);
    write_eflags(f);
    CHECK_EQ(read_eflags() & EFLAGS_IOPL, 0);

    /* popf writes the arithmetic flags and DF; fixed bits stay fixed; VM stays 0 */
    write_eflags(EFLAGS_ARITH | EFLAGS_DF);
    g = read_eflags();
    write_eflags(f);
    CHECK_EQ(g & (EFLAGS_ARITH | EFLAGS_DF), EFLAGS_ARITH | EFLAGS_DF);
    write_eflags(0xffffffffu & ~(EFLAGS_IF | EFLAGS_TF));
    g = read_eflags();
    write_eflags(f);
    CHECK_EQ(g & ((1u << 3) | (1u << 5) | (1u << 15)), 0);   /* reserved bits read 0 */
    CHECK_EQ(g & (1u << 17), 0);                               /* VM cannot be set by popf */
    CHECK_EQ(g & 0x2, 0x2);
    write_eflags(0);
    g = read_eflags();
    write_eflags(f);
    CHECK_EQ(g, 0x2);

    /* the ID flag (bit 21) toggles on a CPU with cpuid */
    write_eflags(f ^ (1u << 21));
    g = read_eflags();
    write_eflags(f);
    CHECK_EQ((g ^ f) & (1u << 21), 1u << 21);
    /* AC (bit 18) can be set at CPL 0 on a 486 or later */
    write_eflags(f | (1u << 18));
    g = read_eflags();
    write_eflags(f);
    CHECK_EQ(g & (1u << 18), 1u << 18);
    /* The system flags are back; the arithmetic ones are whatever the code between
     * (the checks) left, which depends on code generation and layout. */
    CHECK_EQ(read_eflags() & ~EFLAGS_ARITH, f & ~EFLAGS_ARITH);
}

/* ---------------------------------------------------- segment registers */

static void test_segments(void)
{
    printf("-- segment registers\n");
    uint32_t v, esp0, esp1;

    __asm__ volatile("movl %%esp, %1; pushl %%cs; movl %%esp, %2; popl %0"
                     : "=r"(v), "=&r"(esp0), "=&r"(esp1) : : "memory");
    CHECK_EQ(v & 0xffff, KIT_CODE_SEL);
    CHECK_EQ(esp0 - esp1, 4);

    v = 0xdeadbeef;
    __asm__ volatile("movl %%ds, %0" : "+r"(v));
    CHECK_EQ(v, KIT_DATA_SEL);             /* upper half zeroed (P6 and later) */
    v = 0xdeadbeef;
    __asm__ volatile("movl %%ss, %0" : "+r"(v));
    CHECK_EQ(v, KIT_DATA_SEL);
    v = 0xdeadbeef;
    __asm__ volatile("movl %%cs, %0" : "+r"(v));
    CHECK_EQ(v, KIT_CODE_SEL);
    v = 0xdeadbeef;
    __asm__ volatile("movl %%es, %0" : "+r"(v));
    CHECK_EQ(v, KIT_DATA_SEL);
    v = 0xdeadbeef;
    __asm__ volatile("movl %%fs, %0" : "+r"(v));
    CHECK_EQ(v, KIT_DATA_SEL);
    v = 0xdeadbeef;
    __asm__ volatile("movl %%gs, %0" : "+r"(v));
    CHECK_EQ(v, KIT_DATA_SEL);
    v = 0xdeadbeef;
    __asm__ volatile("movw %%ds, %w0" : "+r"(v));
    CHECK_EQ(v, 0xdead0000 | KIT_DATA_SEL); /* 16-bit form writes only the low half */

    /* mov sreg to memory is always a 16-bit store */
    static volatile uint32_t mem;
    mem = 0xffffffff;
    __asm__ volatile("movw %%ss, %0" : "=m"(mem));
    CHECK_EQ(mem, 0xffff0000 | KIT_DATA_SEL);
    mem = 0xffffffff;
    __asm__ volatile("mov %%cs, %0" : "=m"(mem));
    CHECK_EQ(mem, 0xffff0000 | KIT_CODE_SEL);

    /* push/pop of ds es fs gs ss */
    uint32_t d, e, fs, gs, ss;
    __asm__ volatile("pushl %%ds; popl %0; pushl %%es; popl %1; pushl %%fs; popl %2; pushl %%gs; popl %3;"
                     "pushl %%ss; popl %4"
                     : "=r"(d), "=r"(e), "=r"(fs), "=r"(gs), "=r"(ss) : : "memory");
    CHECK_EQ(d & 0xffff, KIT_DATA_SEL);
    CHECK_EQ(e & 0xffff, KIT_DATA_SEL);
    CHECK_EQ(fs & 0xffff, KIT_DATA_SEL);
    CHECK_EQ(gs & 0xffff, KIT_DATA_SEL);
    CHECK_EQ(ss & 0xffff, KIT_DATA_SEL);
    __asm__ volatile("movl %%esp, %0; pushl %%ds; popl %%es; pushl %%ss; popl %%ss; pushl %%ds; popl %%ds;"
                     "pushl %%fs; popl %%gs; pushl %%gs; popl %%fs; movl %%esp, %1"
                     : "=&r"(esp0), "=r"(esp1) : : "memory");
    CHECK_EQ(esp0, esp1);
    v = 0;
    __asm__ volatile("movl %%es, %0" : "=r"(v));
    CHECK_EQ(v, KIT_DATA_SEL);

    /* 16-bit push/pop of a segment register moves esp by 2 */
    __asm__ volatile("movl %%esp, %1; pushw %%ds; movl %%esp, %2; popw %w0"
                     : "=r"(v), "=&r"(esp0), "=&r"(esp1) : : "memory");
    CHECK_EQ(esp0 - esp1, 2);
    CHECK_EQ(v & 0xffff, KIT_DATA_SEL);

    /* the null selector may be loaded into fs/gs at CPL 0 */
    __asm__ volatile("xorl %%eax, %%eax; movl %%eax, %%fs; movl %%fs, %0; movl %2, %%eax; movl %%eax, %%fs"
                     : "=r"(v), "=&a"(d) : "i"(KIT_DATA_SEL));
    CHECK_EQ(v, 0);
    __asm__ volatile("pushl $0; popl %%gs; movl %%gs, %0; pushl %1; popl %%gs" : "=r"(v) : "i"(KIT_DATA_SEL));
    CHECK_EQ(v, 0);
    __asm__ volatile("movl %%gs, %0" : "=r"(v));
    CHECK_EQ(v, KIT_DATA_SEL);
}

/* --------------------------------------------------- descriptor tables */

static uint64_t big_gdt[16] __attribute__((aligned(8)));
static uint8_t tss[104] __attribute__((aligned(16)));
static uint32_t seg_buf[64] __attribute__((aligned(16)));
static uint64_t fake_idt[32] __attribute__((aligned(8)));

static void test_tables(void)
{
    printf("-- sgdt/sidt/sldt/str/lldt\n");
    uint8_t raw[8];
    memset(raw, 0xee, sizeof raw);
    __asm__ volatile("sgdt %0" : "=m"(raw) : : "memory");
    struct dtr g;
    memcpy(&g, raw, 6);
    printf("gdtr: base=0x%08x limit=0x%x\n", g.base, g.limit);
    CHECK_EQ(g.limit, 0x17);
    CHECK_EQ(g.base, (uint32_t)kit_gdt);
    CHECK_EQ(raw[6], 0xee);                 /* sgdt stores exactly 6 bytes */
    CHECK_EQ(raw[7], 0xee);
    CHECK_EQ((uint32_t)(kit_gdt_end - (char *)kit_gdt), 24);
    CHECK_EQ((uint32_t)kit_gdt[1], 0x0000ffff);
    CHECK_EQ((uint32_t)(kit_gdt[1] >> 32), 0x00cf9b00);

    struct dtr orig_idt, idt, mine = { sizeof(fake_idt) - 1, (uint32_t)fake_idt };
    __asm__ volatile("sidt %0" : "=m"(orig_idt));
    printf("idtr at boot: base=0x%08x limit=0x%x\n", orig_idt.base, orig_idt.limit);
    __asm__ volatile("lidt %1; sidt %0; lidt %2" : "=m"(idt) : "m"(mine), "m"(orig_idt) : "memory");
    CHECK_EQ(idt.limit, sizeof(fake_idt) - 1);
    CHECK_EQ(idt.base, (uint32_t)fake_idt);
    __asm__ volatile("sidt %0" : "=m"(idt));
    CHECK_EQ(idt.limit, orig_idt.limit);
    CHECK_EQ(idt.base, orig_idt.base);

    /* lgdt of another table, sgdt sees it, lgdt back */
    struct dtr other = { 0x7f, (uint32_t)big_gdt }, seen, kit_desc = { 0x17, (uint32_t)kit_gdt };
    memcpy(big_gdt, kit_gdt, 24);
    __asm__ volatile("lgdt %1; sgdt %0; lgdt %2" : "=m"(seen) : "m"(other), "m"(kit_desc) : "memory");
    CHECK_EQ(seen.limit, 0x7f);
    CHECK_EQ(seen.base, (uint32_t)big_gdt);

    uint32_t v = 0xdeadbeef;
    __asm__ volatile("sldt %0" : "+r"(v));
    CHECK_EQ(v, 0);
    __asm__ volatile("lldt %w0" : : "r"(0));
    v = 0xdeadbeef;
    __asm__ volatile("sldt %0" : "+r"(v));
    CHECK_EQ(v, 0);
    static volatile uint32_t mem;
    mem = 0xffffffff;
    __asm__ volatile("sldt %0" : "=m"(mem));
    CHECK_EQ(mem, 0xffff0000);              /* 16-bit store */
    v = 0xdeadbeef;
    __asm__ volatile("str %0" : "+r"(v));
    CHECK_EQ(v, 0);
}

static void test_lar_lsl(void)
{
    printf("-- lar/lsl/verr/verw\n");
    uint32_t v;
    /* the kit's GDT */
    v = 0; CHECK_EQ(lar(0x08, &v), 1); CHECK_EQ(v, 0x00cf9b00 & 0x00f0ff00);
    v = 0; CHECK_EQ(lar(0x10, &v), 1); CHECK_EQ(v, 0x00cf9300 & 0x00f0ff00);
    v = 0x1234; CHECK_EQ(lar(0x00, &v), 0); CHECK_EQ(v, 0x1234);  /* null: ZF=0, dest unchanged */
    v = 0x1234; CHECK_EQ(lar(0x18, &v), 0); CHECK_EQ(v, 0x1234);  /* beyond the limit */
    v = 0x1234; CHECK_EQ(lar(0x0b, &v), 0);                       /* RPL 3 > DPL 0 */
    v = 0x1234; CHECK_EQ(lar(0x0c, &v), 0);                       /* TI=1: the LDT is null */
    v = 0; CHECK_EQ(lsl(0x08, &v), 1); CHECK_EQ(v, 0xffffffff);
    v = 0; CHECK_EQ(lsl(0x10, &v), 1); CHECK_EQ(v, 0xffffffff);
    v = 0x5678; CHECK_EQ(lsl(0x00, &v), 0); CHECK_EQ(v, 0x5678);
    v = 0x5678; CHECK_EQ(lsl(0x18, &v), 0); CHECK_EQ(v, 0x5678);
    CHECK_EQ(verr(0x08), 1);    /* readable code */
    CHECK_EQ(verw(0x08), 0);    /* code is never writable */
    CHECK_EQ(verr(0x10), 1);
    CHECK_EQ(verw(0x10), 1);
    CHECK_EQ(verr(0x00), 0);
    CHECK_EQ(verw(0x00), 0);
    CHECK_EQ(verr(0x18), 0);
    CHECK_EQ(verw(0x13), 0);    /* RPL 3 > DPL 0 */

    /* a bigger GDT with more kinds of descriptors */
    memset(big_gdt, 0, sizeof big_gdt);
    memcpy(big_gdt, kit_gdt, 24);
    big_gdt[3] = make_desc((uint32_t)seg_buf, sizeof(seg_buf) - 1, 0x93, 0x4);  /* 0x18 data, byte limit, base = seg_buf */
    big_gdt[4] = make_desc((uint32_t)tss, 0x67, 0x89, 0x0);                    /* 0x20 32-bit TSS, available */
    big_gdt[5] = make_desc(0, 0xffff, 0x9b, 0x0);                              /* 0x28 16-bit code, limit 0xffff */
    big_gdt[6] = make_desc(0, 0xfffff, 0xf3, 0xc);                             /* 0x30 ring-3 data, 4 GiB */
    big_gdt[7] = make_desc(0, 0xfffff, 0x13, 0xc);                             /* 0x38 data, not present */
    big_gdt[8] = make_gate(0x08, 0x1234, 0x8c);                                /* 0x40 call gate, DPL 0 */
    big_gdt[9] = make_gate(0x08, 0x1234, 0x8e);                                /* 0x48 interrupt gate (not valid for lar) */
    big_gdt[10] = make_desc(0, 0xf, 0x9b, 0xc);                                /* 0x50 code, page-granular limit 0xf */
    big_gdt[11] = make_desc(0, 0xfffff, 0x9f, 0xc);                            /* 0x58 conforming code */
    struct dtr big = { 12 * 8 - 1, (uint32_t)big_gdt }, kit_desc = { 0x17, (uint32_t)kit_gdt };
    __asm__ volatile("lgdt %0" : : "m"(big) : "memory");

    v = 0; CHECK_EQ(lar(0x18, &v), 1); CHECK_EQ(v, 0x00409300);
    v = 0; CHECK_EQ(lsl(0x18, &v), 1); CHECK_EQ(v, sizeof(seg_buf) - 1);
    v = 0; CHECK_EQ(lar(0x20, &v), 1); CHECK_EQ(v, 0x00008900);
    v = 0; CHECK_EQ(lsl(0x20, &v), 1); CHECK_EQ(v, 0x67);
    v = 0; CHECK_EQ(lar(0x28, &v), 1); CHECK_EQ(v, 0x00009b00);
    v = 0; CHECK_EQ(lsl(0x28, &v), 1); CHECK_EQ(v, 0xffff);
    v = 0; CHECK_EQ(lar(0x30, &v), 1); CHECK_EQ(v, 0x00c0f300);
    v = 0; CHECK_EQ(lar(0x33, &v), 1); CHECK_EQ(v, 0x00c0f300);   /* RPL 3 ok for DPL 3 */
    CHECK_EQ(verw(0x33), 1);
    v = 0; CHECK_EQ(lar(0x38, &v), 1); CHECK_EQ(v, 0x00c01300);   /* lar does not check P */
    v = 0; CHECK_EQ(lar(0x40, &v), 1); CHECK_EQ(v, 0x00008c00);   /* call gates are valid for lar */
    v = 0x77; CHECK_EQ(lsl(0x40, &v), 0); CHECK_EQ(v, 0x77);      /* ... but not for lsl */
    v = 0x77; CHECK_EQ(lar(0x48, &v), 0); CHECK_EQ(v, 0x77);      /* interrupt gates are not */
    v = 0; CHECK_EQ(lsl(0x50, &v), 1); CHECK_EQ(v, 0xffff);       /* (0xf << 12) | 0xfff */
    v = 0; CHECK_EQ(lar(0x5b, &v), 1); CHECK_EQ(v, 0x00c09f00);   /* conforming: RPL not checked */
    v = 0x99; CHECK_EQ(lar(0x60, &v), 0); CHECK_EQ(v, 0x99);      /* beyond the new limit */
    CHECK_EQ(verr(0x28), 1);
    CHECK_EQ(verw(0x28), 0);
    CHECK_EQ(verr(0x20), 0);    /* system segments fail verr/verw */

    /* a data segment with a non-zero base, through fs and gs */
    for (unsigned i = 0; i < ARRAY_SIZE(seg_buf); i++)
        seg_buf[i] = 0xc0de0000 + i;
    uint32_t a, b, c;
    __asm__ volatile("movw $0x18, %%ax; movw %%ax, %%fs; movl %%fs:0, %0; movl %%fs:8, %1;"
                     "movl $0xabcd1234, %%fs:12; movw $0x10, %%ax; movw %%ax, %%fs"
                     : "=&r"(a), "=&r"(b) : : "eax", "memory");
    CHECK_EQ(a, 0xc0de0000);
    CHECK_EQ(b, 0xc0de0002);
    CHECK_EQ(seg_buf[3], 0xabcd1234);
    uint32_t idx = 5;
    __asm__ volatile("pushl $0x18; popl %%gs; movl %%gs:(,%1,4), %0; pushl $0x10; popl %%gs"
                     : "=r"(c) : "r"(idx) : "memory");
    CHECK_EQ(c, 0xc0de0005);

    /* ltr marks the TSS busy; str returns the selector */
    __asm__ volatile("ltr %w0" : : "r"(0x20) : "memory");
    v = 0xdeadbeef;
    __asm__ volatile("str %0" : "+r"(v));
    CHECK_EQ(v, 0x20);
    v = 0; CHECK_EQ(lar(0x20, &v), 1); CHECK_EQ(v, 0x00008b00);   /* type 9 -> 11 (busy) */
    CHECK_EQ((uint32_t)(big_gdt[4] >> 40) & 0xff, 0x8b);

    __asm__ volatile("lgdt %0" : : "m"(kit_desc) : "memory");
    v = 0x1234; CHECK_EQ(lar(0x18, &v), 0);
}

/* ------------------------------------------------- control/debug regs */

static void test_control_regs(void)
{
    printf("-- cr0/smsw/lmsw/clts, cr2, cr3, cr4, debug registers\n");
    uint32_t cr0 = read_cr0();
    printf("cr0 = 0x%08x\n", cr0);
    CHECK_EQ(cr0 & CR0_PE, CR0_PE);
    CHECK_EQ(cr0 & CR0_PG, 0);
    CHECK_EQ(cr0 & CR0_ET, CR0_ET);         /* hardwired to 1 since the Pentium */

    uint32_t v = 0xdeadbeef;
    __asm__ volatile("smsw %0" : "+r"(v));
    CHECK_EQ(v & 0xffff, cr0 & 0xffff);
    static volatile uint32_t mem;
    mem = 0xffffffff;
    __asm__ volatile("smsw %0" : "=m"(mem));
    CHECK_EQ(mem, 0xffff0000 | (cr0 & 0xffff));

    /* clts */
    write_cr0(cr0 | CR0_TS);
    CHECK_EQ(read_cr0() & CR0_TS, CR0_TS);
    __asm__ volatile("clts");
    CHECK_EQ(read_cr0() & CR0_TS, 0);
    CHECK_EQ(read_cr0(), cr0 & ~CR0_TS);

    /* lmsw loads PE/MP/EM/TS, cannot clear PE, leaves the other bits */
    uint16_t w = (uint16_t)((cr0 & 0xfff0) | CR0_PE | CR0_MP | CR0_TS);
    __asm__ volatile("lmsw %0" : : "r"(w));
    uint32_t after = read_cr0();
    CHECK_EQ(after & (CR0_PE | CR0_MP | CR0_EM | CR0_TS), CR0_PE | CR0_MP | CR0_TS);
    CHECK_EQ(after & ~0xfu, cr0 & ~0xfu);
    w = 0;
    __asm__ volatile("lmsw %0" : : "r"(w));
    after = read_cr0();
    CHECK_EQ(after & (CR0_PE | CR0_MP | CR0_EM | CR0_TS), CR0_PE);   /* PE stays set */
    CHECK_EQ(after & CR0_ET, CR0_ET);
    write_cr0(cr0);
    CHECK_EQ(read_cr0(), cr0);

    /* cr2 */
    uint32_t cr2;
    __asm__ volatile("movl %%cr2, %0" : "=r"(cr2));
    __asm__ volatile("movl %0, %%cr2" : : "r"(0xdeadb000u));
    __asm__ volatile("movl %%cr2, %0" : "=r"(v));
    CHECK_EQ(v, 0xdeadb000);
    __asm__ volatile("movl %0, %%cr2" : : "r"(0x12345678u));
    __asm__ volatile("movl %%cr2, %0" : "=r"(v));
    CHECK_EQ(v, 0x12345678);
    __asm__ volatile("movl %0, %%cr2" : : "r"(cr2));

    /* cr3 (paging is off, so it only has to round-trip) */
    uint32_t cr3;
    __asm__ volatile("movl %%cr3, %0" : "=r"(cr3));
    __asm__ volatile("movl %0, %%cr3" : : "r"(0x00123000u) : "memory");
    __asm__ volatile("movl %%cr3, %0" : "=r"(v));
    CHECK_EQ(v, 0x00123000);
    __asm__ volatile("movl %0, %%cr3" : : "r"(0x00456018u) : "memory");   /* PWT|PCD kept */
    __asm__ volatile("movl %%cr3, %0" : "=r"(v));
    CHECK_EQ(v, 0x00456018);
    __asm__ volatile("movl %0, %%cr3" : : "r"(cr3) : "memory");

    /* cr4 */
    uint32_t cr4 = read_cr4();
    printf("cr4 = 0x%08x\n", cr4);
    write_cr4(0);
    CHECK_EQ(read_cr4(), 0);
    write_cr4((1u << 4) | (1u << 3));          /* PSE | DE */
    CHECK_EQ(read_cr4(), (1u << 4) | (1u << 3));
    write_cr4(cr4);
    CHECK_EQ(read_cr4(), cr4);

    /* debug registers (no breakpoint is enabled) */
    uint32_t d0, d1, d2, d3, d6, d7;
    __asm__ volatile("movl %0, %%dr0" : : "r"(0x00100000u));
    __asm__ volatile("movl %0, %%dr1" : : "r"(0x11111110u));
    __asm__ volatile("movl %0, %%dr2" : : "r"(0x22222220u));
    __asm__ volatile("movl %0, %%dr3" : : "r"(0x33333330u));
    __asm__ volatile("movl %0, %%dr7" : : "r"(0x000f0400u));   /* RW0/LEN0 set, no L/G enables */
    __asm__ volatile("movl %%dr0, %0" : "=r"(d0));
    __asm__ volatile("movl %%dr1, %0" : "=r"(d1));
    __asm__ volatile("movl %%dr2, %0" : "=r"(d2));
    __asm__ volatile("movl %%dr3, %0" : "=r"(d3));
    __asm__ volatile("movl %%dr6, %0" : "=r"(d6));
    __asm__ volatile("movl %%dr7, %0" : "=r"(d7));
    CHECK_EQ(d0, 0x00100000);
    CHECK_EQ(d1, 0x11111110);
    CHECK_EQ(d2, 0x22222220);
    CHECK_EQ(d3, 0x33333330);
    CHECK_EQ(d7, 0x000f0400);
    printf("dr6 = 0x%08x\n", d6);
    CHECK_EQ(d6 & 0xffff0ff0, 0xffff0ff0);     /* reserved bits read as 1 */
    __asm__ volatile("movl %0, %%dr7" : : "r"(0x00000400u));
    __asm__ volatile("movl %%dr7, %0" : "=r"(d7));
    CHECK_EQ(d7, 0x00000400);
}

/* ---------------------------------------------- cpuid, tsc, msr, caches */

static void test_misc(void)
{
    printf("-- cpuid, rdtsc, rdmsr/wrmsr, wbinvd/invd\n");
    uint32_t a, b, c, d;
    cpuid(0, 0, &a, &b, &c, &d);
    char vendor[13];
    memcpy(vendor, &b, 4);
    memcpy(vendor + 4, &d, 4);
    memcpy(vendor + 8, &c, 4);
    vendor[12] = 0;
    printf("~cpuid 0: max leaf %u vendor \"%s\"\n", a, vendor);
    CHECK(a >= 1);
    CHECK(vendor[0] != 0);
    cpuid(1, 0, &a, &b, &c, &d);
    printf("~cpuid 1: eax=0x%08x ecx=0x%08x edx=0x%08x\n", a, c, d);
    CHECK_EQ(c & (1u << 5), 0);                /* no VMX */
    CHECK_EQ(d & (1u << 4), 1u << 4);          /* TSC */
    CHECK_EQ(d & (1u << 5), 1u << 5);          /* MSR */

    uint64_t t0 = rdtsc();
    volatile uint32_t spin = 0;
    for (int i = 0; i < 1000; i++)
        spin += i;
    uint64_t t1 = rdtsc();
    uint64_t t2 = rdtsc();
    CHECK(t1 > t0);
    CHECK(t2 >= t1);

    uint64_t saved = rdmsr(0x174);
    wrmsr(0x174, KIT_CODE_SEL);
    CHECK_EQ((uint32_t)rdmsr(0x174), KIT_CODE_SEL);
    CHECK_EQ((uint32_t)(rdmsr(0x174) >> 32), 0);
    wrmsr(0x175, 0x00123450);                  /* IA32_SYSENTER_ESP */
    CHECK_EQ((uint32_t)rdmsr(0x175), 0x00123450);
    wrmsr(0x176, 0x00234560);                  /* IA32_SYSENTER_EIP */
    CHECK_EQ((uint32_t)rdmsr(0x176), 0x00234560);
    wrmsr(0x174, saved);

    static volatile uint32_t cached = 0x600df00d;
    __asm__ volatile("wbinvd" : : : "memory");
    CHECK_EQ(cached, 0x600df00d);
    __asm__ volatile("wbinvd; invd" : : : "memory");   /* fine on an emulator after wbinvd */
    CHECK_EQ(cached, 0x600df00d);
}

/* ----------------------------------------------------------- port I/O */

static void test_io(void)
{
    printf("-- in/out\n");
    outb(COM1_SCR, 0x5a);
    CHECK_EQ(inb(COM1_SCR), 0x5a);
    outb(COM1_SCR, 0xa5);
    CHECK_EQ(inb(COM1_SCR), 0xa5);
    uint8_t r;
    __asm__ volatile("movw $0x3ff, %%dx; movb $0x3c, %%al; outb %%al, %%dx; movb $0, %%al; inb %%dx, %%al"
                     : "=a"(r) : : "edx");
    CHECK_EQ(r, 0x3c);
    CHECK_EQ(inb(COM1_LSR) & LSR_THRE, LSR_THRE);
    CHECK_EQ(inb(0x2e8), 0xff);                /* nothing there */
    CHECK_EQ(inw(0x2e8), 0xffff);
    CHECK_EQ(inl(0x2e8), 0xffffffff);
    /* outs/ins to the scratch register */
    static uint8_t src[4] = { 0x11, 0x22, 0x33, 0x44 }, dst[4];
    const uint8_t *s = src;
    uint32_t n = 4;
    __asm__ volatile("cld; rep outsb" : "+S"(s), "+c"(n) : "d"(COM1_SCR) : "memory");
    CHECK_EQ(inb(COM1_SCR), 0x44);
    CHECK_EQ(s - src, 4);
    uint8_t *p = dst;
    n = 2;
    __asm__ volatile("cld; rep insb" : "+D"(p), "+c"(n) : "d"(COM1_SCR) : "memory");
    CHECK_EQ(dst[0], 0x44);
    CHECK_EQ(dst[1], 0x44);
    CHECK_EQ(p - dst, 2);
}

/* ------------------------------------------------------ far transfers */

static struct farptr far_target;
static struct farptr lss_ptr;

static void test_far(void)
{
    printf("-- far jmp/call/ret, lds/les/lfs/lgs/lss\n");
    uint32_t v = 0, pushed_cs = 0, esp0, esp1;

    __asm__ volatile("movl $1, %0; ljmp $0x08, $1f; movl $2, %0; 1:" : "=r"(v));
    CHECK_EQ(v, 1);

    __asm__ volatile("movl %%esp, %2; lcall $0x08, $1f; jmp 2f;"
                     "1: movl 4(%%esp), %1; movl $0x1234, %0; lret;"
                     "2: movl %%esp, %3"
                     : "=&r"(v), "=&r"(pushed_cs), "=&r"(esp0), "=&r"(esp1) : : "memory");
    CHECK_EQ(v, 0x1234);
    CHECK_EQ(pushed_cs & 0xffff, KIT_CODE_SEL);
    CHECK_EQ(esp0, esp1);

    /* lret $imm pops the arguments */
    __asm__ volatile("movl %%esp, %1; pushl $7; pushl $9; lcall $0x08, $1f; jmp 2f;"
                     "1: movl 8(%%esp), %0; addl 12(%%esp), %0; lret $8;"
                     "2: movl %%esp, %2"
                     : "=&r"(v), "=&r"(esp0), "=&r"(esp1) : : "memory");
    CHECK_EQ(v, 16);
    CHECK_EQ(esp0, esp1);

    /* indirect far jmp/call through memory */
    __asm__ volatile("movl $1f, %1; movw $0x08, %2; movl $5, %0; ljmp *%3; movl $6, %0; 1:"
                     : "=&r"(v), "=m"(far_target.offset), "=m"(far_target.selector)
                     : "m"(far_target) : "memory");
    CHECK_EQ(v, 5);
    __asm__ volatile("movl $1f, %1; movw $0x08, %2; lcall *%3; jmp 2f; 1: movl $0x77, %0; lret; 2:"
                     : "=&r"(v), "=m"(far_target.offset), "=m"(far_target.selector)
                     : "m"(far_target) : "memory");
    CHECK_EQ(v, 0x77);

    /* lds/les/lfs/lgs */
    struct farptr fp = { 0x12345678, KIT_DATA_SEL };
    uint32_t r = 0, sel = 0;
    __asm__ volatile("lfs %2, %0; movl %%fs, %1" : "=r"(r), "=r"(sel) : "m"(fp));
    CHECK_EQ(r, 0x12345678);
    CHECK_EQ(sel, KIT_DATA_SEL);
    fp.offset = 0x9abcdef0;
    __asm__ volatile("lgs %2, %0; movl %%gs, %1" : "=r"(r), "=r"(sel) : "m"(fp));
    CHECK_EQ(r, 0x9abcdef0);
    CHECK_EQ(sel, KIT_DATA_SEL);
    fp.offset = 0x0badcafe;
    __asm__ volatile("les %2, %0; movl %%es, %1" : "=r"(r), "=r"(sel) : "m"(fp));
    CHECK_EQ(r, 0x0badcafe);
    CHECK_EQ(sel, KIT_DATA_SEL);
    fp.offset = 0x13579bdf;
    __asm__ volatile("lds %2, %0; movl %%ds, %1" : "=r"(r), "=r"(sel) : "m"(fp));
    CHECK_EQ(r, 0x13579bdf);
    CHECK_EQ(sel, KIT_DATA_SEL);
    /* lfs with the null selector */
    fp.selector = 0;
    fp.offset = 42;
    __asm__ volatile("lfs %2, %0; movl %%fs, %1; movw $0x10, %%ax; movw %%ax, %%fs"
                     : "=r"(r), "=r"(sel) : "m"(fp) : "eax");
    CHECK_EQ(r, 42);
    CHECK_EQ(sel, 0);

    /* lss loads ss:esp at once */
    __asm__ volatile("movl %%esp, %%ecx; subl $32, %%ecx; movl %%ecx, %2; movw $0x10, %3;"
                     "lss %4, %%esp; movl %%esp, %0; addl $32, %%esp; movl %%ss, %1"
                     : "=&r"(r), "=&r"(sel), "=m"(lss_ptr.offset), "=m"(lss_ptr.selector)
                     : "m"(lss_ptr) : "ecx", "memory");
    CHECK_EQ(r, lss_ptr.offset);
    CHECK_EQ(sel, KIT_DATA_SEL);
}

int kmain(uint32_t magic, uint32_t mbi)
{
    (void)mbi;
    printf("sensitive: privileged and sensitive instructions at CPL 0\n");
    CHECK_EQ(magic, MULTIBOOT_BOOTLOADER_MAGIC);
    /* mask both PICs so that the short IF=1 windows below cannot take an interrupt */
    outb(0x21, 0xff);
    outb(0xa1, 0xff);

    test_eflags();
    test_segments();
    test_tables();
    test_lar_lsl();
    test_control_regs();
    test_misc();
    test_io();
    test_far();
    return kit_finish();
}
