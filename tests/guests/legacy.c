/* legacy: 32-bit encodings that mean something else (or nothing) in 64-bit
 * mode, and the ordinary integer, string, control-flow and x87 instructions a
 * translator re-expresses. Expected values are what the SDM specifies
 * (checked on QEMU TCG); architecturally undefined flags are not checked. */
#include "kit.h"

extern uint32_t asm_out[64];
extern uint32_t fake_frame_top[];
void incdec_all(void);
void pushpop_all(void);
void pusha_test(void);
void enter_test(void);
void esp_forms(void);

static int parity_even(uint32_t v)
{
    v &= 0xff;
    v ^= v >> 4;
    v ^= v >> 2;
    v ^= v >> 1;
    return !(v & 1);
}

/* flags that depend only on the 8-bit result */
static uint32_t szp8(uint32_t al)
{
    al &= 0xff;
    return (al == 0 ? EFLAGS_ZF : 0) | (al & 0x80 ? EFLAGS_SF : 0) | (parity_even(al) ? EFLAGS_PF : 0);
}

/* ------------------------------------------------------- inc/dec/push/pop */

static void test_incdec_pushpop(void)
{
    printf("-- inc/dec 0x40-0x4f, push/pop r32, pusha/popa, enter/leave, esp forms\n");
    incdec_all();
    static const uint32_t init[7] = { 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70 };
    uint32_t bad = 0;
    for (int i = 0; i < 7; i++) {
        bad += asm_out[i] != init[i] + 1;
        bad += asm_out[7 + i] != init[i] - 1;
    }
    CHECK_EQ(bad, 0);
    CHECK_EQ(asm_out[0], 0x11);
    CHECK_EQ(asm_out[4], 0x51);     /* ebp */
    CHECK_EQ(asm_out[13], 0x6f);    /* edi */
    CHECK_EQ(asm_out[15], asm_out[14] + 1);   /* inc esp */
    CHECK_EQ(asm_out[16], asm_out[14]);       /* dec esp */
    CHECK_EQ(asm_out[18], 0);
    CHECK_EQ(asm_out[17] & (EFLAGS_CF | EFLAGS_ZF | EFLAGS_SF | EFLAGS_OF), EFLAGS_CF | EFLAGS_ZF);
    CHECK_EQ(asm_out[19] & (EFLAGS_CF | EFLAGS_ZF | EFLAGS_SF | EFLAGS_OF), EFLAGS_SF | EFLAGS_OF);
    CHECK_EQ(asm_out[20] & (EFLAGS_ZF | EFLAGS_SF | EFLAGS_OF), EFLAGS_OF);
    CHECK_EQ(asm_out[21], 101);

    pushpop_all();
    static const uint32_t pushed[7] = { 0xa0, 0xa1, 0xa2, 0xa3, 0xa5, 0xa6, 0xa7 };
    static const uint32_t popped[7] = { 0xb0, 0xb1, 0xb2, 0xb3, 0xb5, 0xb6, 0xb7 };
    bad = 0;
    for (int i = 0; i < 7; i++) {
        bad += asm_out[i] != pushed[i];
        bad += asm_out[7 + i] != popped[i];
    }
    CHECK_EQ(bad, 0);
    CHECK_EQ(asm_out[3], 0xa3);
    CHECK_EQ(asm_out[11], 0xb5);
    CHECK_EQ(asm_out[15], asm_out[14]);       /* push %esp pushes the value before the push */
    CHECK_EQ(asm_out[16], asm_out[14]);
    CHECK_EQ(asm_out[17], asm_out[18]);       /* pop %esp loads the popped value */

    pusha_test();
    uint32_t e = asm_out[8];
    CHECK_EQ(asm_out[9], e - 32);
    CHECK_EQ(asm_out[0], 0xc7);               /* edi at the lowest address */
    CHECK_EQ(asm_out[1], 0xc6);
    CHECK_EQ(asm_out[2], 0xc5);
    CHECK_EQ(asm_out[3], e);                  /* the esp before pusha */
    CHECK_EQ(asm_out[4], 0xc3);
    CHECK_EQ(asm_out[5], 0xc2);
    CHECK_EQ(asm_out[6], 0xc1);
    CHECK_EQ(asm_out[7], 0xc0);
    CHECK_EQ(asm_out[10], e);                 /* popa skips the saved esp */
    CHECK_EQ(asm_out[11], 0xd0);
    CHECK_EQ(asm_out[12], 0xd1);
    CHECK_EQ(asm_out[13], 0xd2);
    CHECK_EQ(asm_out[14], 0xd3);
    CHECK_EQ(asm_out[15], 0xd5);
    CHECK_EQ(asm_out[16], 0xd6);
    CHECK_EQ(asm_out[17], 0xd7);

    enter_test();
    e = asm_out[0];
    uint32_t fft = (uint32_t)fake_frame_top;
    CHECK_EQ(asm_out[1], e - 4 - 16);         /* enter $16,$0 */
    CHECK_EQ(asm_out[2], e - 4);
    CHECK_EQ(asm_out[3], fft);
    CHECK_EQ(asm_out[4], e);                  /* leave */
    CHECK_EQ(asm_out[5], fft);
    CHECK_EQ(asm_out[6], e - 8 - 8);          /* enter $8,$1 */
    CHECK_EQ(asm_out[7], e - 4);
    CHECK_EQ(asm_out[8], fft);
    CHECK_EQ(asm_out[9], e - 4);              /* the frame pointer it pushed */
    CHECK_EQ(asm_out[10], e);
    CHECK_EQ(asm_out[11], fft);
    CHECK_EQ(asm_out[12], e - 12 - 4);        /* enter $4,$2 */
    CHECK_EQ(asm_out[13], e - 4);
    CHECK_EQ(asm_out[14], fft);
    CHECK_EQ(asm_out[15], 0xf00df00d);        /* copied from the outer frame's -4(%ebp) */
    CHECK_EQ(asm_out[16], e - 4);
    CHECK_EQ(asm_out[17], e);
    CHECK_EQ(asm_out[18], fft);

    esp_forms();
    CHECK_EQ(asm_out[0], 0xaaaa);
    CHECK_EQ(asm_out[1], 0xbbbb);
    CHECK_EQ(asm_out[2], 2);
    CHECK_EQ(asm_out[3], 3);
    CHECK_EQ(asm_out[4], 5);
    CHECK_EQ(asm_out[5], 5);
    CHECK_EQ(asm_out[6], 8);
    CHECK_EQ(asm_out[7], 12);
    CHECK_EQ(asm_out[8], 2);
    CHECK_EQ(asm_out[9], 0x12345678);
    CHECK_EQ(asm_out[10], asm_out[11]);
    CHECK_EQ(asm_out[12], asm_out[13]);
    CHECK_EQ(asm_out[14], (uint32_t)-2);
    CHECK_EQ(asm_out[15], 0x4321);
    CHECK_EQ(asm_out[16], (uint32_t)-4);
    CHECK_EQ(asm_out[17], 0xffffffff);
    CHECK_EQ(asm_out[18], 0x600dcafe);
}

/* ---------------------------------------------------------------- BCD */

static uint32_t run_bcd(int op, uint32_t ax, uint32_t flags_in, uint32_t *flags_out)
{
    uint32_t f;
    switch (op) {
    case 0: __asm__ volatile("pushl %2; popfl; daa; pushfl; popl %1" : "+a"(ax), "=r"(f) : "r"(flags_in) : "cc"); break;
    case 1: __asm__ volatile("pushl %2; popfl; das; pushfl; popl %1" : "+a"(ax), "=r"(f) : "r"(flags_in) : "cc"); break;
    case 2: __asm__ volatile("pushl %2; popfl; aaa; pushfl; popl %1" : "+a"(ax), "=r"(f) : "r"(flags_in) : "cc"); break;
    default: __asm__ volatile("pushl %2; popfl; aas; pushfl; popl %1" : "+a"(ax), "=r"(f) : "r"(flags_in) : "cc"); break;
    }
    *flags_out = f;
    return ax;
}

