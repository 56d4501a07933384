/* exc_idt: a double fault from an exception raised while delivering another.
 *
 * The guest loads an IDT of 0x21 entries (vectors 0-0x20, limit 0x107) in
 * which
 *   - vector 6 (#UD) is a present interrupt gate,
 *   - vector 8 (#DF) is a present interrupt gate,
 *   - vector 13 (#GP) is an interrupt gate marked not present,
 *   - every other vector reports "unexpected" and fails.
 * It executes ud2. The #UD handler runs (once) and executes int $0x41, a
 * vector beyond the IDT limit, which raises #GP(0x41*8+2 = 0x20a). Delivering
 * that #GP finds gate 13 not present, which raises #NP: a contributory
 * exception (#NP) while delivering a contributory one (#GP) is a double
 * fault. The #DF handler (vector 8, error code 0; the saved CS:EIP is
 * undefined for #DF and not checked) prints "DOUBLE FAULT" and finishes.
 *
 * Expected: exit 0, output has "DOUBLE FAULT" and `RESULT: <n> passed, 0
 * failed`. If the #NP, #GP or any other handler runs instead, or int $0x41
 * returns, the run fails (exit 1). A triple fault ends the run with no exit
 * write (bt86: a message naming the faults; QEMU -no-reboot: status 0). */
#include "kit.h"

#define IDT_ENTRIES 0x21

struct __attribute__((packed)) dtr {
    uint16_t limit;
    uint32_t base;
};

static uint64_t idt[IDT_ENTRIES] __attribute__((aligned(8)));
extern const uint32_t exc_idt_other_stubs[];
extern char exc_idt_ud_stub[], exc_idt_df_stub[], exc_idt_int41_site[];
extern char exc_idt_ud_site[];

static volatile uint32_t ud_count, ud_eip, ud_cs;

static uint64_t gate(uint32_t handler, uint8_t access)
{
    uint32_t lo = (handler & 0xffff) | ((uint32_t)KIT_CODE_SEL << 16);
    uint32_t hi = (handler & 0xffff0000) | ((uint32_t)access << 8);
    return ((uint64_t)hi << 32) | lo;
}

static void stop_failed(void) __attribute__((noreturn));
static void stop_failed(void)
{
    kit_failed++;
    kit_finish();
    kit_exit(1);
}

void exc_idt_unexpected(uint32_t vector)
{
    printf("FAIL exc_idt: unexpected exception, vector %u (expected #DF, vector 8)\n", vector);
    stop_failed();
}

/* regs -> pushal area (8 words), then the CPU's eip, cs, eflags */
void exc_idt_ud_seen(uint32_t *regs)
{
    ud_count++;
    ud_eip = regs[8];
    ud_cs = regs[9] & 0xffff;
    printf("#UD at eip=0x%08x cs=0x%x (count %u); now int $0x41 beyond the IDT limit at 0x%08x\n",
           ud_eip, ud_cs, ud_count, (uint32_t)exc_idt_int41_site);
    if (ud_count > 1) {
        printf("FAIL exc_idt: #UD handler entered again\n");
        stop_failed();
    }
}

void exc_idt_int41_returned(void)
{
    printf("FAIL exc_idt: int $0x41 returned\n");
    stop_failed();
}

/* f -> error code, eip, cs, eflags */
void exc_idt_double_fault(uint32_t *f)
{
    printf("DOUBLE FAULT: error code 0x%x (saved eip 0x%08x cs 0x%x: undefined for #DF)\n",
           f[0], f[1], f[2] & 0xffff);
    CHECK_EQ(f[0], 0);
    CHECK_EQ(ud_count, 1);
    CHECK_EQ(ud_eip, (uint32_t)exc_idt_ud_site);
    CHECK_EQ(ud_cs, KIT_CODE_SEL);
    CHECK_EQ(read_eflags() & EFLAGS_IF, 0);
    kit_exit(kit_finish());
}

int kmain(uint32_t magic, uint32_t mbi)
{
    (void)magic;
    (void)mbi;
    for (const uint32_t *p = exc_idt_other_stubs; p[0] != 0xffffffffu; p += 2)
        idt[p[0]] = gate(p[1], 0x8e);
    idt[6] = gate((uint32_t)exc_idt_ud_stub, 0x8e);
    idt[8] = gate((uint32_t)exc_idt_df_stub, 0x8e);
    /* #GP: a 32-bit interrupt gate like the others, but P=0 (0x0e) */
    idt[13] = gate((uint32_t)exc_idt_ud_stub, 0x0e);

    struct dtr d = {sizeof idt - 1, (uint32_t)idt};
    __asm__ volatile("lidt %0" : : "m"(d) : "memory");
    printf("exc_idt: IDT limit 0x%x (vectors 0-0x20), #GP gate not present\n", d.limit);
    printf("exc_idt: ud2 -> #UD handler -> int $0x41 -> #GP -> #NP -> expect DOUBLE FAULT\n");
    __asm__ volatile(".globl exc_idt_ud_site\n"
                     "exc_idt_ud_site: ud2" : : : "memory");
    printf("FAIL exc_idt: execution continued after ud2\n");
    stop_failed();
}
