/* bt86 demo guest: the sensitive instructions of x86, as a ring-0 guest sees
 * them under bt86. Each line shows the instruction, the value the guest got,
 * and why simply running the instruction deprivileged (at CPL 3 on the host,
 * trap-and-emulate style) would give something else. A trailing "ok" means
 * the value is what real hardware gives at ring 0; "MISMATCH" means the VMM
 * got it wrong. Exits with status 0 when every value is right, 1 otherwise. */
#include "kit.h"

struct __attribute__((packed)) dtr {
    uint16_t limit;
    uint32_t base;
};

extern uint64_t kit_gdt[];

static int mismatches;

static const char *verdict(int ok)
{
    if (!ok)
        mismatches++;
    return ok ? "ok" : "MISMATCH";
}

int kmain(uint32_t magic, uint32_t mbi)
{
    (void)mbi;
    printf("bt86 demo: sensitive x86 instructions as a ring-0 guest sees them\n");
    printf("multiboot magic 0x%08x  %s\n\n", magic, verdict(magic == MULTIBOOT_BOOTLOADER_MAGIC));
    outb(0x21, 0xff);   /* mask the PICs: IF is set below only for a moment */
    outb(0xa1, 0xff);

    uint32_t f_cli, f_sti;
    __asm__ volatile("cli; pushfl; popl %0" : "=r"(f_cli) : : "memory");
    printf("pushf after cli : IF=%u  (deprivileged, cli would #GP and pushf would show the host's IF=1)  %s\n",
           (f_cli >> 9) & 1, verdict(!(f_cli & EFLAGS_IF)));
    __asm__ volatile("sti; pushfl; popl %0; cli" : "=r"(f_sti) : : "memory");
    printf("pushf after sti : IF=%u  (deprivileged, sti would #GP; the guest's IF is virtual)  %s\n",
           (f_sti >> 9) & 1, verdict(f_sti & EFLAGS_IF));

    uint32_t a, b, base = read_eflags();
    __asm__ volatile("pushl %2; popfl; pushfl; popl %0; pushl %3; popfl; pushfl; popl %1"
                     : "=&r"(a), "=&r"(b) : "r"(base | EFLAGS_IF), "r"(base & ~EFLAGS_IF) : "cc", "memory");
    printf("popf IF=1, IF=0 : IF=%u then IF=%u  (deprivileged, popf would silently keep IF: no trap to emulate)  %s\n",
           (a >> 9) & 1, (b >> 9) & 1, verdict((a & EFLAGS_IF) && !(b & EFLAGS_IF)));

    uint32_t cs;
    __asm__ volatile("pushl %%cs; popl %0" : "=r"(cs));
    cs &= 0xffff;
    printf("push %%cs        : 0x%04x  (deprivileged it would show RPL 3, e.g. 0x0023: the guest sees it is not at ring 0)  %s\n",
           cs, verdict(cs == KIT_CODE_SEL));

    uint32_t ss;
    __asm__ volatile("movl %%ss, %0" : "=r"(ss));
    printf("mov %%ss, %%eax   : 0x%04x  (deprivileged, the host's stack selector with RPL 3, e.g. 0x002b)  %s\n",
           ss, verdict(ss == KIT_DATA_SEL));

    struct dtr gdtr, idtr;
    __asm__ volatile("sgdt %0" : "=m"(gdtr));
    __asm__ volatile("sidt %0" : "=m"(idtr));
    printf("sgdt            : base=0x%08x limit=0x%x  (the guest's own GDT; deprivileged, sgdt does not trap and shows the host's)  %s\n",
           gdtr.base, gdtr.limit, verdict(gdtr.base == (uint32_t)kit_gdt && gdtr.limit == 0x17));
    printf("sidt            : base=0x%08x limit=0x%x  (the guest's IDTR as the loader left it; deprivileged, the host's IDT)\n",
           idtr.base, idtr.limit);

    uint32_t msw = 0, cr0 = read_cr0();
    __asm__ volatile("smsw %0" : "=r"(msw));
    msw &= 0xffff;
    printf("smsw            : 0x%04x  (PE=1, paging off; deprivileged, smsw does not trap and shows the host's CR0 with PG)  %s\n",
           msw, verdict(msw == (cr0 & 0xffff) && (msw & CR0_PE)));
    printf("mov %%cr0, %%eax  : 0x%08x  (deprivileged, #GP: the VMM must supply the guest's CR0)  %s\n",
           cr0, verdict((cr0 & CR0_PE) && !(cr0 & CR0_PG)));

    uint32_t ar = 0;
    uint8_t zf;
    __asm__ volatile("lar %2, %0; setz %1" : "+r"(ar), "=q"(zf) : "r"(KIT_CODE_SEL) : "cc");
    printf("lar 0x08        : 0x%08x ZF=%u  (DPL 0 code; deprivileged, lar at CPL 3 fails with ZF=0 or reads the host's GDT)  %s\n",
           ar, zf, verdict(zf && ar == 0x00c09b00));

    uint32_t eax, ebx, ecx, edx;
    cpuid(0, 0, &eax, &ebx, &ecx, &edx);
    char vendor[13];
    memcpy(vendor, &ebx, 4);
    memcpy(vendor + 4, &edx, 4);
    memcpy(vendor + 8, &ecx, 4);
    vendor[12] = 0;
    printf("cpuid 0         : \"%s\", max leaf %u  (cpuid never traps before VT: the VMM filters it)  %s\n",
           vendor, eax, verdict(vendor[0] != 0 && eax >= 1));
    cpuid(1, 0, &eax, &ebx, &ecx, &edx);
    printf("cpuid 1         : hypervisor bit=%u, VMX=%u  (unfiltered, a guest would see the host's VMX/feature bits)  %s\n",
           (ecx >> 31) & 1, (ecx >> 5) & 1, verdict(!(ecx & (1u << 5))));

    uint64_t t0 = rdtsc();
    volatile uint32_t spin = 0;
    for (int i = 0; i < 1000; i++)
        spin += i;
    uint64_t t1 = rdtsc();
    uint32_t dt = (uint32_t)(t1 - t0);
    printf("rdtsc           : +%u cycles over a 1000-step loop  (deprivileged it reads the host TSC unless CR4.TSD traps it)  %s\n",
           dt, verdict(t1 > t0));

    outb(COM1_SCR, 0x5a);
    uint8_t scr = inb(COM1_SCR);
    printf("out/in 0x3ff    : wrote 0x5a, read 0x%02x  (deprivileged, in/out #GP at IOPL 0; the VMM emulates the UART)  %s\n",
           scr, verdict(scr == 0x5a));

    printf("\n%s: %d mismatch%s\n", mismatches ? "demo FAILED" : "demo done", mismatches, mismatches == 1 ? "" : "es");
    return mismatches ? 1 : 0;
}
