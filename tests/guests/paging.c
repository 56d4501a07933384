/* paging: 2-level 32-bit paging as real hardware does it. Its own GDT
 * (ring 0 and ring 3 flat segments, a 32-bit TSS), an IDT (exceptions 0-19,
 * a #PF handler on vector 14 that records CR2, the error code and the saved
 * EIP and then either skips the faulting instruction or maps the page and
 * retries it; system calls on a DPL-3 trap gate at 0x80), page tables that
 * identity-map the first 8 MiB with 4 KiB supervisor pages, then:
 *
 *   phase 1  paging on (CR3, CR0.PG); A/D bits of the identity mapping
 *   phase 2  reads/writes through a non-identity mapping (0x40000000)
 *   phase 3  accessed and dirty bits (A after a read, D only after a write)
 *   phase 4  2,000 PTE rewrites, each followed by INVLPG and seen at once;
 *            200 more written through an alias mapping of the page table
 *   phase 5  500 PTE rewrites, each followed by a CR3 reload
 *   phase 6  a page-directory entry retargeted to another page table
 *   phase 7  not-present faults: CR2 and error codes 0x0 (read), 0x2 (write)
 *   phase 8  demand paging: the #PF handler maps the page and retries;
 *            64 pages, exactly one fault each
 *   phase 9  CR0.WP: a supervisor write to a read-only page faults (0x3)
 *            only when WP=1
 *   phase 10 CPL 3: supervisor-only pages (#PF 0x5), user read-only pages
 *            (#PF 0x7), not-present pages (0x4/0x6), U/S and R/W in the PDE
 *   phase 11 4 MiB pages (CR4.PSE, PDE.PS): reads/writes, A/D in the PDE,
 *            a large page retargeted with INVLPG
 *   phase 12 two address spaces (two page directories) switched 400 times
 *   phase 13 code changed through an alias mapping is retranslated; code
 *            pages remapped under a fixed linear address
 *
 * Devices: COM1 (kit), exit 0xf4. No IRQs (IF stays 0 throughout, also at
 * CPL 3). */
#include "kit.h"

#define KCODE   0x08
#define KDATA   0x10
#define UCODE   0x1b
#define UDATA   0x23
#define TSS_SEL 0x28

#define NOERR 0xffffffffu

#define PTE_P  0x001u
#define PTE_W  0x002u
#define PTE_U  0x004u
#define PTE_A  0x020u
#define PTE_D  0x040u
#define PDE_PS 0x080u
#define CR4_PSE (1u << 4)

#define PF_ERR_P 1u
#define PF_ERR_W 2u
#define PF_ERR_U 4u

/* linear addresses */
#define L_TEST     0x40000000u      /* PDE 0x100 -> pt_40 */
#define L_DEMAND   0x44000000u      /* PDE 0x110 -> pt_44 */
#define L_PDE      0x48000000u      /* PDE 0x120 -> pt_48x / pt_48y */
#define L_AS       0x50000000u      /* PDE 0x140: differs between pd_a and pd_b */
#define L_USER     0x60000000u      /* PDE 0x180 -> pt_60 (user) */
#define L_U_CODE   0x60010000u
#define L_U_STACK  0x60011000u
#define L_PDE_SUP  0x64000000u      /* PDE 0x190 -> pt_64s (PDE supervisor) */
#define L_PDE_RO   0x64400000u      /* PDE 0x191 -> pt_64r (PDE read-only) */
#define L_NOPDE    0x7f000000u      /* PDE 0x1fc: not present */
#define L_BIG      0x80000000u      /* PDE 0x200: 4 MiB page */
#define L_BIG2     0x80400000u      /* PDE 0x201: 4 MiB page */
#define PDX(l) ((l) >> 22)

#define DEMAND_PAGES 64
#define POOL_PAGES 8

typedef volatile uint32_t page_t[1024] __attribute__((aligned(4096)));

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

static uint64_t gdt[6] __attribute__((aligned(8)));
static uint64_t idt[256] __attribute__((aligned(8)));
static struct tss32 tss __attribute__((aligned(16)));
static uint8_t ring0_stack[8192] __attribute__((aligned(16)));
static struct dtr gdt_desc, idt_desc;

/* paging structures */
static page_t pd_a, pd_b;
static page_t pt_id[2] __attribute__((aligned(4096)));                 /* identity, 0-8 MiB */
static page_t pt_40, pt_44, pt_48x, pt_48y, pt_50a, pt_50b, pt_60, pt_64s, pt_64r;
/* physical pages the tests map */
static page_t pool[POOL_PAGES] __attribute__((aligned(4096)));
static page_t pg_map, pg_map2, pg_ad, pg_wp, pg_wp_u, pg_50a, pg_50b;
static page_t u_rw, u_sup, u_ro, u_stack, u_pde_sup, u_pde_ro;
static page_t code_pg, code_c1, code_c2, code_x;
static page_t demand[DEMAND_PAGES] __attribute__((aligned(4096)));

extern const uint32_t pg_exc_stubs[20];
extern char pg_isr_0x80[];
extern char user_page_start[], user_page_end[], user_task[];
extern const uint32_t pg_user_sites[][2];
extern const uint32_t pg_user_nsites;
extern char __kit_image_start[], __kit_image_end[];
extern uint8_t kit_stack_bottom[], kit_stack_top[];
uint32_t enter_user(uint32_t eip, uint32_t esp);
uint32_t pg_user_exit_code;

static inline uint32_t pa(const volatile void *p) { return (uint32_t)p; }   /* identity */
static inline void invlpg(uint32_t la) { __asm__ volatile("invlpg (%0)" : : "r"(la) : "memory"); }
static inline uint32_t read_cr2(void) { uint32_t v; __asm__ volatile("movl %%cr2, %0" : "=r"(v)); return v; }
static inline uint32_t read_cr3(void) { uint32_t v; __asm__ volatile("movl %%cr3, %0" : "=r"(v)); return v; }
static inline void write_cr3(uint32_t v) { __asm__ volatile("movl %0, %%cr3" : : "r"(v) : "memory"); }
static inline void reload_cr3(void) { write_cr3(read_cr3()); }
static inline uint32_t rd(uint32_t la) { return *(volatile uint32_t *)la; }
static inline void wr(uint32_t la, uint32_t v) { *(volatile uint32_t *)la = v; }
static inline void barrier(void) { __asm__ volatile("" : : : "memory"); }

static uint64_t make_desc(uint32_t base, uint32_t limit, uint8_t access, uint8_t flags)
{
    uint32_t lo = (limit & 0xffff) | ((base & 0xffff) << 16);
    uint32_t hi = ((base >> 16) & 0xff) | ((uint32_t)access << 8) | (limit & 0xf0000) |
                  ((uint32_t)(flags & 0xf) << 20) | (base & 0xff000000);
    return ((uint64_t)hi << 32) | lo;
}

#define GATE_INT_DPL0  0x8e
#define GATE_TRAP_DPL3 0xef

static void set_gate(unsigned vec, uint32_t handler, uint8_t access)
{
    uint32_t lo = (handler & 0xffff) | ((uint32_t)KCODE << 16);
    uint32_t hi = (handler & 0xffff0000) | ((uint32_t)access << 8);
    idt[vec] = ((uint64_t)hi << 32) | lo;
}

/* ------------------------------------------------------- trap recording */