/* the SDM's pseudocode */
static uint32_t model_bcd(int op, uint32_t ax, int cf, int af, uint32_t *flags)
{
    uint32_t al = ax & 0xff, ah = (ax >> 8) & 0xff, old_al = al;
    int old_cf = cf;
    switch (op) {
    case 0: /* daa */
        cf = 0;
        if ((al & 0xf) > 9 || af) {
            cf = old_cf || al + 6 > 0xff;
            al = (al + 6) & 0xff;
            af = 1;
        } else {
            af = 0;
        }
        if (old_al > 0x99 || old_cf) {
            al = (al + 0x60) & 0xff;
            cf = 1;
        } else {
            cf = 0;
        }
        *flags = szp8(al) | (cf ? EFLAGS_CF : 0) | (af ? EFLAGS_AF : 0);
        break;
    case 1: /* das */
        cf = 0;
        if ((al & 0xf) > 9 || af) {
            cf = old_cf || al < 6;
            al = (al - 6) & 0xff;
            af = 1;
        } else {
            af = 0;
        }
        if (old_al > 0x99 || old_cf) {
            al = (al - 0x60) & 0xff;
            cf = 1;
        }
        *flags = szp8(al) | (cf ? EFLAGS_CF : 0) | (af ? EFLAGS_AF : 0);
        break;
    case 2: /* aaa */
        if ((al & 0xf) > 9 || af) {
            uint32_t x = ((ah << 8) | al) + 0x106;
            ah = (x >> 8) & 0xff;
            al = x & 0xff;
            af = cf = 1;
        } else {
            af = cf = 0;
        }
        al &= 0xf;
        *flags = (cf ? EFLAGS_CF : 0) | (af ? EFLAGS_AF : 0);
        break;
    default: /* aas */
        if ((al & 0xf) > 9 || af) {
            uint32_t x = ((ah << 8) | al) - 6;
            ah = ((x >> 8) - 1) & 0xff;
            al = x & 0xff;
            af = cf = 1;
        } else {
            af = cf = 0;
        }
        al &= 0xf;
        *flags = (cf ? EFLAGS_CF : 0) | (af ? EFLAGS_AF : 0);
        break;
    }
    return (ax & 0xffff0000) | (ah << 8) | al;
}

static void test_bcd(void)
{
    printf("-- daa das aaa aas aam aad\n");
    static const char *names[4] = { "daa", "das", "aaa", "aas" };
    /* flags the SDM defines: daa/das: CF AF SF ZF PF; aaa/aas: CF AF */
    static const uint32_t defined[4] = {
        EFLAGS_CF | EFLAGS_AF | EFLAGS_SF | EFLAGS_ZF | EFLAGS_PF,
        EFLAGS_CF | EFLAGS_AF | EFLAGS_SF | EFLAGS_ZF | EFLAGS_PF,
        EFLAGS_CF | EFLAGS_AF,
        EFLAGS_CF | EFLAGS_AF,
    };
    for (int op = 0; op < 4; op++) {
        uint32_t bad = 0, cases = 0;
        for (uint32_t al = 0; al < 256; al++) {
            for (int cfaf = 0; cfaf < 4; cfaf++) {
                int cf = cfaf & 1, af = cfaf >> 1;
                uint32_t ax = 0x5a000000 | (((al * 7) & 0xff) << 8) | al;
                uint32_t fin = 0x2 | (cf ? EFLAGS_CF : 0) | (af ? EFLAGS_AF : 0);
                uint32_t fhw, fmodel;
                uint32_t hw = run_bcd(op, ax, fin, &fhw);
                uint32_t model = model_bcd(op, ax, cf, af, &fmodel);
                cases++;
                if (hw != model || (fhw & defined[op]) != fmodel) {
                    if (bad < 4)
                        printf("  %s ax=0x%08x cf=%d af=%d: got 0x%08x flags 0x%03x, want 0x%08x flags 0x%03x\n",
                               names[op], ax, cf, af, hw, fhw & defined[op], model, fmodel);
                    bad++;
                }
            }
        }
        printf("%s: %u cases, %u differ from the SDM\n", names[op], cases, bad);
        CHECK_EQ(bad, 0);
    }

    /* a few by hand: 79 + 35 = 114 */
    uint32_t f, ax = 0x79;
    __asm__ volatile("addb $0x35, %%al; daa; pushfl; popl %1" : "+a"(ax), "=r"(f) : : "cc");
    CHECK_EQ(ax & 0xff, 0x14);
    CHECK_EQ(f & (EFLAGS_CF | EFLAGS_AF), EFLAGS_CF | EFLAGS_AF);
    ax = 0x35; /* 35 - 47 = -12 -> 88 borrow */
    __asm__ volatile("subb $0x47, %%al; das; pushfl; popl %1" : "+a"(ax), "=r"(f) : : "cc");
    CHECK_EQ(ax & 0xff, 0x88);
    CHECK_EQ(f & EFLAGS_CF, EFLAGS_CF);
    ax = 0x0008; /* unpacked 8 + 6 = 14 */
    __asm__ volatile("addb $6, %%al; aaa" : "+a"(ax) : : "cc");
    CHECK_EQ(ax & 0xffff, 0x0104);
    ax = 0x0103; /* 13 - 5 = 8 */
    __asm__ volatile("subb $5, %%al; aas" : "+a"(ax) : : "cc");
    CHECK_EQ(ax & 0xffff, 0x0008);

    /* aam / aad, base 10, 16 and 7: exhaustive over AL */
    uint32_t bad = 0;
    for (uint32_t al = 0; al < 256; al++) {
        uint32_t a10 = 0x12340000 | 0x5500 | al, a16 = a10, a7 = a10, f10, f16;
        __asm__ volatile("aam; pushfl; popl %1" : "+a"(a10), "=r"(f10) : : "cc");
        __asm__ volatile(".byte 0xd4, 0x10; pushfl; popl %1" : "+a"(a16), "=r"(f16) : : "cc");
        __asm__ volatile(".byte 0xd4, 0x07" : "+a"(a7) : : "cc");
        bad += a10 != (0x12340000 | ((al / 10) << 8) | (al % 10));
        bad += a16 != (0x12340000 | ((al >> 4) << 8) | (al & 0xf));
        bad += a7 != (0x12340000 | ((al / 7) << 8) | (al % 7));
        bad += (f10 & (EFLAGS_SF | EFLAGS_ZF | EFLAGS_PF)) != szp8(al % 10);
        bad += (f16 & (EFLAGS_SF | EFLAGS_ZF | EFLAGS_PF)) != szp8(al & 0xf);
    }
    printf("aam: %u mismatches\n", bad);
    CHECK_EQ(bad, 0);
    bad = 0;
    for (uint32_t ah = 0; ah < 256; ah += 3) {
        for (uint32_t al = 0; al < 256; al += 5) {
            uint32_t in = 0x87650000 | (ah << 8) | al, a10 = in, a16 = in, f10;
            __asm__ volatile("aad; pushfl; popl %1" : "+a"(a10), "=r"(f10) : : "cc");
            __asm__ volatile(".byte 0xd5, 0x10" : "+a"(a16) : : "cc");
            bad += a10 != (0x87650000 | ((al + ah * 10) & 0xff));
            bad += a16 != (0x87650000 | ((al + ah * 16) & 0xff));
            bad += (f10 & (EFLAGS_SF | EFLAGS_ZF | EFLAGS_PF)) != szp8(al + ah * 10);
        }
    }
    printf("aad: %u mismatches\n", bad);
    CHECK_EQ(bad, 0);
}

