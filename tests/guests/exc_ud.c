/* exc_ud: ud2 with no IDT loaded (the guest never executes lidt).
 * Expected under bt86: the run ends with a non-zero status and a message
 * naming vector 6 (#UD) and the EIP printed below. The guest must not get
 * past the ud2. */
#include "kit.h"

extern char exc_ud_site[];

int kmain(uint32_t magic, uint32_t mbi)
{
    (void)magic;
    (void)mbi;
    printf("BEFORE ud2 at eip=0x%08x (expect #UD, vector 6)\n", (uint32_t)exc_ud_site);
    __asm__ volatile(".globl exc_ud_site\n"
                     "exc_ud_site: ud2" : : : "memory");
    printf("AFTER ud2: FAIL, no exception was raised\n");
    debug_exit(0);   /* a status of 0 marks this run as wrong */
    return 0;
}
