/* smc: self-modifying code. x86 keeps instruction fetch coherent with stores
 * (no flush instruction needed, even for the very next instruction), so every
 * modification below must be visible the next time the bytes are executed. */
#include "kit.h"

typedef uint32_t (*fn_t)(void);
typedef uint32_t (*fn1_t)(uint32_t);

#define BARRIER() __asm__ volatile("" : : : "memory")

static uint8_t buf[64] __attribute__((aligned(16)));
static uint8_t page[4096] __attribute__((aligned(4096)));

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

/* mov $imm, %eax; ret */
static void emit_mov_ret(uint8_t *p, uint32_t imm)
{
    p[0] = 0xb8;
    put32(p + 1, imm);
    p[5] = 0xc3;
}

static void test_patch_immediate(void)
{
    printf("-- patch an immediate and call again, 100 times\n");
    emit_mov_ret(buf, 1);
    BARRIER();
    CHECK_EQ(((fn_t)buf)(), 1);
    put32(buf + 1, 2);
    BARRIER();
    CHECK_EQ(((fn_t)buf)(), 2);
    uint32_t bad = 0;
    for (uint32_t i = 0; i < 100; i++) {
        uint32_t v = 0x1000 + i * 0x01010101;
        put32(buf + 1, v);
        BARRIER();
        uint32_t got = ((fn_t)buf)();
        if (got != v && bad++ < 3)
            printf("  iteration %u: got 0x%08x want 0x%08x\n", i, got, v);
        /* call it twice: the second call may run a cached translation */
        got = ((fn_t)buf)();
        bad += got != v;
    }
    CHECK_EQ(bad, 0);
    /* patch a single byte of the immediate */
    put32(buf + 1, 0x11223344);
    BARRIER();
    CHECK_EQ(((fn_t)buf)(), 0x11223344);
    buf[4] = 0x99;
    BARRIER();
    CHECK_EQ(((fn_t)buf)(), 0x99223344);
}

/* The code stores into the immediate of the instruction right after the
 * store, in the same basic block:
 *   0: c7 05 <&buf[11]> <new>   movl $new, buf+11
 *  10: b8 <old>                 movl $old, %eax
 *  15: c3                       ret */
static void test_next_instruction(void)
{
    printf("-- a store that modifies the next instruction\n");
    uint32_t bad = 0;
    for (uint32_t i = 0; i < 100; i++) {
        uint32_t newv = 0xa0000000 + i * 7, oldv = 0x5555;
        buf[0] = 0xc7;
        buf[1] = 0x05;
        put32(buf + 2, (uint32_t)(buf + 11));
        put32(buf + 6, newv);
        buf[10] = 0xb8;
        put32(buf + 11, oldv);
        buf[15] = 0xc3;
        BARRIER();
        uint32_t got = ((fn_t)buf)();
        if (got != newv && bad++ < 3)
            printf("  iteration %u: got 0x%08x want 0x%08x\n", i, got, newv);
    }
    CHECK_EQ(bad, 0);

    /* the same in the kit's own .text: each pass stores the loop counter into
     * the immediate of the next instruction */
    bad = 0;
    for (uint32_t i = 0; i < 100; i++) {
        uint32_t r;
        __asm__ volatile("movl %1, 1f+1\n\t"
                         "1: movl $0, %%eax"
                         : "=a"(r) : "r"(i * 3 + 1) : "memory");
        bad += r != i * 3 + 1;
    }
    CHECK_EQ(bad, 0);

    /* a store that turns the next instruction into a different one:
     * nop nop (0x90 0x90) becomes inc %eax; inc %eax, or back */
    bad = 0;
    for (uint32_t i = 0; i < 20; i++) {
        uint32_t r, op = (i & 1) ? 0x4040 : 0x9090;
        __asm__ volatile("xorl %%eax, %%eax\n\t"
                         "movw %w1, 1f\n\t"
                         "1: nop; nop"
                         : "=&a"(r) : "r"(op) : "memory");
        bad += r != ((i & 1) ? 2u : 0u);
    }
    CHECK_EQ(bad, 0);
}

/* Two bodies of different length; rep movsb copies one over the other. */
static const uint8_t body_a[] = {
    0xb8, 0x11, 0x01, 0x00, 0x00,   /* mov $0x111, %eax */
    0xc3,                           /* ret */
};
static const uint8_t body_b[] = {
    0x31, 0xc0,                     /* xor %eax, %eax */
    0x05, 0x22, 0x02, 0x00, 0x00,   /* add $0x222, %eax */
    0xd1, 0xe0,                     /* shl $1, %eax */
    0xc3,                           /* ret */
};

static void copy_rep_movsb(void *dst, const void *src, uint32_t n)
{
    __asm__ volatile("cld; rep movsb" : "+D"(dst), "+S"(src), "+c"(n) : : "memory");
}