/* ------------------------------------------- bound salc arpl into 0x82 moffs */

static volatile uint32_t moffs_var = 0x11223344;

static void test_misc_legacy(void)
{
    printf("-- bound salc arpl into 0x82 moffs addr16\n");
    static int32_t bounds[2] = { -5, 100 };
    int32_t ok = 0;
    for (int32_t i = -5; i <= 100; i += 15) {
        __asm__ volatile("bound %1, %2; incl %0" : "+r"(ok) : "r"(i), "m"(bounds[0]) : "cc");
    }
    int32_t hi = 100;
    __asm__ volatile("bound %1, %2; incl %0" : "+r"(ok) : "r"(hi), "m"(bounds[0]) : "cc");
    CHECK_EQ(ok, 9);

    uint32_t a = 0x12345678;
    __asm__ volatile("stc; .byte 0xd6" : "+a"(a));
    CHECK_EQ(a, 0x123456ff);
    __asm__ volatile("clc; .byte 0xd6" : "+a"(a));
    CHECK_EQ(a, 0x12345600);

    uint32_t dst = 0xabcd0008, src = 0x00000003;
    uint8_t z;
    __asm__ volatile("arpl %w2, %w0; setz %1" : "+r"(dst), "=q"(z) : "r"(src) : "cc");
    CHECK_EQ(dst, 0xabcd000b);
    CHECK_EQ(z, 1);
    src = 0x0001;
    __asm__ volatile("arpl %w2, %w0; setz %1" : "+r"(dst), "=q"(z) : "r"(src) : "cc");
    CHECK_EQ(dst, 0xabcd000b);
    CHECK_EQ(z, 0);
    static volatile uint16_t msel = 0x0010;
    src = 2;
    __asm__ volatile("arpl %w2, %0; setz %1" : "+m"(msel), "=q"(z) : "r"(src) : "cc");
    CHECK_EQ(msel, 0x0012);
    CHECK_EQ(z, 1);

    uint32_t reached = 0;
    __asm__ volatile("movl $1, %%eax; addl $1, %%eax; into; movl $1, %0" : "=r"(reached) : : "eax", "cc");
    CHECK_EQ(reached, 1);

    a = 0x100;
    __asm__ volatile(".byte 0x82, 0xc0, 0x05" : "+a"(a) : : "cc");    /* add $5, %al (0x82 alias) */
    CHECK_EQ(a, 0x105);
    uint8_t below;
    __asm__ volatile(".byte 0x82, 0xf8, 0x10; setb %0" : "=q"(below) : "a"(5) : "cc");   /* cmp $0x10, %al */
    CHECK_EQ(below, 1);

    /* moffs forms A0-A3 carry a 32-bit address here */
    uint32_t v;
    uint8_t b;
    __asm__ volatile("movl moffs_var, %0" : "=a"(v));
    CHECK_EQ(v, 0x11223344);
    __asm__ volatile("movb moffs_var+1, %0" : "=a"(b));
    CHECK_EQ(b, 0x33);
    __asm__ volatile("movl %0, moffs_var" : : "a"(0x55667788u) : "memory");
    CHECK_EQ(moffs_var, 0x55667788);
    __asm__ volatile("movb %0, moffs_var+3" : : "a"((uint8_t)0x99) : "memory");
    CHECK_EQ(moffs_var, 0x99667788);

    /* addr16: 16-bit address arithmetic wraps at 64 KiB */
    uint32_t r;
    __asm__ volatile("movl $0x1234fff0, %%ebx; movl $0x20, %%esi; leal 4(%%bx,%%si), %0"
                     : "=r"(r) : : "ebx", "esi");
    CHECK_EQ(r, 0x14);
    /* and a 16-bit-addressed access to low memory (0x8000) */
    volatile uint32_t *low = (volatile uint32_t *)0x8000;
    uint32_t saved = *low;
    *low = 0xfeedface;
    __asm__ volatile("movl $0xabcd8000, %%ebx; movl (%%bx), %0" : "=r"(r) : : "ebx", "memory");
    CHECK_EQ(r, 0xfeedface);
    *low = saved;
}

/* ------------------------------------------------- integer operations */

#define CC_LIST(X) X(o, 0) X(no, 1) X(b, 2) X(ae, 3) X(e, 4) X(ne, 5) X(be, 6) X(a, 7) \
                   X(s, 8) X(ns, 9) X(p, 10) X(np, 11) X(l, 12) X(ge, 13) X(le, 14) X(g, 15)

static int cc_holds(int cc, uint32_t f)
{
    int cf = !!(f & EFLAGS_CF), zf = !!(f & EFLAGS_ZF), sf = !!(f & EFLAGS_SF), of = !!(f & EFLAGS_OF),
        pf = !!(f & EFLAGS_PF);
    int r;
    switch (cc >> 1) {
    case 0: r = of; break;
    case 1: r = cf; break;
    case 2: r = zf; break;
    case 3: r = cf || zf; break;
    case 4: r = sf; break;
    case 5: r = pf; break;
    case 6: r = sf != of; break;
    default: r = zf || (sf != of); break;
    }
    return (cc & 1) ? !r : r;
}

static uint32_t sub_flags(uint32_t a, uint32_t b)
{
    uint32_t r = a - b, f = 0;
    if (a < b) f |= EFLAGS_CF;
    if (r == 0) f |= EFLAGS_ZF;
    if (r & 0x80000000) f |= EFLAGS_SF;
    if (((a ^ b) & (a ^ r)) & 0x80000000) f |= EFLAGS_OF;
    if (parity_even(r)) f |= EFLAGS_PF;
    return f;
}

static void test_conditions(void)
{
    printf("-- setcc cmovcc jcc\n");
    static const uint32_t vals[] = { 0, 1, 2, 0x7f, 0x80, 0x7fffffff, 0x80000000, 0xffffffff, 0xfffffffe, 3 };
    uint32_t bad = 0, n = 0;
    for (unsigned i = 0; i < ARRAY_SIZE(vals); i++) {
        for (unsigned j = 0; j < ARRAY_SIZE(vals); j++) {
            uint32_t a = vals[i], b = vals[j], f;
            uint8_t set[16];
            uint32_t cmov[16], jcc[16];
            __asm__ volatile("cmpl %2, %1; pushfl; popl %0" : "=r"(f) : "r"(a), "r"(b) : "cc");
            uint32_t want = sub_flags(a, b);
            bad += (f & (EFLAGS_CF | EFLAGS_ZF | EFLAGS_SF | EFLAGS_OF | EFLAGS_PF)) != want;
#define SET_ONE(cc, k) __asm__ volatile("cmpl %2, %1; set" #cc " %0" : "=q"(set[k]) : "r"(a), "r"(b) : "cc");
            CC_LIST(SET_ONE)
#define CMOV_ONE(cc, k) cmov[k] = 0; __asm__ volatile("cmpl %2, %1; cmov" #cc " %3, %0" : "+r"(cmov[k]) : "r"(a), "r"(b), "r"(1) : "cc");
            CC_LIST(CMOV_ONE)
#define JCC_ONE(cc, k) __asm__ volatile("movl $0, %0; cmpl %2, %1; j" #cc " 1f; jmp 2f; 1: movl $1, %0; 2:" : "=&r"(jcc[k]) : "r"(a), "r"(b) : "cc");
            CC_LIST(JCC_ONE)
            for (int k = 0; k < 16; k++) {
                int w = cc_holds(k, want);
                bad += set[k] != w;
                bad += cmov[k] != (uint32_t)w;
                bad += jcc[k] != (uint32_t)w;
                n += 3;
            }
        }
    }
    printf("setcc/cmovcc/jcc: %u cases, %u wrong\n", n, bad);
    CHECK_EQ(bad, 0);
}