struct trap_rec {
    uint32_t vector, err, eip, cs, cr2;
    uint32_t on_tss;            /* entered from CPL 3, frame ends exactly at tss.esp0 */
    uint32_t user_ss;
};
volatile struct trap_rec last;
volatile uint32_t trap_count;
#define MAXREC 16
volatile struct trap_rec recs[MAXREC];
volatile uint32_t nrecs;

/* Kernel faults: set just before an instruction that must fault (between
 * labels 1 and 2); the handler adds skip_len to the saved EIP. */
volatile uint32_t trap_armed, skip_len, fault_site, fault_next;
/* User faults (CPL 3): the handler skips the instructions listed in
 * pg_user_sites while user_sites_armed is set. */
volatile uint32_t user_sites_armed;
/* Demand paging: #PF in [L_DEMAND, +64 pages) maps the page and retries. */
volatile uint32_t demand_armed, demand_total, demand_dup;
volatile uint32_t demand_faults[DEMAND_PAGES], demand_err[DEMAND_PAGES], demand_cr2[DEMAND_PAGES];
volatile uint32_t sys_count, sys_frame_ok;

static inline uint32_t frame_end(struct frame *f) { return (uint32_t)f + sizeof(struct frame); }

static void fail_stop(const char *why, struct frame *f, uint32_t cr2)
{
    printf("FAIL %s: vector %u err 0x%x eip 0x%08x cs 0x%x cr2 0x%08x\n", why, f->vector,
           f->err, f->eip, f->cs & 0xffff, cr2);
    kit_failed++;
    kit_finish();
    for (;;)
        __asm__ volatile("cli; hlt");
}

uint32_t trap_dispatch(struct frame *f)
{
    uint32_t v = f->vector;
    uint32_t cr2 = v == 14 ? read_cr2() : 0;

    if (v == 0x80) {
        sys_count++;
        if (frame_end(f) == tss.esp0 && (f->cs & 0xffff) == UCODE && (f->user_ss & 0xffff) == UDATA)
            sys_frame_ok++;
        if (f->eax == 3) {
            pg_user_exit_code = f->ebx;
            return 1;
        }
        f->eax = 0xffffffff;
        return 0;
    }

    struct trap_rec r;
    r.vector = v;
    r.err = f->err;
    r.eip = f->eip;
    r.cs = f->cs & 0xffff;
    r.cr2 = cr2;
    r.on_tss = (f->cs & 3) == 3 && frame_end(f) == tss.esp0;
    r.user_ss = (f->cs & 3) ? (f->user_ss & 0xffff) : 0;
    last.vector = r.vector;
    last.err = r.err;
    last.eip = r.eip;
    last.cs = r.cs;
    last.cr2 = r.cr2;
    last.on_tss = r.on_tss;
    last.user_ss = r.user_ss;
    trap_count++;
    if (nrecs < MAXREC) {
        volatile struct trap_rec *d = &recs[nrecs++];
        d->vector = r.vector;
        d->err = r.err;
        d->eip = r.eip;
        d->cs = r.cs;
        d->cr2 = r.cr2;
        d->on_tss = r.on_tss;
        d->user_ss = r.user_ss;
    }

    if (v == 14 && demand_armed && cr2 >= L_DEMAND && cr2 < L_DEMAND + DEMAND_PAGES * 4096) {
        uint32_t i = (cr2 - L_DEMAND) >> 12;
        demand_total++;
        demand_faults[i]++;
        demand_err[i] = f->err;
        demand_cr2[i] = cr2;
        if (pt_44[i] & PTE_P)
            demand_dup++;               /* a second fault on a page already mapped */
        /* map it and return to retry the instruction. Not-present entries
         * are never cached by the TLB: no INVLPG needed. */
        pt_44[i] = pa(demand[i]) | PTE_P | PTE_W;
        return 0;
    }
    if (user_sites_armed && (f->cs & 3) == 3) {
        for (uint32_t k = 0; k < pg_user_nsites; k++) {
            if (f->eip == L_U_CODE + pg_user_sites[k][0]) {
                f->eip += pg_user_sites[k][1];
                return 0;
            }
        }
        fail_stop("unexpected exception at CPL 3", f, cr2);
    }
    if (trap_armed && f->eip == fault_site) {
        trap_armed = 0;
        f->eip += skip_len;
        skip_len = 0;
        return 0;
    }
    fail_stop("unexpected exception", f, cr2);
    return 0;
}

/* Arms the handler for a faulting instruction between labels 1 and 2 (the
 * handler skips it); DISARM after label 2 in case it did not fault. */
#define ARM_FAULT "movl $(2f-1f), skip_len\n\tmovl $1f, fault_site\n\tmovl $2f, fault_next\n\tmovl $1, trap_armed\n"
#define DISARM "\n\tmovl $0, trap_armed\n\tmovl $0, skip_len"

/* A read of *la that must fault: returns the destination register, which
 * starts as `init` and must be left unchanged. */
static uint32_t fault_read(uint32_t la, uint32_t init)
{
    uint32_t v = init;
    __asm__ volatile(ARM_FAULT "1:\tmovl (%1), %0\n2:" DISARM : "+r"(v) : "r"(la) : "memory");
    return v;
}

static void fault_write(uint32_t la, uint32_t val)
{
    __asm__ volatile(ARM_FAULT "1:\tmovl %0, (%1)\n2:" DISARM : : "r"(val), "r"(la) : "memory");
}