static void test_rep_movsb_over_code(void)
{
    printf("-- rep movsb copies a new function body over an old one\n");
    uint32_t bad = 0;
    for (int i = 0; i < 50; i++) {
        copy_rep_movsb(buf, body_a, sizeof body_a);
        bad += ((fn_t)buf)() != 0x111;
        copy_rep_movsb(buf, body_b, sizeof body_b);
        bad += ((fn_t)buf)() != 0x444;
    }
    CHECK_EQ(bad, 0);
}

/* Code and data on one page:
 *   page+0:    a function that writes to page+2048 n times and returns the sum
 *   page+256:  mov $imm, %eax; ret   (patched by page+512)
 *   page+512:  movl %ecx, page+257; call page+256; ret
 *   page+768:  jmp rel32 -> page+1024 or page+1280 (patched from C)
 *   page+1024: mov $0xa, %eax; ret     page+1280: mov $0xb, %eax; ret */
static void test_same_page(void)
{
    printf("-- code and data on the same page\n");
    uint8_t *p = page;
    uint32_t data = (uint32_t)(page + 2048);
    /* 0: xor %eax,%eax; 1: add %ecx, (data); add (data), %eax ... simple loop:
     *    mov 4(%esp), %ecx
     * L: addl $1, data
     *    loop L
     *    mov data, %eax
     *    ret */
    int o = 0;
    p[o++] = 0x8b; p[o++] = 0x4c; p[o++] = 0x24; p[o++] = 0x04;             /* mov 4(%esp), %ecx */
    int loop = o;
    p[o++] = 0x83; p[o++] = 0x05; put32(p + o, data); o += 4; p[o++] = 0x01; /* addl $1, data */
    p[o++] = 0xe2; p[o] = (uint8_t)(loop - (o + 1)); o++;                  /* loop L */
    p[o++] = 0xa1; put32(p + o, data); o += 4;                              /* mov data, %eax */
    p[o++] = 0xc3;
    put32(page + 2048, 0);
    BARRIER();
    CHECK_EQ(((fn1_t)page)(1000), 1000);
    CHECK_EQ(((fn1_t)page)(1000), 2000);
    CHECK_EQ(*(volatile uint32_t *)(page + 2048), 2000);

    emit_mov_ret(page + 256, 0);
    o = 512;
    p[o++] = 0x8b; p[o++] = 0x4c; p[o++] = 0x24; p[o++] = 0x04;                 /* mov 4(%esp), %ecx */
    p[o++] = 0x89; p[o++] = 0x0d; put32(p + o, (uint32_t)(page + 257)); o += 4;  /* mov %ecx, page+257 */
    p[o++] = 0xe8; put32(p + o, (uint32_t)(page + 256) - (uint32_t)(p + o + 4)); o += 4;   /* call page+256 */
    p[o++] = 0xc3;
    BARRIER();
    uint32_t bad = 0;
    for (uint32_t i = 0; i < 100; i++)
        bad += ((fn1_t)(page + 512))(i ^ 0x5a5a5a5a) != (i ^ 0x5a5a5a5a);
    CHECK_EQ(bad, 0);

    emit_mov_ret(page + 1024, 0xa);
    emit_mov_ret(page + 1280, 0xb);
    page[768] = 0xe9;
    bad = 0;
    for (uint32_t i = 0; i < 100; i++) {
        uint32_t target = (uint32_t)(page + ((i & 1) ? 1280 : 1024));
        put32(page + 769, target - (uint32_t)(page + 773));
        BARRIER();
        bad += ((fn_t)(page + 768))() != ((i & 1) ? 0xbu : 0xau);
    }
    CHECK_EQ(bad, 0);
    /* a data write to a code page that does not touch code must not disturb it */
    for (int i = 0; i < 100; i++)
        page[3000 + (i & 63)] = (uint8_t)i;
    BARRIER();
    CHECK_EQ(((fn_t)(page + 1024))(), 0xa);
    CHECK_EQ(((fn1_t)page)(5), 2005);
}

/* Translated code is invalidated when its bytes are rewritten even if it
 * was executed many times first (a hot loop that gets patched). */
static void test_hot_then_patch(void)
{
    printf("-- a hot function patched\n");
    emit_mov_ret(buf, 7);
    BARRIER();
    uint32_t sum = 0;
    for (int i = 0; i < 10000; i++)
        sum += ((fn_t)buf)();
    CHECK_EQ(sum, 70000);
    buf[1] = 9;
    BARRIER();
    sum = 0;
    for (int i = 0; i < 10000; i++)
        sum += ((fn_t)buf)();
    CHECK_EQ(sum, 90000);
}

int kmain(uint32_t magic, uint32_t mbi)
{
    (void)mbi;
    printf("smc: self-modifying code\n");
    CHECK_EQ(magic, MULTIBOOT_BOOTLOADER_MAGIC);
    test_patch_immediate();
    test_next_instruction();
    test_rep_movsb_over_code();
    test_same_page();
    test_hot_then_patch();
    return kit_finish();
}