static uint32_t rol32(uint32_t v, unsigned c) { c &= 31; return c ? (v << c) | (v >> (32 - c)) : v; }
static uint32_t ror32(uint32_t v, unsigned c) { c &= 31; return c ? (v >> c) | (v << (32 - c)) : v; }

static void test_bits(void)
{
    printf("-- movzx/movsx bt* bsf/bsr bswap shld/shrd rotates\n");
    uint32_t r;
    uint32_t src = 0x80f0;
    __asm__ volatile("movzbl %b1, %0" : "=r"(r) : "q"(src));
    CHECK_EQ(r, 0xf0);
    __asm__ volatile("movsbl %b1, %0" : "=r"(r) : "q"(src));
    CHECK_EQ(r, 0xfffffff0);
    __asm__ volatile("movzwl %w1, %0" : "=r"(r) : "r"(src));
    CHECK_EQ(r, 0x80f0);
    __asm__ volatile("movswl %w1, %0" : "=r"(r) : "r"(src));
    CHECK_EQ(r, 0xffff80f0);
    __asm__ volatile("movl $0x11223344, %0; movsbw %b1, %w0" : "=&r"(r) : "q"(0x80));
    CHECK_EQ(r, 0x1122ff80);

    /* bt family, register and memory, with bit offsets beyond 31 and negative */
    static uint32_t bits[4] = { 0x00000001, 0x80000008, 0, 0 };
    uint8_t c;
    uint32_t x = 0x10;
    __asm__ volatile("btl $4, %1; setc %0" : "=q"(c) : "r"(x) : "cc");
    CHECK_EQ(c, 1);
    __asm__ volatile("btl %2, %1; setc %0" : "=q"(c) : "r"(x), "r"(36) : "cc");   /* reg: offset mod 32 */
    CHECK_EQ(c, 1);
    __asm__ volatile("btsl $3, %1; setc %0" : "=q"(c), "+r"(x) : : "cc");
    CHECK_EQ(c, 0);
    CHECK_EQ(x, 0x18);
    __asm__ volatile("btrl $4, %1; setc %0" : "=q"(c), "+r"(x) : : "cc");
    CHECK_EQ(c, 1);
    CHECK_EQ(x, 0x8);
    __asm__ volatile("btcl $31, %1; setc %0" : "=q"(c), "+r"(x) : : "cc");
    CHECK_EQ(c, 0);
    CHECK_EQ(x, 0x80000008);
    __asm__ volatile("btl %2, %1; setc %0" : "=q"(c) : "m"(bits[0]), "r"(35) : "cc", "memory");  /* bits[1] bit 3 */
    CHECK_EQ(c, 1);
    __asm__ volatile("btl %2, %1; setc %0" : "=q"(c) : "m"(bits[2]), "r"(-1) : "cc", "memory");  /* bits[1] bit 31 */
    CHECK_EQ(c, 1);
    __asm__ volatile("btsl %2, %1; setc %0" : "=q"(c), "+m"(bits[0]) : "r"(70) : "cc", "memory"); /* bits[2] bit 6 */
    CHECK_EQ(c, 0);
    CHECK_EQ(bits[2], 0x40);
    __asm__ volatile("btrl %2, %1; setc %0" : "=q"(c), "+m"(bits[0]) : "r"(0) : "cc", "memory");
    CHECK_EQ(c, 1);
    CHECK_EQ(bits[0], 0);
    __asm__ volatile("btcl %2, %1; setc %0" : "=q"(c), "+m"(bits[3]) : "r"(-1) : "cc", "memory"); /* bits[2] bit 31 */
    CHECK_EQ(c, 0);
    CHECK_EQ(bits[2], 0x80000040);
    __asm__ volatile("btl $67, %1; setc %0" : "=q"(c) : "m"(bits[0]) : "cc", "memory");  /* imm: mod 32 -> bit 3 of bits[0] */
    CHECK_EQ(c, 0);

    uint32_t idx;
    uint8_t z;
    __asm__ volatile("bsfl %2, %0; setz %1" : "=r"(idx), "=q"(z) : "r"(0x00f00000u) : "cc");
    CHECK_EQ(idx, 20);
    CHECK_EQ(z, 0);
    __asm__ volatile("bsrl %2, %0; setz %1" : "=r"(idx), "=q"(z) : "r"(0x00f00000u) : "cc");
    CHECK_EQ(idx, 23);
    __asm__ volatile("bsrl %2, %0; setz %1" : "=r"(idx), "=q"(z) : "r"(1u) : "cc");
    CHECK_EQ(idx, 0);
    __asm__ volatile("bsfl %1, %%eax; setz %0" : "=q"(z) : "r"(0u) : "eax", "cc");
    CHECK_EQ(z, 1);   /* destination undefined for 0: not checked */

    r = 0x12345678;
    __asm__ volatile("bswap %0" : "+r"(r));
    CHECK_EQ(r, 0x78563412);
    uint32_t regs[6];
    __asm__ volatile("movl $0x01020304, %%eax; movl $0x05060708, %%ebx; movl $0x090a0b0c, %%ecx;"
                     "movl $0x0d0e0f10, %%edx; movl $0x11121314, %%esi; movl $0x15161718, %%edi;"
                     "bswap %%eax; bswap %%ebx; bswap %%ecx; bswap %%edx; bswap %%esi; bswap %%edi;"
                     "movl %%eax, 0(%0); movl %%ebx, 4(%0); movl %%ecx, 8(%0); movl %%edx, 12(%0);"
                     "movl %%esi, 16(%0); movl %%edi, 20(%0)"
                     : : "r"(regs) : "eax", "ebx", "ecx", "edx", "esi", "edi", "memory");
    CHECK_EQ(regs[0], 0x04030201);
    CHECK_EQ(regs[1], 0x08070605);
    CHECK_EQ(regs[2], 0x0c0b0a09);
    CHECK_EQ(regs[3], 0x100f0e0d);
    CHECK_EQ(regs[4], 0x14131211);
    CHECK_EQ(regs[5], 0x18171615);

    /* shld/shrd */
    uint32_t d = 0x12345678, s = 0x9abcdef0, f;
    __asm__ volatile("shldl $4, %1, %0" : "+r"(d) : "r"(s) : "cc");
    CHECK_EQ(d, 0x23456789);
    d = 0x12345678;
    __asm__ volatile("shrdl $8, %1, %0" : "+r"(d) : "r"(s) : "cc");
    CHECK_EQ(d, 0xf0123456);
    d = 0x12345678;
    __asm__ volatile("shldl %%cl, %2, %0; pushfl; popl %1" : "+r"(d), "=r"(f) : "r"(s), "c"(1) : "cc");
    CHECK_EQ(d, 0x2468acf1);
    CHECK_EQ(f & EFLAGS_CF, 0);
    d = 0x12345678;
    __asm__ volatile("shrdl %%cl, %2, %0; pushfl; popl %1" : "+r"(d), "=r"(f) : "r"(s), "c"(31) : "cc");
    CHECK_EQ(d, 0x3579bde0);
    CHECK_EQ(f & EFLAGS_CF, 0);
    d = 0x12345679;
    __asm__ volatile("shrdl %%cl, %2, %0; pushfl; popl %1" : "+r"(d), "=r"(f) : "r"(s), "c"(1) : "cc");
    CHECK_EQ(d, 0x091a2b3c);
    CHECK_EQ(f & EFLAGS_CF, EFLAGS_CF);
    d = 0x12345678;
    __asm__ volatile("stc; shldl %%cl, %2, %0; pushfl; popl %1" : "+r"(d), "=r"(f) : "r"(s), "c"(0) : "cc");
    CHECK_EQ(d, 0x12345678);
    CHECK_EQ(f & EFLAGS_CF, EFLAGS_CF);   /* count 0: flags unchanged */
    d = 0x12345678;
    __asm__ volatile("shldl %%cl, %1, %0" : "+r"(d) : "r"(s), "c"(36) : "cc");   /* count mod 32 */
    CHECK_EQ(d, 0x23456789);

    /* rol/ror/rcl/rcr with counts 0, 1, 31 (and 32 = 0) */
    static const uint32_t tv[] = { 0x80000001, 0x12345678, 0xfedcba98, 0 };
    static const unsigned counts[] = { 0, 1, 31, 32 };
    uint32_t bad = 0;
    for (unsigned i = 0; i < ARRAY_SIZE(tv); i++) {
        for (unsigned k = 0; k < ARRAY_SIZE(counts); k++) {
            for (int cin = 0; cin < 2; cin++) {
                uint32_t v = tv[i], cnt = counts[k] & 31, fin = cin ? EFLAGS_CF : 0;
                uint32_t rl = v, rr = v, cl = v, cr = v, frl, frr, fcl, fcr;
                __asm__ volatile("pushl %2; popfl; roll %%cl, %0; pushfl; popl %1" : "+r"(rl), "=r"(frl) : "r"(fin | 2), "c"(counts[k]) : "cc");
                __asm__ volatile("pushl %2; popfl; rorl %%cl, %0; pushfl; popl %1" : "+r"(rr), "=r"(frr) : "r"(fin | 2), "c"(counts[k]) : "cc");
                __asm__ volatile("pushl %2; popfl; rcll %%cl, %0; pushfl; popl %1" : "+r"(cl), "=r"(fcl) : "r"(fin | 2), "c"(counts[k]) : "cc");
                __asm__ volatile("pushl %2; popfl; rcrl %%cl, %0; pushfl; popl %1" : "+r"(cr), "=r"(fcr) : "r"(fin | 2), "c"(counts[k]) : "cc");
                /* models */
                uint32_t wrl = rol32(v, cnt), wrr = ror32(v, cnt);
                uint32_t wcl = v, wcr = v;
                int ccl = cin, ccr = cin;
                for (unsigned t = 0; t < cnt; t++) {
                    int out = wcl >> 31;
                    wcl = (wcl << 1) | (uint32_t)ccl;
                    ccl = out;
                    out = wcr & 1;
                    wcr = (wcr >> 1) | ((uint32_t)ccr << 31);
                    ccr = out;
                }
                int wcf_rl = cnt ? (int)(wrl & 1) : cin, wcf_rr = cnt ? (int)(wrr >> 31) : cin;
                bad += rl != wrl || rr != wrr || cl != wcl || cr != wcr;
                bad += !!(frl & EFLAGS_CF) != wcf_rl;
                bad += !!(frr & EFLAGS_CF) != wcf_rr;
                bad += !!(fcl & EFLAGS_CF) != ccl;
                bad += !!(fcr & EFLAGS_CF) != ccr;
                if (cnt == 1) {   /* OF is defined for 1-bit rotates */
                    bad += !!(frl & EFLAGS_OF) != (int)((wrl >> 31) ^ (wrl & 1));
                    bad += !!(frr & EFLAGS_OF) != (int)((wrr >> 31) ^ ((wrr >> 30) & 1));
                    bad += !!(fcl & EFLAGS_OF) != (int)((wcl >> 31) ^ (uint32_t)ccl);
                    bad += !!(fcr & EFLAGS_OF) != (int)((wcr >> 31) ^ ((wcr >> 30) & 1));
                }
            }
        }
    }
    printf("rotates: %u wrong\n", bad);
    CHECK_EQ(bad, 0);
    /* 8-bit rcl rotates through 9 bits: count 9 is a no-op, 10 is 1 */
    uint32_t b8 = 0xaa81;
    __asm__ volatile("clc; rclb %%cl, %b0" : "+q"(b8) : "c"(9) : "cc");
    CHECK_EQ(b8, 0xaa81);
    __asm__ volatile("clc; rclb %%cl, %b0; pushfl; popl %1" : "+q"(b8), "=r"(f) : "c"(10) : "cc");
    CHECK_EQ(b8, 0xaa02);
    CHECK_EQ(f & EFLAGS_CF, EFLAGS_CF);
    /* 16-bit rcr by 17 is a no-op */
    uint32_t w16 = 0x77778001;
    __asm__ volatile("stc; rcrw %%cl, %w0" : "+r"(w16) : "c"(17) : "cc");
    CHECK_EQ(w16, 0x77778001);
    /* shifts */
    r = 0x80000001;
    __asm__ volatile("shll $1, %0; pushfl; popl %1" : "+r"(r), "=r"(f) : : "cc");
    CHECK_EQ(r, 2);
    CHECK_EQ(f & (EFLAGS_CF | EFLAGS_OF), EFLAGS_CF | EFLAGS_OF);
    r = 0x80000000;
    __asm__ volatile("sarl $31, %0" : "+r"(r) : : "cc");
    CHECK_EQ(r, 0xffffffff);
    r = 0x80000000;
    __asm__ volatile("shrl %%cl, %0" : "+r"(r) : "c"(33) : "cc");   /* count mod 32 = 1 */
    CHECK_EQ(r, 0x40000000);
}