/* One #PF at the instruction armed last, with this error code and CR2. */
#define CHECK_PF(name, errc, cr2v) do {                                                    \
        kit_check_eq(trap_count, c0 + 1, KIT_FILE, __LINE__, name ": one exception");       \
        kit_check_eq(last.vector, 14, KIT_FILE, __LINE__, name ": vector 14 (#PF)");        \
        kit_check_eq(last.err, errc, KIT_FILE, __LINE__, name ": error code == " #errc);    \
        kit_check_eq(last.cr2, cr2v, KIT_FILE, __LINE__, name ": cr2 == " #cr2v);           \
        kit_check_eq(last.eip, fault_site, KIT_FILE, __LINE__, name ": saved eip == the instruction"); \
        kit_check_eq(last.cs, KCODE, KIT_FILE, __LINE__, name ": saved cs == 0x08");        \
        c0 = trap_count;                                                                   \
    } while (0)

/* ------------------------------------------------------------- phase 0 */

static void setup_tables(void)
{
    gdt[0] = 0;
    gdt[1] = make_desc(0, 0xfffff, 0x9b, 0xc);  /* 0x08 ring-0 code */
    gdt[2] = make_desc(0, 0xfffff, 0x93, 0xc);  /* 0x10 ring-0 data */
    gdt[3] = make_desc(0, 0xfffff, 0xfb, 0xc);  /* 0x18 ring-3 code */
    gdt[4] = make_desc(0, 0xfffff, 0xf3, 0xc);  /* 0x20 ring-3 data */
    gdt[5] = make_desc((uint32_t)&tss, sizeof tss - 1, 0x89, 0x0); /* 0x28 32-bit TSS */

    memset(&tss, 0, sizeof tss);
    tss.esp0 = (uint32_t)ring0_stack + sizeof ring0_stack;
    tss.ss0 = KDATA;
    tss.iomap = sizeof tss;                     /* no I/O permission bitmap */

    for (unsigned v = 0; v < 20; v++)
        set_gate(v, pg_exc_stubs[v], GATE_INT_DPL0);
    set_gate(0x80, (uint32_t)pg_isr_0x80, GATE_TRAP_DPL3);

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

/* ------------------------------------------------------------- phase 1 */

static volatile uint32_t probe = 0x13572468;

static void phase1(uint32_t magic, uint32_t mbi)
{
    printf("phase 1: page tables, CR3, CR0.PG\n");
    const struct multiboot_info *mb = (const struct multiboot_info *)mbi;
    CHECK_EQ(magic, MULTIBOOT_BOOTLOADER_MAGIC);
    /* RAM up to 8 MiB at least (phase 11 maps physical 4-8 MiB) */
    CHECK((mb->flags & MBI_FLAG_MEM) && mb->mem_upper >= 7 * 1024);
    CHECK((uint32_t)__kit_image_end <= 0x400000);
    uint32_t a, b, c, d;
    cpuid(1, 0, &a, &b, &c, &d);
    CHECK(d & (1u << 3));                       /* CPUID.1:EDX.PSE */
    /* every page this guest maps is page-aligned */
    CHECK_EQ((pa(pd_a) | pa(pd_b) | pa(pt_id) | pa(pt_40) | pa(pt_44) | pa(pool) | pa(demand) |
              pa(pg_map) | pa(u_rw) | pa(code_pg) | pa(code_c2) | (uint32_t)user_page_start) & 0xfff, 0);

    for (uint32_t i = 0; i < 2048; i++)
        pt_id[i >> 10][i & 1023] = (i << 12) | PTE_P | PTE_W;   /* supervisor */
    pd_a[0] = pa(pt_id[0]) | PTE_P | PTE_W;
    pd_a[1] = pa(pt_id[1]) | PTE_P | PTE_W;

    CHECK_EQ(read_cr0() & CR0_PG, 0);
    write_cr3(pa(pd_a));
    write_cr0(read_cr0() | CR0_PG);
    __asm__ volatile("jmp 1f\n1:" : : : "memory");

    CHECK_EQ(read_cr0() & (CR0_PG | CR0_PE), CR0_PG | CR0_PE);
    CHECK_EQ(read_cr3(), pa(pd_a));
    CHECK_EQ(probe, 0x13572468);
    probe = 0x24681357;
    CHECK_EQ(probe, 0x24681357);
    /* the processor set A in the PDE and in the PTEs it used, D in the
     * PTE of a page it wrote (the stack, probe's page) and not in a page
     * it only read (this code) */
    uint32_t code_pte = pt_id[0][(uint32_t)phase1 >> 12];
    uint32_t probe_pte = pt_id[0][(uint32_t)&probe >> 12];
    uint32_t stack_pte = pt_id[0][(uint32_t)__builtin_frame_address(0) >> 12];
    printf("  pde0=0x%08x code pte=0x%08x probe pte=0x%08x stack pte=0x%08x\n", pd_a[0],
           code_pte, probe_pte, stack_pte);
    CHECK_EQ(pd_a[0] & PTE_A, PTE_A);
    CHECK_EQ(code_pte & PTE_A, PTE_A);
    CHECK_EQ(probe_pte & (PTE_A | PTE_D), PTE_A | PTE_D);
    CHECK_EQ(stack_pte & (PTE_A | PTE_D), PTE_A | PTE_D);
    /* the rodata/text pages were only read since paging came on */
    if (((uint32_t)phase1 >> 12) != ((uint32_t)&probe >> 12))
        CHECK_EQ(code_pte & PTE_D, 0);
    CHECK_EQ(trap_count, 0);
}

/* ------------------------------------------------------------- phase 2 */

static void phase2(void)
{
    printf("phase 2: reads and writes through a non-identity mapping\n");
    for (uint32_t i = 0; i < 1024; i++) {
        pg_map[i] = 0x10000000 + i;
        pg_map2[i] = 0x20000000 + i;
    }
    pd_a[PDX(L_TEST)] = pa(pt_40) | PTE_P | PTE_W;     /* not present before: no flush needed */
    pt_40[0] = pa(pg_map) | PTE_P | PTE_W;
    pt_40[1] = pa(pg_map2) | PTE_P | PTE_W;

    CHECK_EQ(rd(L_TEST), 0x10000000);
    CHECK_EQ(rd(L_TEST + 0x7f0), 0x10000000 + 0x7f0 / 4);
    CHECK_EQ(rd(L_TEST + 0xffc), 0x10000000 + 1023);
    CHECK_EQ(rd(L_TEST + 0x1000), 0x20000000);
    CHECK_EQ(rd(L_TEST + 0x1ffc), 0x20000000 + 1023);
    wr(L_TEST + 0x10, 0xcafef00d);
    CHECK_EQ(pg_map[4], 0xcafef00d);
    *(volatile uint8_t *)(L_TEST + 0x21) = 0x5a;
    CHECK_EQ(pg_map[8], (0x10000008 & 0xffff00ff) | 0x5a00);
    *(volatile uint16_t *)(L_TEST + 0x1032) = 0xbeef;
    CHECK_EQ(pg_map2[0xc], 0xbeef0000 | (0x2000000c & 0xffff));
    pg_map[5] = 0x0badc0de;
    barrier();
    CHECK_EQ(rd(L_TEST + 0x14), 0x0badc0de);
    /* an unaligned access split across the two pages */
    CHECK_EQ(rd(L_TEST + 0xffe), ((0x10000000 + 1023) >> 16) | ((0x20000000u & 0xffff) << 16));
    wr(L_TEST + 0xffd, 0x44332211);
    CHECK_EQ(pg_map[1023] >> 8, 0x332211);
    CHECK_EQ(pg_map2[0] & 0xff, 0x44);
    CHECK_EQ(rd(L_TEST + 0xffd), 0x44332211);
    /* rep movs from a mapped page to an identity page and back */
    static uint32_t tmp[16];
    __asm__ volatile("cld; rep movsl" : : "S"(L_TEST + 0x100), "D"(tmp), "c"(16) : "memory");
    CHECK_EQ(tmp[0], 0x10000040);
    CHECK_EQ(tmp[15], 0x1000004f);
    CHECK_EQ(trap_count, 0);
}

/* ------------------------------------------------------------- phase 3 */

static void phase3(void)
{
    printf("phase 3: accessed and dirty bits\n");
    const uint32_t la = L_TEST + 0x3000;
    pg_ad[2] = 0x600dad00;
    pt_40[3] = pa(pg_ad) | PTE_P | PTE_W;
    pd_a[PDX(L_TEST)] &= ~PTE_A;
    reload_cr3();
    CHECK_EQ(pt_40[3] & (PTE_A | PTE_D), 0);
    CHECK_EQ(pd_a[PDX(L_TEST)] & PTE_A, 0);

    CHECK_EQ(rd(la + 8), 0x600dad00);
    CHECK_EQ(pt_40[3] & (PTE_A | PTE_D), PTE_A);        /* a read: A, not D */
    CHECK_EQ(pd_a[PDX(L_TEST)] & PTE_A, PTE_A);         /* A in the PDE too */
    CHECK_EQ(rd(la + 0xff0), 0);
    CHECK_EQ(pt_40[3] & (PTE_A | PTE_D), PTE_A);        /* still no D */
    wr(la + 12, 1);
    CHECK_EQ(pt_40[3] & (PTE_A | PTE_D), PTE_A | PTE_D);
    CHECK_EQ(pg_ad[3], 1);

    /* cleared by the OS (with INVLPG): a first write sets both */
    pt_40[3] &= ~(PTE_A | PTE_D);
    invlpg(la);
    wr(la + 16, 2);
    CHECK_EQ(pt_40[3] & (PTE_A | PTE_D), PTE_A | PTE_D);

    /* cleared again: reads set A only, then the first write sets D */
    pt_40[3] &= ~(PTE_A | PTE_D);
    invlpg(la);
    CHECK_EQ(rd(la + 16), 2);
    CHECK_EQ(rd(la + 8), 0x600dad00);
    CHECK_EQ(pt_40[3] & (PTE_A | PTE_D), PTE_A);
    wr(la + 20, 3);
    CHECK_EQ(pt_40[3] & (PTE_A | PTE_D), PTE_A | PTE_D);

    /* D cleared, A kept: reads leave D clear, a read-modify-write sets it */
    pt_40[3] &= ~PTE_D;
    invlpg(la);
    CHECK_EQ(rd(la + 20), 3);
    CHECK_EQ(pt_40[3] & (PTE_A | PTE_D), PTE_A);
    __asm__ volatile("incl (%0)" : : "r"(la + 20) : "memory", "cc");
    CHECK_EQ(pt_40[3] & (PTE_A | PTE_D), PTE_A | PTE_D);
    CHECK_EQ(pg_ad[5], 4);

    /* a byte write sets D as well */
    pt_40[3] &= ~(PTE_A | PTE_D);
    invlpg(la);
    *(volatile uint8_t *)(la + 0x801) = 7;
    CHECK_EQ(pt_40[3] & (PTE_A | PTE_D), PTE_A | PTE_D);
    CHECK_EQ(pg_ad[0x200], 0x700);
    /* the other bits of the PTE are as the OS wrote them */
    CHECK_EQ(pt_40[3] & ~(PTE_A | PTE_D), pa(pg_ad) | PTE_P | PTE_W);
    CHECK_EQ(trap_count, 0);
}

/* ------------------------------------------------------------- phase 4/5 */

static inline uint32_t pat(uint32_t k, uint32_t i) { return 0xa0000000u | (k << 20) | (i * 0x9e5u & 0xfffffu); }

static void fill_pool(void)
{
    for (uint32_t k = 0; k < POOL_PAGES; k++)
        for (uint32_t i = 0; i < 1024; i++)
            pool[k][i] = pat(k, i);
    barrier();
}

/* Retargets the PTE at `pte` (linear page `la`) among the pool pages n
 * times; flush: 0 = INVLPG, 1 = CR3 reload. Every 16th round also writes
 * through the mapping. Returns the number of wrong values seen. */
static uint32_t retarget_loop(volatile uint32_t *pte, uint32_t la, uint32_t n, int flush)
{
    uint32_t bad = 0, k = 0;
    *pte = pa(pool[0]) | PTE_P | PTE_W;
    if (flush == 0)
        invlpg(la);
    else
        reload_cr3();
    for (uint32_t r = 0; r < n; r++) {
        /* warm the old translation, then move the page */
        (void)rd(la + ((r * 0x124) & 0xffc));
        k = (k + 1 + r % (POOL_PAGES - 1)) % POOL_PAGES;       /* never the same page twice in a row */
        *pte = pa(pool[k]) | PTE_P | PTE_W;
        if (flush == 0)
            invlpg(la);
        else
            reload_cr3();
        uint32_t w = (r * 37 + 5) & 1023;
        uint32_t v0 = rd(la), v1 = rd(la + w * 4);
        if (v0 != pat(k, 0) || v1 != pat(k, w)) {
            if (bad < 3)
                printf("  round %u: page %u: read 0x%08x 0x%08x, expected 0x%08x 0x%08x\n", r, k,
                       v0, v1, pat(k, 0), pat(k, w));
            bad++;
        }
        if (r % 16 == 0) {
            wr(la + w * 4, ~pat(k, w));
            if (pool[k][w] != ~pat(k, w))
                bad++;
            wr(la + w * 4, pat(k, w));
            if (pool[k][w] != pat(k, w))
                bad++;
        }
    }
    return bad;
}

static void phase4(void)
{
    printf("phase 4: 2000 PTE rewrites with INVLPG\n");
    fill_pool();
    uint32_t bad = retarget_loop(&pt_40[4], L_TEST + 0x4000, 2000, 0);
    CHECK_EQ(bad, 0);

    /* the page table itself mapped at a second linear address: PTEs
     * written through that alias, each followed by INVLPG */
    printf("phase 4b: 200 PTE rewrites through an alias of the page table\n");
    pt_40[0x20] = pa(pt_40) | PTE_P | PTE_W;
    const uint32_t alias = L_TEST + 0x20000;
    CHECK_EQ(rd(alias + 4 * 4), pt_40[4]);
    const uint32_t la = L_TEST + 0x6000;
    bad = 0;
    for (uint32_t r = 0; r < 200; r++) {
        uint32_t k = (r * 3 + 1) % POOL_PAGES;
        wr(alias + 6 * 4, pa(pool[k]) | PTE_P | PTE_W);
        invlpg(la);
        uint32_t w = (r * 11) & 1023;
        if (rd(la + w * 4) != pat(k, w))
            bad++;
        if ((pt_40[6] & ~(PTE_A | PTE_D)) != (pa(pool[k]) | PTE_P | PTE_W))
            bad++;
    }
    CHECK_EQ(bad, 0);
    CHECK_EQ(pt_40[6] & PTE_A, PTE_A);
    CHECK_EQ(trap_count, 0);
}

static void phase5(void)
{
    printf("phase 5: 500 PTE rewrites with CR3 reloads\n");
    uint32_t bad = retarget_loop(&pt_40[5], L_TEST + 0x5000, 500, 1);
    CHECK_EQ(bad, 0);
    CHECK_EQ(read_cr3(), pa(pd_a));
    CHECK_EQ(trap_count, 0);
}

/* ------------------------------------------------------------- phase 6 */

static uint32_t check_pde_pages(int which)
{
    uint32_t bad = 0;
    for (uint32_t j = 0; j < 4; j++) {
        uint32_t k = which == 0 ? j : 7 - j;
        uint32_t w = (j * 300 + 7) & 1023;
        if (rd(L_PDE + j * 4096) != pat(k, 0) || rd(L_PDE + j * 4096 + w * 4) != pat(k, w))
            bad++;
    }
    return bad;
}

static void phase6(void)
{
    printf("phase 6: a page-directory entry retargeted\n");
    for (uint32_t j = 0; j < 4; j++) {
        pt_48x[j] = pa(pool[j]) | PTE_P | PTE_W;
        pt_48y[j] = pa(pool[7 - j]) | PTE_P | PTE_W;
    }
    pd_a[PDX(L_PDE)] = pa(pt_48x) | PTE_P | PTE_W;
    CHECK_EQ(check_pde_pages(0), 0);
    pd_a[PDX(L_PDE)] = pa(pt_48y) | PTE_P | PTE_W;
    reload_cr3();
    CHECK_EQ(check_pde_pages(1), 0);
    uint32_t bad = 0;
    for (uint32_t t = 0; t < 40; t++) {
        pd_a[PDX(L_PDE)] = pa(t & 1 ? pt_48y : pt_48x) | PTE_P | PTE_W;
        reload_cr3();
        bad += check_pde_pages(t & 1);
    }
    CHECK_EQ(bad, 0);
    /* a write through the new mapping lands in the new table's page */
    pd_a[PDX(L_PDE)] = pa(pt_48y) | PTE_P | PTE_W;
    reload_cr3();
    wr(L_PDE + 0x1008, 0x12121212);
    CHECK_EQ(pool[6][2], 0x12121212);
    pool[6][2] = pat(6, 2);
    CHECK_EQ(pt_48y[1] & (PTE_A | PTE_D), PTE_A | PTE_D);
    CHECK_EQ(trap_count, 0);
}

/* ------------------------------------------------------------- phase 7 */

static void phase7(void)
{
    printf("phase 7: not-present faults, CR2 and error codes\n");
    uint32_t c0 = trap_count;
    const uint32_t np = L_TEST + 0x7000;
    pt_40[7] = 0;

    uint32_t v = fault_read(np + 0x124, 0x12345678);
    CHECK_PF("read, not-present PTE", 0x0, np + 0x124);
    CHECK_EQ(v, 0x12345678);
    fault_write(np + 0x238, 0x99);
    CHECK_PF("write, not-present PTE", 0x2, np + 0x238);

    /* not-present PDE */
    CHECK_EQ(pd_a[PDX(L_NOPDE)], 0);
    v = fault_read(L_NOPDE + 0x3456, 0x87654321);
    CHECK_PF("read, not-present PDE", 0x0, L_NOPDE + 0x3456);
    CHECK_EQ(v, 0x87654321);
    fault_write(L_NOPDE + 0x10, 1);
    CHECK_PF("write, not-present PDE", 0x2, L_NOPDE + 0x10);

    /* a page that was present (and used) is made not present with INVLPG */
    CHECK_EQ(rd(L_TEST + 0x1000), pg_map2[0]);
    pt_40[1] = 0;
    invlpg(L_TEST + 0x1000);
    v = fault_read(L_TEST + 0x1004, 0);
    CHECK_PF("read after the PTE was cleared", 0x0, L_TEST + 0x1004);
    fault_write(L_TEST + 0x1ffc, 0);
    CHECK_PF("write after the PTE was cleared", 0x2, L_TEST + 0x1ffc);
    pt_40[1] = pa(pg_map2) | PTE_P | PTE_W;
    CHECK_EQ(rd(L_TEST + 0x1004), 0x20000001);      /* back (was not present: no flush) */

    /* a PDE that was present is cleared, with a CR3 reload */
    CHECK_EQ(rd(L_PDE), pat(7, 0));
    uint32_t old = pd_a[PDX(L_PDE)];
    pd_a[PDX(L_PDE)] = 0;
    reload_cr3();
    v = fault_read(L_PDE + 0x2010, 0);
    CHECK_PF("read after the PDE was cleared", 0x0, L_PDE + 0x2010);
    pd_a[PDX(L_PDE)] = old;
    CHECK_EQ(rd(L_PDE + 0x2000), pat(5, 0));

    /* byte and word accesses */
    __asm__ volatile(ARM_FAULT "1:\tmovb $1, (%0)\n2:" DISARM : : "r"(np + 0xfff) : "memory");
    CHECK_PF("byte write", 0x2, np + 0xfff);
    __asm__ volatile(ARM_FAULT "1:\tmovzwl (%0), %%eax\n2:" DISARM : : "r"(np + 0x802) : "memory", "eax");
    CHECK_PF("word read", 0x0, np + 0x802);
    /* a read-modify-write of a not-present page: the error code's W/R bit
     * is not checked (QEMU reports the read, 0x0) */
    __asm__ volatile(ARM_FAULT "1:\taddl $1, (%0)\n2:" DISARM : : "r"(np + 0x40) : "memory", "cc");
    last.err &= ~PF_ERR_W;
    CHECK_PF("add to memory", 0x0, np + 0x40);
    CHECK_EQ(trap_count, c0);
}

/* ------------------------------------------------------------- phase 8 */

static void phase8(void)
{
    printf("phase 8: demand paging, %u pages\n", DEMAND_PAGES);
    pd_a[PDX(L_DEMAND)] = pa(pt_44) | PTE_P | PTE_W;
    uint32_t t0 = trap_count;
    demand_armed = 1;
    uint32_t bad = 0;
    for (uint32_t i = 0; i < DEMAND_PAGES; i++) {
        uint32_t la = L_DEMAND + i * 4096 + ((i * 0x44) & 0xffc);
        if (i & 1) {
            if (rd(la) != 0)                    /* first touch: a read */
                bad++;
        }
        wr(la, 0xd0000000 + i);                 /* even pages: first touch is this write */
    }
    for (uint32_t i = 0; i < DEMAND_PAGES; i++) {
        uint32_t la = L_DEMAND + i * 4096 + ((i * 0x44) & 0xffc);
        if (rd(la) != 0xd0000000 + i)
            bad++;
    }
    demand_armed = 0;
    printf("  %u faults for %u pages, %u on pages already present\n", demand_total,
           DEMAND_PAGES, demand_dup);
    CHECK_EQ(bad, 0);
    CHECK_EQ(demand_total, DEMAND_PAGES);
    CHECK_EQ(demand_dup, 0);
    CHECK_EQ(trap_count - t0, DEMAND_PAGES);
    uint32_t once = 0, errs = 0, cr2s = 0, landed = 0, ad = 0;
    for (uint32_t i = 0; i < DEMAND_PAGES; i++) {
        uint32_t off = (i * 0x44) & 0xffc;
        once += demand_faults[i] == 1;
        errs += demand_err[i] == ((i & 1) ? 0x0u : 0x2u);
        cr2s += demand_cr2[i] == L_DEMAND + i * 4096 + off;
        landed += demand[i][off / 4] == 0xd0000000 + i;
        ad += (pt_44[i] & (PTE_A | PTE_D)) == (PTE_A | PTE_D);
    }
    CHECK_EQ(once, DEMAND_PAGES);       /* exactly one fault per page */
    CHECK_EQ(errs, DEMAND_PAGES);       /* 0x0 for a first read, 0x2 for a first write */
    CHECK_EQ(cr2s, DEMAND_PAGES);
    CHECK_EQ(landed, DEMAND_PAGES);
    CHECK_EQ(ad, DEMAND_PAGES);
}

/* ------------------------------------------------------------- phase 9 */

static void phase9(void)
{
    printf("phase 9: CR0.WP\n");
    uint32_t c0 = trap_count;
    const uint32_t la = L_TEST + 0x8000;    /* supervisor, read-only */
    const uint32_t lu = L_TEST + 0x9000;    /* user, read-only */
    pt_40[8] = pa(pg_wp) | PTE_P;
    pt_40[9] = pa(pg_wp_u) | PTE_P | PTE_U;
    pg_wp[0] = 0x11111111;
    pg_wp_u[0] = 0x22222222;
    barrier();

    write_cr0(read_cr0() & ~CR0_WP);
    CHECK_EQ(read_cr0() & CR0_WP, 0);
    CHECK_EQ(rd(la), 0x11111111);
    wr(la + 4, 0xaaaa0001);                 /* WP=0: the supervisor may write */
    CHECK_EQ(pg_wp[1], 0xaaaa0001);
    CHECK_EQ(pt_40[8] & (PTE_A | PTE_D), PTE_A | PTE_D);
    wr(lu + 4, 0xaaaa0002);
    CHECK_EQ(pg_wp_u[1], 0xaaaa0002);
    CHECK_EQ(trap_count, c0);

    pt_40[8] &= ~(PTE_A | PTE_D);
    invlpg(la);
    write_cr0(read_cr0() | CR0_WP);
    CHECK_EQ(read_cr0() & CR0_WP, CR0_WP);
    CHECK_EQ(rd(la), 0x11111111);           /* reads still work */
    fault_write(la + 8, 0xbbbb0001);
    CHECK_PF("WP=1: supervisor write to a read-only page", 0x3, la + 8);
    CHECK_EQ(pg_wp[2], 0);
    CHECK_EQ(pt_40[8] & PTE_D, 0);          /* a faulting write does not set D */
    fault_write(lu + 8, 0xbbbb0002);
    CHECK_PF("WP=1: supervisor write to a user read-only page", 0x3, lu + 8);
    CHECK_EQ(pg_wp_u[2], 0);
    __asm__ volatile(ARM_FAULT "1:\tincl (%0)\n2:" DISARM : : "r"(la + 4) : "memory", "cc");
    CHECK_PF("WP=1: inc of a read-only page", 0x3, la + 4);
    CHECK_EQ(pg_wp[1], 0xaaaa0001);

    write_cr0(read_cr0() & ~CR0_WP);
    wr(la + 12, 0xcccc0001);                /* WP=0 again: allowed */
    CHECK_EQ(pg_wp[3], 0xcccc0001);
    CHECK_EQ(pt_40[8] & PTE_D, PTE_D);
    wr(lu + 12, 0xcccc0002);
    CHECK_EQ(pg_wp_u[3], 0xcccc0002);
    CHECK_EQ(trap_count, c0);
    write_cr0(read_cr0() | CR0_WP);         /* WP=1 from here on */
}

/* ------------------------------------------------------------ phase 10 */

static void phase10(void)
{
    printf("phase 10: CPL 3: user/supervisor and read-only pages\n");
    pd_a[PDX(L_USER)] = pa(pt_60) | PTE_P | PTE_W | PTE_U;
    pt_60[0] = pa(u_rw) | PTE_P | PTE_W | PTE_U;
    pt_60[1] = pa(u_sup) | PTE_P | PTE_W;                   /* supervisor only */
    pt_60[2] = pa(u_ro) | PTE_P | PTE_U;                    /* user read-only */
    pt_60[3] = 0;                                           /* not present */
    pt_60[0x10] = pa(user_page_start) | PTE_P | PTE_U;      /* the user task's code */
    pt_60[0x11] = pa(u_stack) | PTE_P | PTE_W | PTE_U;
    pd_a[PDX(L_PDE_SUP)] = pa(pt_64s) | PTE_P | PTE_W;      /* PDE supervisor */
    pt_64s[0] = pa(u_pde_sup) | PTE_P | PTE_W | PTE_U;
    pd_a[PDX(L_PDE_RO)] = pa(pt_64r) | PTE_P | PTE_U;       /* PDE read-only */
    pt_64r[0] = pa(u_pde_ro) | PTE_P | PTE_W | PTE_U;
    CHECK_EQ((uint32_t)user_page_end - (uint32_t)user_page_start, 4096);

    u_rw[0] = 0x600d0001;
    u_ro[1] = 0x600d0002;
    u_pde_ro[9] = 0x600d0003;
    u_sup[0] = 0x5ec00000;
    barrier();
    /* the kernel uses the supervisor page (and the others) first */
    CHECK_EQ(rd(L_USER + 0x1000), 0x5ec00000);
    wr(L_USER + 0x1040, 0x5ec00040);
    CHECK_EQ(rd(L_USER + 0x4), 0);
    CHECK_EQ(rd(L_PDE_SUP + 0x10), 0);

    nrecs = 0;
    uint32_t c0 = trap_count, s0 = sys_count;
    user_sites_armed = 1;
    uint32_t code = enter_user(L_U_CODE + ((uint32_t)user_task - (uint32_t)user_page_start),
                               L_U_STACK + 4096);
    user_sites_armed = 0;
    printf("  user task exited with 0x%x after %u page faults\n", code, trap_count - c0);
    CHECK_EQ(code, 0x77);
    CHECK_EQ(sys_count - s0, 1);
    CHECK_EQ(sys_frame_ok, sys_count);

    static const struct { uint32_t err, cr2; const char *what; } want[9] = {
        {0x5, L_USER + 0x1000, "user read of a supervisor page"},
        {0x7, L_USER + 0x2010, "user write to a user read-only page"},
        {0x4, L_USER + 0x3234, "user read of a not-present page"},
        {0x6, L_USER + 0x3238, "user write to a not-present page"},
        {0x5, L_PDE_SUP + 0x10, "user read, PTE user, PDE supervisor"},
        {0x7, L_PDE_RO + 0x20, "user write, PTE writable, PDE read-only"},
        {0x5, L_USER + 0x1040, "user read of a supervisor page the kernel wrote"},
        {0x7, L_USER + 0x1080, "emulated user store (sgdt) to a supervisor page"},
        {0x7, L_USER + 0x2020, "emulated user store (sidt) to a user read-only page"},
    };
    CHECK_EQ(trap_count - c0, 9);
    CHECK_EQ(nrecs, 9);
    for (uint32_t k = 0; k < 9 && k < nrecs; k++) {
        volatile struct trap_rec *r = &recs[k];
        printf("  #PF %u: err 0x%x cr2 0x%08x eip 0x%08x cs 0x%x (%s)\n", k, r->err, r->cr2,
               r->eip, r->cs, want[k].what);
        kit_check_eq(r->vector, 14, KIT_FILE, __LINE__, want[k].what);
        kit_check_eq(r->err, want[k].err, KIT_FILE, __LINE__, want[k].what);
        kit_check_eq(r->cr2, want[k].cr2, KIT_FILE, __LINE__, want[k].what);
        kit_check_eq(r->eip, L_U_CODE + pg_user_sites[k][0], KIT_FILE, __LINE__, want[k].what);
        kit_check_eq(r->cs, UCODE, KIT_FILE, __LINE__, want[k].what);
        kit_check_eq(r->user_ss, UDATA, KIT_FILE, __LINE__, want[k].what);
        kit_check_eq(r->on_tss, 1, KIT_FILE, __LINE__, want[k].what);
    }
    /* what the user task read and wrote */
    CHECK_EQ(u_rw[0x200], 0x600d0001);      /* user page: read works */
    CHECK_EQ(u_rw[0x201], 0x600d0002);      /* user read-only page: read works */
    CHECK_EQ(u_rw[0x202], 0xdeadbeef);      /* faulting read left eax alone */
    CHECK_EQ(u_rw[0x203], 0xdeadbeef);
    CHECK_EQ(u_rw[0x204], 0xdeadbeef);
    CHECK_EQ(u_rw[0x205], 0x600d0003);      /* PDE read-only: read works */
    CHECK_EQ(u_rw[0x206], 0xdeadbeef);      /* user write to the user page */
    CHECK_EQ(u_rw[0x208] & 0xffff, idt_desc.limit); /* sidt from CPL 3 */
    CHECK_EQ(u_sup[0x20], 0);               /* the emulated stores did not land */
    CHECK_EQ(u_ro[8], 0);
    CHECK_EQ(u_ro[4], 0);                   /* no write got through */
    CHECK_EQ(u_pde_ro[8], 0);
    CHECK_EQ(pt_60[3], 0);
    CHECK_EQ(pt_60[0] & (PTE_A | PTE_D), PTE_A | PTE_D);
    CHECK_EQ(pt_60[2] & (PTE_A | PTE_D), PTE_A);
    uint32_t cs;
    __asm__ volatile("movl %%cs, %0" : "=r"(cs));
    CHECK_EQ(cs & 0xffff, KCODE);
}

/* ------------------------------------------------------------ phase 11 */

static NOINLINE uint32_t big_fn(uint32_t x) { return x * 3 + 0x4b1d; }

static void phase11(void)
{
    printf("phase 11: 4 MiB pages (CR4.PSE)\n");
    uint32_t c0 = trap_count;
    static const uint32_t offs[] = {0, 4, 0x1000, 0x12344, 0x1ffffc, 0x200000, 0x3ff000, 0x3ffffc};
    write_cr4(read_cr4() | CR4_PSE);
    CHECK_EQ(read_cr4() & CR4_PSE, CR4_PSE);
    for (uint32_t i = 0; i < ARRAY_SIZE(offs); i++)
        wr(0x400000 + offs[i], 0x4a000000 ^ offs[i]);       /* through the identity mapping */
    pd_a[PDX(L_BIG)] = 0x400000 | PDE_PS | PTE_P | PTE_W;
    uint32_t bad = 0;
    for (uint32_t i = 0; i < ARRAY_SIZE(offs); i++)
        if (rd(L_BIG + offs[i]) != (0x4a000000 ^ offs[i]))
            bad++;
    CHECK_EQ(bad, 0);
    CHECK_EQ(pd_a[PDX(L_BIG)] & (PTE_A | PTE_D), PTE_A);    /* read: A, no D (in the PDE) */
    wr(L_BIG + 0x2345c8, 0x77665544);
    CHECK_EQ(rd(0x400000 + 0x2345c8), 0x77665544);
    CHECK_EQ(pd_a[PDX(L_BIG)] & (PTE_A | PTE_D), PTE_A | PTE_D);
    CHECK_EQ(pd_a[PDX(L_BIG)] & ~(PTE_A | PTE_D), 0x400000 | PDE_PS | PTE_P | PTE_W);

    /* a second large page over the kernel: its data and code */
    pd_a[PDX(L_BIG2)] = 0x0 | PDE_PS | PTE_P | PTE_W;
    CHECK_EQ(rd(L_BIG2 + (uint32_t)&probe), probe);
    uint32_t (*fn)(uint32_t) = (uint32_t (*)(uint32_t))(L_BIG2 + (uint32_t)big_fn);
    CHECK_EQ(fn(5), big_fn(5));

    /* the first one retargeted (INVLPG of any address in it drops it) */
    pd_a[PDX(L_BIG)] = 0x0 | PDE_PS | PTE_P | PTE_W;
    invlpg(L_BIG + 0x1000);
    CHECK_EQ(rd(L_BIG + (uint32_t)&probe), probe);
    CHECK_EQ(rd(L_BIG + 0x2345c8), rd(0x2345c8));
    pd_a[PDX(L_BIG)] = 0x400000 | PDE_PS | PTE_P | PTE_W;
    invlpg(L_BIG + 0x3ff000);
    CHECK_EQ(rd(L_BIG + 0x2345c8), 0x77665544);
    CHECK_EQ(rd(L_BIG + 0x3ffffc), 0x4a000000 ^ 0x3ffffc);
    CHECK_EQ(trap_count, c0);
}

/* ------------------------------------------------------------ phase 12 */

static void phase12(void)
{
    printf("phase 12: two address spaces, 400 CR3 switches\n");
    uint32_t c0 = trap_count;
    pd_a[PDX(L_AS)] = pa(pt_50a) | PTE_P | PTE_W;
    pt_50a[0] = pa(pg_50a) | PTE_P | PTE_W;
    for (uint32_t i = 0; i < 1024; i++)
        pd_b[i] = pd_a[i];
    pd_b[PDX(L_AS)] = pa(pt_50b) | PTE_P | PTE_W;
    pt_50b[0] = pa(pg_50b) | PTE_P | PTE_W;
    pg_50a[0] = 0xaaaa0000;
    pg_50b[0] = 0xbbbb0000;
    barrier();

    CHECK_EQ(rd(L_AS), 0xaaaa0000);
    uint32_t bad = 0, wrong_cr3 = 0;
    for (uint32_t n = 0; n < 400; n++) {
        int b = n & 1;
        write_cr3(pa(b ? pd_b : pd_a));
        if (read_cr3() != pa(b ? pd_b : pd_a))
            wrong_cr3++;
        uint32_t expect = (b ? 0xbbbb0000 : 0xaaaa0000) + (n >> 1);
        uint32_t v = rd(L_AS);
        if (v != expect) {
            if (bad < 3)
                printf("  switch %u: read 0x%08x, expected 0x%08x\n", n, v, expect);
            bad++;
        }
        wr(L_AS, v + 1);                          /* this space's counter */
        wr(L_AS + 4 + 4 * (n & 7), n);
        if ((b ? pg_50b : pg_50a)[1 + (n & 7)] != n)
            bad++;
    }
    write_cr3(pa(pd_a));
    CHECK_EQ(bad, 0);
    CHECK_EQ(wrong_cr3, 0);
    CHECK_EQ(pg_50a[0], 0xaaaa0000 + 200);
    CHECK_EQ(pg_50b[0], 0xbbbb0000 + 200);
    CHECK_EQ(rd(L_AS), 0xaaaa0000 + 200);
    CHECK_EQ(trap_count, c0);
}

/* ------------------------------------------------------------ phase 13 */

static void put_mov_ret(volatile uint32_t *page, uint32_t off, uint32_t imm)
{
    volatile uint8_t *p = (volatile uint8_t *)page + off;
    p[0] = 0xb8;                            /* mov $imm, %eax */
    p[1] = imm & 0xff;
    p[2] = (imm >> 8) & 0xff;
    p[3] = (imm >> 16) & 0xff;
    p[4] = imm >> 24;
    p[5] = 0xc3;                            /* ret */
}

static void phase13(void)
{
    printf("phase 13: code changed through an alias mapping\n");
    const uint32_t lx = L_TEST + 0x10000, lw = L_TEST + 0x11000, lr = L_TEST + 0x12000;
    pt_40[0x10] = pa(code_pg) | PTE_P | PTE_W;      /* executed through here */
    pt_40[0x11] = pa(code_pg) | PTE_P | PTE_W;      /* patched through here */
    put_mov_ret(code_pg, 0, 1);
    typedef uint32_t (*fn_t)(void);
    fn_t fx = (fn_t)lx, fid = (fn_t)pa(code_pg);

    CHECK_EQ(fx(), 1);
    wr(lw + 1, 2);                                  /* the immediate, through the other mapping */
    CHECK_EQ(fx(), 2);
    uint32_t bad = 0;
    for (uint32_t n = 3; n < 203; n++) {
        switch (n % 3) {
        case 0: wr(lw + 1, n); break;                               /* other linear mapping */
        case 1: *(volatile uint8_t *)(lw + 1) = n & 0xff;           /* single byte */
                *(volatile uint8_t *)(lw + 2) = (n >> 8) & 0xff; break;
        default: code_pg[0] = 0xb8 | (n << 8); break;               /* identity mapping */
        }
        if (fx() != n)
            bad++;
        if (fx() != n)                              /* and again (a second run of the same code) */
            bad++;
        if (fid() != n)
            bad++;
    }
    CHECK_EQ(bad, 0);

    /* the code replaced by another instruction sequence through the alias */
    static const uint8_t xor_inc[] = {0x31, 0xc0, 0x40, 0x40, 0x40, 0xc3}; /* xor eax,eax; inc x3; ret */
    for (uint32_t i = 0; i < sizeof xor_inc; i++)
        *(volatile uint8_t *)(lw + i) = xor_inc[i];
    CHECK_EQ(fx(), 3);

    /* a code page moved under a fixed linear address (PTE + INVLPG) */
    put_mov_ret(code_c1, 0x100, 0x111);
    put_mov_ret(code_c2, 0x100, 0x222);
    fn_t fr = (fn_t)(lr + 0x100);
    bad = 0;
    for (uint32_t n = 0; n < 100; n++) {
        int b = n & 1;
        pt_40[0x12] = pa(b ? code_c2 : code_c1) | PTE_P | PTE_W;
        invlpg(lr);
        if (fr() != (b ? 0x222u : 0x111u))
            bad++;
    }
    CHECK_EQ(bad, 0);
}

/* ------------------------------------------------------------ phase 14 */

/* A VMM may keep the shadow state of address spaces not in use; these are the
 * ways that could go stale. */
static void phase14(void)
{
    printf("phase 14: address spaces not in use stay coherent\n");
    uint32_t c0 = trap_count;

    /* (a) a page table of the other space changes while this one runs */
    uint32_t bad = 0;
    for (uint32_t n = 0; n < 64; n++) {
        uint32_t k = n % POOL_PAGES;
        write_cr3(pa(pd_a));
        (void)rd(L_AS);
        write_cr3(pa(pd_b));
        pt_50a[0] = pa(pool[k]) | PTE_P | PTE_W;
        pool[k][0] = 0x5000 + n;
        write_cr3(pa(pd_a));
        if (rd(L_AS) != 0x5000 + n)
            bad++;
    }
    CHECK_EQ(bad, 0);

    /* ... and its page directory entry */
    (void)rd(L_AS);
    write_cr3(pa(pd_b));
    pd_a[PDX(L_AS)] = pa(pt_50b) | PTE_P | PTE_W;
    pg_50b[0] = 0xbbbb1234;
    write_cr3(pa(pd_a));
    CHECK_EQ(rd(L_AS), 0xbbbb1234);
    pd_a[PDX(L_AS)] = pa(pt_50a) | PTE_P | PTE_W;

    /* (b) the same linear code is other code in the other space: a page shared
     * by both (code_x) jumps into, and has an instruction running into, a page
     * each space maps to its own frame */
    const uint32_t lc = L_AS + 0x2000;
    pt_50a[2] = pa(code_x) | PTE_P | PTE_W;
    pt_50b[2] = pa(code_x) | PTE_P | PTE_W;
    pt_50a[3] = pa(code_c1) | PTE_P | PTE_W;
    pt_50b[3] = pa(code_c2) | PTE_P | PTE_W;
    volatile uint8_t *x = (volatile uint8_t *)code_x;
    x[0xff0] = 0xe9;                                /* jmp lc + 0x1100 */
    x[0xff1] = 0x0b; x[0xff2] = 0x01; x[0xff3] = 0; x[0xff4] = 0;
    x[0xffc] = 0xb8;                                /* mov $0x??332211, %eax; ret */
    x[0xffd] = 0x11; x[0xffe] = 0x22; x[0xfff] = 0x33;
    put_mov_ret(code_c1, 0x100, 0x111);
    put_mov_ret(code_c2, 0x100, 0x222);
    ((volatile uint8_t *)code_c1)[0] = 0xa1; ((volatile uint8_t *)code_c1)[1] = 0xc3;
    ((volatile uint8_t *)code_c2)[0] = 0xb2; ((volatile uint8_t *)code_c2)[1] = 0xc3;
    typedef uint32_t (*fn_t)(void);
    fn_t fjmp = (fn_t)(lc + 0xff0), fmov = (fn_t)(lc + 0xffc);
    bad = 0;
    for (uint32_t n = 0; n < 100; n++) {
        int b = n & 1;
        write_cr3(pa(b ? pd_b : pd_a));
        for (int twice = 0; twice < 2; twice++) {
            if (fjmp() != (b ? 0x222u : 0x111u))
                bad++;
            if (fmov() != (b ? 0xb2332211u : 0xa1332211u))
                bad++;
        }
    }
    write_cr3(pa(pd_a));
    CHECK_EQ(bad, 0);
    CHECK_EQ(trap_count, c0);
}

/* ------------------------------------------------------------ phase 15 */

static page_t table_img, copy_src, copy_dst;

/* The one store used to copy page tables and plain data alike. */
static NOINLINE void copy_words(volatile uint32_t *dst, const volatile uint32_t *src, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        dst[i] = src[i];
}

static void phase15(void)
{
    printf("phase 15: a page table rewritten in bulk, then the same store on data\n");
    uint32_t c0 = trap_count, bad = 0;
    for (uint32_t k = 0; k < POOL_PAGES; k++)
        pool[k][0] = 0x7000 + k;
    for (uint32_t n = 0; n < 12; n++) {
        /* from the second round on, space b's cached walks used pt_50b */
        for (uint32_t i = 0; i < 1024; i++)
            table_img[i] = i >= 1020 ? pa(pool[(i + n) % POOL_PAGES]) | PTE_P | PTE_W : 0;
        copy_words(pt_50b, table_img, 1024);        /* a fork-like copy into b's table */
        write_cr3(pa(pd_b));
        for (uint32_t k = 1020; k < 1024; k++)      /* written after the bulk began */
            if (rd(L_AS + (k << 12)) != 0x7000 + (k + n) % POOL_PAGES)
                bad++;
        write_cr3(pa(pd_a));
    }
    CHECK_EQ(bad, 0);
    bad = 0;
    for (uint32_t n = 0; n < 8; n++) {
        for (uint32_t i = 0; i < 1024; i++)
            copy_src[i] = i * 7 + n;
        copy_words(copy_dst, copy_src, 1024);
        for (uint32_t i = 0; i < 1024; i++)
            if (copy_dst[i] != i * 7 + n)
                bad++;
    }
    CHECK_EQ(bad, 0);
    CHECK_EQ(trap_count, c0);
}

int kmain(uint32_t magic, uint32_t mbi)
{
    setup_tables();
    phase1(magic, mbi);
    phase2();
    phase3();
    phase4();
    phase5();
    phase6();
    phase7();
    phase8();
    phase9();
    phase10();
    phase11();
    phase12();
    phase13();
    phase14();
    phase15();
    printf("paging: done, %u page faults\n", trap_count);
    return kit_finish();
}
