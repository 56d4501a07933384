/* debuggee: a guest for the gdb stub's tests (cli/tests/gdb.rs): a `main` to
 * break on, a `counter` to watch (written 5 times through `bump`), and, with the
 * command line `spin`, a loop that runs until the debugger clears `spinning`
 * (for Ctrl-C). Built with symbols like every kit guest. */
#include "kit.h"

volatile uint32_t counter;
volatile uint32_t spinning = 1;
static int spin;

__attribute__((noinline)) void bump(uint32_t by)
{
    counter += by;
}

__attribute__((noinline)) int main(void)
{
    printf("debuggee: main\n");
    for (uint32_t i = 1; i <= 5; i++)
        bump(i);
    CHECK_EQ(counter, 15);
    if (spin) {
        printf("debuggee: spinning\n");
        while (spinning)
            counter++;
        printf("debuggee: released\n");
    }
    return kit_finish();
}

int kmain(uint32_t magic, uint32_t mbi_addr)
{
    const struct multiboot_info *mbi = (const struct multiboot_info *)mbi_addr;
    (void)magic;
    spin = (mbi->flags & MBI_FLAG_CMDLINE) && strcmp((const char *)mbi->cmdline, "spin") == 0;
    return main();
}