static void test_arith(void)
{
    printf("-- imul mul div idiv cmpxchg xadd cmpxchg8b lock\n");
    int32_t r;
    int32_t s = 7;
    __asm__ volatile("imull $-3, %1, %0" : "=r"(r) : "r"(s) : "cc");
    CHECK_EQ(r, -21);
    __asm__ volatile("imull $1000, %1, %0" : "=r"(r) : "m"(s) : "cc");
    CHECK_EQ(r, 7000);
    uint32_t f;
    __asm__ volatile("imull $0x40000000, %2, %0; pushfl; popl %1" : "=r"(r), "=r"(f) : "r"(4) : "cc");
    CHECK_EQ(r, 0);
    CHECK_EQ(f & (EFLAGS_CF | EFLAGS_OF), EFLAGS_CF | EFLAGS_OF);
    r = -6;
    __asm__ volatile("imull %1, %0" : "+r"(r) : "r"(-7) : "cc");
    CHECK_EQ(r, 42);

    uint32_t lo, hi;
    __asm__ volatile("mull %3" : "=a"(lo), "=d"(hi) : "a"(0xffffffffu), "r"(0xffffffffu) : "cc");
    CHECK_EQ(lo, 1);
    CHECK_EQ(hi, 0xfffffffe);
    __asm__ volatile("imull %3" : "=a"(lo), "=d"(hi) : "a"(-2), "r"(3) : "cc");
    CHECK_EQ(lo, (uint32_t)-6);
    CHECK_EQ(hi, 0xffffffff);
    uint32_t q, rem;
    __asm__ volatile("divl %4" : "=a"(q), "=d"(rem) : "a"(0x00000005u), "d"(0x00000001u), "r"(0x10u) : "cc");
    CHECK_EQ(q, 0x10000000);
    CHECK_EQ(rem, 5);
    __asm__ volatile("idivl %4" : "=a"(q), "=d"(rem) : "a"(-100), "d"(-1), "r"(7) : "cc");
    CHECK_EQ(q, (uint32_t)-14);
    CHECK_EQ(rem, (uint32_t)-2);
    uint32_t ax = 0x1234ffff; /* 8-bit: ax / r8 -> al, ah */
    __asm__ volatile("movw $1000, %%ax; movb $7, %%cl; divb %%cl" : "+a"(ax) : : "ecx", "cc");
    CHECK_EQ(ax, 0x12340000 | (1000 % 7) << 8 | (1000 / 7));
    __asm__ volatile("movw $-500, %%ax; movb $7, %%cl; idivb %%cl" : "+a"(ax) : : "ecx", "cc");
    CHECK_EQ(ax & 0xffff, ((uint32_t)(uint8_t)(-500 % 7) << 8) | (uint8_t)(-500 / 7));   /* -71 rem -3 */
    uint32_t dx = 0xaaaa0001;
    ax = 0xbbbb0002;
    __asm__ volatile("movw $3, %%cx; divw %%cx" : "+a"(ax), "+d"(dx) : : "ecx", "cc");  /* 0x10002 / 3 */
    CHECK_EQ(ax, 0xbbbb0000 | (0x10002 / 3));
    CHECK_EQ(dx, 0xaaaa0000 | (0x10002 % 3));
    ax = 200;
    __asm__ volatile("mulb %b1" : "+a"(ax) : "q"(3) : "cc");
    CHECK_EQ(ax & 0xffff, 600);

    /* cmpxchg */
    static volatile uint32_t mem = 5;
    uint32_t old = 5;
    uint8_t z;
    __asm__ volatile("lock cmpxchgl %3, %1; setz %2" : "+a"(old), "+m"(mem), "=q"(z) : "r"(9u) : "cc", "memory");
    CHECK_EQ(z, 1);
    CHECK_EQ(mem, 9);
    CHECK_EQ(old, 5);
    old = 5;
    __asm__ volatile("cmpxchgl %3, %1; setz %2" : "+a"(old), "+m"(mem), "=q"(z) : "r"(11u) : "cc", "memory");
    CHECK_EQ(z, 0);
    CHECK_EQ(mem, 9);
    CHECK_EQ(old, 9);

    /* xadd */
    uint32_t add = 3;
    __asm__ volatile("lock xaddl %0, %1" : "+r"(add), "+m"(mem) : : "cc", "memory");
    CHECK_EQ(add, 9);
    CHECK_EQ(mem, 12);
    uint32_t ra = 10, rb = 20;
    __asm__ volatile("xaddl %0, %1" : "+r"(ra), "+r"(rb) : : "cc");
    CHECK_EQ(ra, 20);
    CHECK_EQ(rb, 30);

    /* cmpxchg8b */
    static volatile uint64_t q64 = 0x1111111122222222ull;
    uint32_t elo = 0x22222222, ehi = 0x11111111;
    __asm__ volatile("lock cmpxchg8b %0; setz %3" : "+m"(q64), "+a"(elo), "+d"(ehi), "=q"(z)
                     : "b"(0x44444444u), "c"(0x33333333u) : "cc", "memory");
    CHECK_EQ(z, 1);
    CHECK_EQ((uint32_t)q64, 0x44444444);
    CHECK_EQ((uint32_t)(q64 >> 32), 0x33333333);
    elo = 0;
    ehi = 0;
    __asm__ volatile("cmpxchg8b %0; setz %3" : "+m"(q64), "+a"(elo), "+d"(ehi), "=q"(z)
                     : "b"(1u), "c"(2u) : "cc", "memory");
    CHECK_EQ(z, 0);
    CHECK_EQ(elo, 0x44444444);
    CHECK_EQ(ehi, 0x33333333);
    CHECK_EQ((uint32_t)q64, 0x44444444);

    /* lock-prefixed read-modify-write */
    static volatile uint32_t counter = 0;
    for (int i = 0; i < 100; i++)
        __asm__ volatile("lock addl $3, %0" : "+m"(counter) : : "cc", "memory");
    __asm__ volatile("lock incl %0; lock decl %0; lock decl %0" : "+m"(counter) : : "cc", "memory");
    __asm__ volatile("lock orl $0x10000, %0; lock andl $0x1ffff, %0; lock xorl $1, %0" : "+m"(counter) : : "cc", "memory");
    CHECK_EQ(counter, (299 | 0x10000) ^ 1);
    uint32_t xv = 0x55;
    __asm__ volatile("xchgl %0, %1" : "+r"(xv), "+m"(counter) : : "memory");   /* implicitly locked */
    CHECK_EQ(xv, (299 | 0x10000) ^ 1);
    CHECK_EQ(counter, 0x55);
    uint8_t cf;
    __asm__ volatile("lock btsl $7, %0; setc %1" : "+m"(counter), "=q"(cf) : : "cc", "memory");
    CHECK_EQ(cf, 0);
    CHECK_EQ(counter, 0xd5);

    /* sign extensions */
    uint32_t e = 0x1234ff80;
    __asm__ volatile("cbw" : "+a"(e));
    CHECK_EQ(e, 0x1234ff80);
    e = 0x12340080;
    __asm__ volatile("cbw" : "+a"(e));
    CHECK_EQ(e, 0x1234ff80);
    e = 0x12348000;
    __asm__ volatile("cwde" : "+a"(e));
    CHECK_EQ(e, 0xffff8000);
    uint32_t ed = 0x5555aaaa;
    e = 0x00008000;
    __asm__ volatile("cwd" : "+a"(e), "+d"(ed));
    CHECK_EQ(ed, 0x5555ffff);
    e = 0x80000000;
    __asm__ volatile("cdq" : "+a"(e), "=d"(ed));
    CHECK_EQ(ed, 0xffffffff);
    e = 0x7fffffff;
    __asm__ volatile("cdq" : "+a"(e), "=d"(ed));
    CHECK_EQ(ed, 0);

    /* 16-bit operand size */
    uint32_t w = 0x1234ffff;
    __asm__ volatile("addw $1, %w0; pushfl; popl %1" : "+r"(w), "=r"(f) : : "cc");
    CHECK_EQ(w, 0x12340000);
    CHECK_EQ(f & (EFLAGS_CF | EFLAGS_ZF), EFLAGS_CF | EFLAGS_ZF);
    w = 0xabcd7fff;
    __asm__ volatile("incw %w0; pushfl; popl %1" : "+r"(w), "=r"(f) : : "cc");
    CHECK_EQ(w, 0xabcd8000);
    CHECK_EQ(f & EFLAGS_OF, EFLAGS_OF);
    uint32_t esp0, esp1, popped = 0xffffffff, cx = 0xabcd2468;
    __asm__ volatile("movl %%esp, %0; pushw $0x1357; pushw %%cx; movl %%esp, %1; popw %w2; popw %%cx"
                     : "=&r"(esp0), "=&r"(esp1), "+r"(popped), "+c"(cx) : : "memory");
    CHECK_EQ(esp0 - esp1, 4);
    CHECK_EQ(popped, 0xffff2468);
    CHECK_EQ(cx, 0xabcd1357);
    static volatile uint16_t h = 0x00ff;
    __asm__ volatile("addw $0x0101, %0; shlw $4, %0" : "+m"(h) : : "cc", "memory");
    CHECK_EQ(h, 0x2000);
    uint32_t hb = 0x11223344, hbx = 0, hcx = 0;
    __asm__ volatile("xchgb %%ah, %%al; movb %%ah, %%bl; movb %%bl, %%bh; movw %%bx, %%cx"
                     : "+a"(hb), "+b"(hbx), "+c"(hcx));
    CHECK_EQ(hb, 0x11224433);
    CHECK_EQ(hcx, 0x4444);
}

