/* hello: the kit boots, the serial console works, the multiboot handoff is right. */
#include "kit.h"

int kmain(uint32_t magic, uint32_t mbi_addr)
{
    const struct multiboot_info *mbi = (const struct multiboot_info *)mbi_addr;

    printf("hello from the guest\n");
    CHECK_EQ(magic, MULTIBOOT_BOOTLOADER_MAGIC);
    CHECK(mbi_addr != 0);
    CHECK(mbi->flags & MBI_FLAG_MEM);
    CHECK(mbi->flags & MBI_FLAG_CMDLINE);
    if (mbi->flags & MBI_FLAG_MEM)
        printf("mem_lower=%u KiB mem_upper=%u KiB\n", mbi->mem_lower, mbi->mem_upper);
    if (mbi->flags & (1u << 6)) { /* the memory map: length at +44, address at +48 */
        uint32_t len = ((const uint32_t *)mbi_addr)[11], at = ((const uint32_t *)mbi_addr)[12];
        for (uint32_t p = at; p < at + len; p += *(const uint32_t *)p + 4) {
            const uint32_t *e = (const uint32_t *)p;
            printf("mmap: base=0x%08x%08x len=0x%08x%08x type=%u\n", e[2], e[1], e[4], e[3], e[5]);
        }
    }
    if (mbi->flags & MBI_FLAG_CMDLINE) {
        CHECK(mbi->cmdline != 0);
        if (mbi->cmdline)
            printf("cmdline: %s\n", (const char *)mbi->cmdline);
    }

    /* the kit's own state: selectors and a working stack and .bss */
    uint16_t cs, ds;
    __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    __asm__ volatile("mov %%ds, %0" : "=r"(ds));
    CHECK_EQ(cs, KIT_CODE_SEL);
    CHECK_EQ(ds, KIT_DATA_SEL);
    static uint32_t zeroed[16];
    uint32_t sum = 0;
    for (unsigned i = 0; i < ARRAY_SIZE(zeroed); i++)
        sum |= zeroed[i];
    CHECK_EQ(sum, 0);
    printf("printf: %d %u %x %08x %s %c %% [%5d]\n", -42, 42u, 0xbeefu, 0x1234u, "str", 'c', 7);
    return kit_finish();
}
