/* exc_de: divide by zero with no IDT loaded (the guest never executes lidt).
 * Expected under bt86: the run ends with a non-zero status and a message
 * naming vector 0 (#DE) and the EIP printed below. The guest must not get
 * past the div. */
#include "kit.h"

extern char exc_de_site[];

int kmain(uint32_t magic, uint32_t mbi)
{
    (void)magic;
    (void)mbi;
    volatile uint32_t zero = 0;
    uint32_t divisor = zero, q;
    printf("BEFORE div at eip=0x%08x (expect #DE, vector 0)\n", (uint32_t)exc_de_site);
    __asm__ volatile(".globl exc_de_site\n"
                     "exc_de_site: divl %1"
                     : "=a"(q) : "r"(divisor), "a"(1000), "d"(0) : "cc", "memory");
    printf("AFTER div: FAIL, no exception was raised (quotient 0x%08x)\n", q);
    debug_exit(0);   /* a status of 0 marks this run as wrong */
    return 0;
}