/* --------------------------------------------------------------- strings */

static void test_strings(void)
{
    printf("-- string instructions\n");
    static uint8_t a[64], b[64];
    static uint32_t da[16], db[16];
    for (int i = 0; i < 64; i++)
        a[i] = (uint8_t)(i * 3 + 1);
    uint8_t *s = a, *d = b;
    uint32_t n = 64;
    __asm__ volatile("cld; rep movsb" : "+S"(s), "+D"(d), "+c"(n) : : "memory");
    CHECK_EQ(memcmp(a, b, 64), 0);
    CHECK_EQ(n, 0);
    CHECK_EQ(s - a, 64);
    CHECK_EQ(d - b, 64);
    for (int i = 0; i < 16; i++)
        da[i] = 0x01010101u * (uint32_t)i;
    uint32_t *sd = da, *dd = db;
    n = 16;
    __asm__ volatile("cld; rep movsl" : "+S"(sd), "+D"(dd), "+c"(n) : : "memory");
    CHECK_EQ(memcmp(da, db, sizeof da), 0);
    CHECK_EQ(dd - db, 16);
    /* rep with ecx = 0 does nothing */
    s = a;
    d = b;
    n = 0;
    b[0] = 0xee;
    __asm__ volatile("cld; rep movsb" : "+S"(s), "+D"(d), "+c"(n) : : "memory");
    CHECK_EQ(b[0], 0xee);
    CHECK(s == a && d == b);

    /* stos, forward and backward */
    d = b;
    n = 10;
    __asm__ volatile("cld; rep stosb" : "+D"(d), "+c"(n) : "a"(0x5a) : "memory");
    CHECK_EQ(b[0], 0x5a);
    CHECK_EQ(b[9], 0x5a);
    CHECK_EQ(b[10], a[10]);
    dd = db + 15;
    n = 4;
    __asm__ volatile("std; rep stosl; cld" : "+D"(dd), "+c"(n) : "a"(0xdeadbeef) : "memory");
    CHECK_EQ(db[15], 0xdeadbeef);
    CHECK_EQ(db[12], 0xdeadbeef);
    CHECK_EQ(db[11], 0x0b0b0b0b);
    CHECK(dd == db + 11);
    d = b + 63;
    n = 3;
    __asm__ volatile("std; rep stosb; cld" : "+D"(d), "+c"(n) : "a"(0x77) : "memory");
    CHECK_EQ(b[63], 0x77);
    CHECK_EQ(b[61], 0x77);
    CHECK_EQ(b[60], a[60]);
    CHECK(d == b + 60);
    /* backward rep movsb (overlapping move up) */
    for (int i = 0; i < 16; i++)
        b[i] = (uint8_t)i;
    s = b + 11;
    d = b + 15;
    n = 12;
    __asm__ volatile("std; rep movsb; cld" : "+S"(s), "+D"(d), "+c"(n) : : "memory");
    CHECK_EQ(b[15], 11);
    CHECK_EQ(b[4], 0);
    CHECK_EQ(b[3], 3);
    CHECK_EQ(read_eflags() & EFLAGS_DF, 0);

    /* repe cmpsb: stops after the first difference */
    static const char x[] = "hello, world", y[] = "hello, there";
    const char *p = x, *q = y;
    n = sizeof x;
    uint8_t z;
    __asm__ volatile("cld; repe cmpsb; setz %3" : "+S"(p), "+D"(q), "+c"(n), "=q"(z) : : "cc", "memory");
    CHECK_EQ(z, 0);
    CHECK_EQ(p - x, 8);           /* 'w' vs 't' at index 7, pointers one past */
    CHECK_EQ(n, sizeof x - 8);
    /* repne scasb: finds a byte */
    p = x;
    n = sizeof x;
    __asm__ volatile("cld; repne scasb; setz %2" : "+D"(p), "+c"(n), "=q"(z) : "a"(','), "m"(*(const char(*)[sizeof x])x) : "cc");
    CHECK_EQ(z, 1);
    CHECK_EQ(p - x, 6);
    CHECK_EQ(n, sizeof x - 6);
    /* strlen-style scan */
    p = x;
    n = 0xffffffff;
    __asm__ volatile("cld; repne scasb" : "+D"(p), "+c"(n) : "a"(0), "m"(*(const char(*)[sizeof x])x) : "cc");
    CHECK_EQ(~n - 1, 12);

    /* lodsb / lodsl / movsw / scasl / cmpsw without rep */
    p = x;
    uint32_t acc = 0xffffff00;
    __asm__ volatile("cld; lodsb; lodsb" : "+S"(p), "+a"(acc) : "m"(*(const char(*)[sizeof x])x));
    CHECK_EQ(acc, 0xffffff00 | 'e');
    CHECK_EQ(p - x, 2);
    static uint16_t w1[4] = { 0x1111, 0x2222, 0x3333, 0x4444 }, w2[4];
    uint16_t *ws = w1, *wd = w2;
    __asm__ volatile("cld; movsw; movsw" : "+S"(ws), "+D"(wd) : : "memory");
    CHECK_EQ(w2[1], 0x2222);
    CHECK_EQ(w2[2], 0);
    CHECK_EQ(wd - w2, 2);
    ws = w1 + 3;
    __asm__ volatile("std; lodsw; lodsw; cld" : "+S"(ws), "=a"(acc) : "m"(w1));
    CHECK_EQ(acc & 0xffff, 0x3333);
    CHECK(ws == w1 + 1);

    /* xlat */
    static const uint8_t table[16] = "0123456789abcdef";
    uint32_t xa = 0x1200000c;
    __asm__ volatile("xlat" : "+a"(xa) : "b"(table), "m"(table));
    CHECK_EQ(xa, 0x12000000 | 'c');
}

