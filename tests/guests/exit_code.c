/* exit_code: the debug-exit port carries the guest's exit status. */
#include "kit.h"

int kmain(uint32_t magic, uint32_t mbi)
{
    (void)magic;
    (void)mbi;
    printf("exit_code: exiting with 42\n");
    debug_exit(42);
    printf("exit_code: FAIL still running after debug_exit(42)\n");
    return 1;
}