/* ---------------------------------------------------------- control flow */

static NOINLINE int fib(int n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }
static NOINLINE uint32_t ack(uint32_t m, uint32_t n)
{
    if (m == 0)
        return n + 1;
    if (n == 0)
        return ack(m - 1, 1);
    return ack(m - 1, ack(m, n - 1));
}

static NOINLINE int jump_table(int v)
{
    switch (v) {
    case 0: return 17;
    case 1: return 23;
    case 2: return 5;
    case 3: return 99;
    case 4: return 1000;
    case 5: return -4;
    case 6: return 64;
    case 7: return 7;
    case 8: return 12345;
    case 9: return 0;
    case 10: return 31;
    case 11: return -100;
    default: return -1;
    }
}

static NOINLINE __attribute__((stdcall)) int stdcall_sub(int a, int b) { return a - b; }   /* ret $8 */

static NOINLINE int f_add(int a, int b) { return a + b; }
static NOINLINE int f_mul(int a, int b) { return a * b; }
static NOINLINE int f_sub(int a, int b) { return a - b; }
static int (*const volatile ops[3])(int, int) = { f_add, f_mul, f_sub };

static void test_control(void)
{
    printf("-- jecxz loop recursion jump tables indirect calls ret imm\n");
    uint32_t r = 0;
    __asm__ volatile("movl $0, %%ecx; movl $1, %0; jecxz 1f; movl $2, %0; 1:" : "=r"(r) : : "ecx");
    CHECK_EQ(r, 1);
    __asm__ volatile("movl $5, %%ecx; movl $1, %0; jecxz 1f; movl $2, %0; 1:" : "=r"(r) : : "ecx");
    CHECK_EQ(r, 2);
    uint32_t c = 10;
    r = 0;
    __asm__ volatile("1: addl $3, %0; loop 1b" : "+r"(r), "+c"(c) : : "cc");
    CHECK_EQ(r, 30);
    CHECK_EQ(c, 0);
    /* loope: runs while ZF=1 and ecx != 0 */
    static const uint8_t zs[8] = { 0, 0, 0, 1, 0, 0, 0, 0 };
    const uint8_t *p = zs;
    c = 8;
    __asm__ volatile("1: cmpb $0, (%0); leal 1(%0), %0; loope 1b" : "+r"(p), "+c"(c) : "m"(zs) : "cc");
    CHECK_EQ(p - zs, 4);
    CHECK_EQ(c, 4);
    p = zs;
    c = 8;
    __asm__ volatile("1: cmpb $1, (%0); leal 1(%0), %0; loopne 1b" : "+r"(p), "+c"(c) : "m"(zs) : "cc");
    CHECK_EQ(p - zs, 4);
    CHECK_EQ(c, 4);
    /* loop with ecx = 0 runs 2^32 times: not tested; loop never jumps when it reaches 0 */

    CHECK_EQ(fib(15), 610);
    CHECK_EQ(ack(2, 3), 9);
    static const int want[13] = { 17, 23, 5, 99, 1000, -4, 64, 7, 12345, 0, 31, -100, -1 };
    uint32_t bad = 0;
    for (volatile int i = 0; i < 13; i++)
        bad += jump_table(i) != want[i];
    bad += jump_table(-7) != -1;
    CHECK_EQ(bad, 0);
    CHECK_EQ(stdcall_sub(50, 8), 42);
    uint32_t e0, e1;
    __asm__ volatile("movl %%esp, %0; pushl $3; pushl $10; call *%2; movl %%esp, %1"
                     : "=&r"(e0), "=&r"(e1) : "r"(stdcall_sub) : "eax", "ecx", "edx", "memory", "cc");
    CHECK_EQ(e0, e1);    /* the callee popped its arguments */

    int sum = 0;
    for (volatile int i = 0; i < 3; i++)
        sum = sum * 100 + ops[i](7, 3);
    CHECK_EQ(sum, 10 * 10000 + 21 * 100 + 4);
    /* call/jmp through a table and a register, in assembly */
    static void *jt[3];
    int res;
    __asm__ volatile("movl $1f, 0(%1); movl $2f, 4(%1); movl $3f, 8(%1);"
                     "movl $2, %%ecx; jmp *(%1,%%ecx,4);"
                     "1: movl $10, %0; jmp 4f;"
                     "2: movl $20, %0; jmp 4f;"
                     "3: movl $30, %0; 4:"
                     : "=r"(res) : "r"(jt) : "ecx", "memory");
    CHECK_EQ(res, 30);
    __asm__ volatile("movl $1f, %%edx; jmp *%%edx; movl $1, %0; jmp 2f; 1: movl $2, %0; 2:"
                     : "=r"(res) : : "edx");
    CHECK_EQ(res, 2);
    __asm__ volatile("movl %1, %%ecx; pushl $4; pushl $5; call *(%2,%%ecx,4); addl $8, %%esp"
                     : "=a"(res) : "r"(1), "r"(ops) : "ecx", "edx", "memory", "cc");
    CHECK_EQ(res, 20);
    __asm__ volatile("pushl $4; pushl $50; movl %1, %%edx; call *%%edx; addl $8, %%esp"
                     : "=a"(res) : "r"(f_sub) : "ecx", "edx", "memory", "cc");
    CHECK_EQ(res, 46);
}

/* ------------------------------------------------------------ x87, SSE2 */

static void test_fpu(void)
{
    printf("-- x87\n");
    write_cr0((read_cr0() & ~(CR0_EM | CR0_TS)) | CR0_MP | CR0_NE);
    uint16_t cw = 0, sw = 0xffff;
    __asm__ volatile("fninit; fnstcw %0; fnstsw %1" : "=m"(cw), "=m"(sw));
    CHECK_EQ(cw, 0x037f);
    CHECK_EQ(sw, 0);
    int32_t a = 1234, b = -234, r;
    __asm__ volatile("fildl %1; fildl %2; faddp; fistpl %0" : "=m"(r) : "m"(a), "m"(b));
    CHECK_EQ(r, 1000);
    __asm__ volatile("fildl %1; fildl %2; fmulp; fistpl %0" : "=m"(r) : "m"(a), "m"(b));
    CHECK_EQ(r, -288756);
    static const double two = 2.0, half = 0.5, thousand = 1000.0, five_halves = 2.5, seven_halves = 3.5;
    __asm__ volatile("fldl %1; fsqrt; fmull %2; fistpl %0" : "=m"(r) : "m"(two), "m"(thousand));
    CHECK_EQ(r, 1414);
    __asm__ volatile("fldpi; fmull %1; fistpl %0" : "=m"(r) : "m"(thousand));
    CHECK_EQ(r, 3142);
    __asm__ volatile("fldl %1; fistpl %0" : "=m"(r) : "m"(five_halves));   /* round to nearest even */
    CHECK_EQ(r, 2);
    __asm__ volatile("fldl %1; fistpl %0" : "=m"(r) : "m"(seven_halves));
    CHECK_EQ(r, 4);
    __asm__ volatile("fld1; fdivl %1; fchs; fistpl %0" : "=m"(r) : "m"(half));   /* -(1/0.5) */
    CHECK_EQ(r, -2);
    __asm__ volatile("fld1; fdivl %1; fchs; fabs; fistpl %0" : "=m"(r) : "m"(half));
    CHECK_EQ(r, 2);
    __asm__ volatile("fldl %1; fld1; fcompp; fnstsw %%ax; movw %%ax, %0" : "=m"(sw) : "m"(two) : "eax");
    CHECK_EQ(sw & 0x4500, 0x0100);   /* 1 < 2: C0 set, C2 C3 clear */
    /* C code that uses doubles (x87, no SSE) */
    volatile double x = 1.5, y = 2.25;
    double z = x * y + 0.125;
    CHECK_EQ((int32_t)(z * 1000.0), 3500);
    volatile int64_t big = 1ll << 40;
    double bd = (double)big;
    CHECK_EQ((uint32_t)(int32_t)(bd / 1099511627776.0), 1);
    __asm__ volatile("fnstsw %0" : "=m"(sw));
    CHECK_EQ(sw & 0x3800, 0);        /* stack top back to 0: every push popped */
}

static void test_sse2(void)
{
    uint32_t a, b, c, d;
    cpuid(1, 0, &a, &b, &c, &d);
    if (!(d & (1u << 26)) || !(d & (1u << 24))) {
        printf("-- SSE2: not in CPUID (edx=0x%08x), skipped\n", d);
        return;
    }
    printf("-- SSE2\n");
    write_cr0((read_cr0() & ~(CR0_EM | CR0_TS)) | CR0_MP);
    write_cr4(read_cr4() | 0x600);    /* OSFXSR | OSXMMEXCPT */
    static uint32_t x[4] __attribute__((aligned(16))) = { 1, 2, 3, 0xffffffff };
    static uint32_t y[5] = { 0, 10, 20, 30, 2 };    /* y + 1 is unaligned */
    static uint32_t out[4] __attribute__((aligned(16)));
    __asm__ volatile("movdqu %1, %%xmm0; movdqu %2, %%xmm1; paddd %%xmm1, %%xmm0; movdqu %%xmm0, %0"
                     : "=m"(out) : "m"(x), "m"(*(uint32_t(*)[4])(y + 1)));
    CHECK_EQ(out[0], 11);
    CHECK_EQ(out[1], 22);
    CHECK_EQ(out[2], 33);
    CHECK_EQ(out[3], 1);
    uint32_t lane;
    __asm__ volatile("movdqa %1, %%xmm2; pshufd $0x1b, %%xmm2, %%xmm3; movd %%xmm3, %0" : "=r"(lane) : "m"(x));
    CHECK_EQ(lane, 0xffffffff);
    __asm__ volatile("pxor %%xmm4, %%xmm4; movd %%xmm4, %0" : "=r"(lane));
    CHECK_EQ(lane, 0);
    static uint8_t fx[512] __attribute__((aligned(16)));
    __asm__ volatile("fxsave %0" : "=m"(fx));
    uint32_t mxcsr;
    memcpy(&mxcsr, fx + 24, 4);
    CHECK_EQ(mxcsr & 0xffff, 0x1f80);
    __asm__ volatile("fxrstor %0" : : "m"(fx));
}

int kmain(uint32_t magic, uint32_t mbi)
{
    (void)mbi;
    printf("legacy: 32-bit-only encodings and ordinary instructions\n");
    CHECK_EQ(magic, MULTIBOOT_BOOTLOADER_MAGIC);
    test_incdec_pushpop();
    test_bcd();
    test_misc_legacy();
    test_conditions();
    test_bits();
    test_arith();
    test_strings();
    test_control();
    test_fpu();
    test_sse2();
    return kit_finish();
}
