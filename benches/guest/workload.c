/* bt86 CPU-bound benchmark workload, portable freestanding C.
 *
 * The same object file is linked into a static i386 Linux program (native
 * baseline) and into a multiboot kernel (run under bt86 / QEMU).  Everything here
 * must be deterministic and free of undefined behaviour so both produce the same
 * checksum.  Components:
 *   - branchy array sums
 *   - a sieve of Eratosthenes
 *   - an int matrix multiply
 *   - memcpy-like copy loops (forward, backward, bytewise, strided)
 *   - recursion: fib() and a recursive quicksort of a pseudo-random array
 *   - a bytecode interpreter whose switch compiles to a jump table (jmp *table(,%reg,4))
 */
#include "bench.h"

#ifndef BENCH_ROUNDS
#define BENCH_ROUNDS 25
#endif

#define NOINLINE __attribute__((noinline))

/* --------------------------------------------------------------------------- */
/* gcc may emit calls to memset/memcpy for struct copies or recognised loops even
 * with -ffreestanding; provide them, compiled so they do not call themselves. */
__attribute__((optimize("no-tree-loop-distribute-patterns")))
void *memset(void *d, int c, unsigned long n)
{
    u8 *p = d;
    while (n--)
        *p++ = (u8)c;
    return d;
}

__attribute__((optimize("no-tree-loop-distribute-patterns")))
void *memcpy(void *d, const void *s, unsigned long n)
{
    u8 *p = d;
    const u8 *q = s;
    while (n--)
        *p++ = *q++;
    return d;
}

/* --------------------------------------------------------------------------- */
static u32 rng_state;

static inline u32 rng(void)
{
    /* xorshift32 */
    u32 x = rng_state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    rng_state = x;
    return x;
}

static inline u32 mix(u32 h, u32 v)
{
    h ^= v;
    h *= 0x01000193u;            /* FNV prime */
    return (h << 7) | (h >> 25);
}

/* --------------------------------------------------------------------------- */
#define ARR_N 20000
static u32 arr[ARR_N];

NOINLINE static void fill_random(u32 *a, u32 n)
{
    for (u32 i = 0; i < n; i++)
        a[i] = rng();
}

NOINLINE static u32 array_sums(const u32 *a, u32 n)
{
    u32 even = 0, odd = 0, big = 0, cnt = 0;
    for (u32 i = 0; i < n; i++) {
        u32 x = a[i];
        if (x & 1)
            odd += x;
        else
            even ^= x >> 3;
        if (x > 0xc0000000u) {
            big += x >> 16;
            cnt++;
        } else if ((x & 0xff) < 0x10) {
            cnt += 3;
        }
    }
    return mix(mix(mix(even, odd), big), cnt);
}

/* --------------------------------------------------------------------------- */
#define SIEVE_N 200000
static u8 sieve_buf[SIEVE_N];

NOINLINE static u32 sieve(u32 n)
{
    u32 count = 0, sum = 0;
    for (u32 i = 0; i < n; i++)
        sieve_buf[i] = 1;
    sieve_buf[0] = sieve_buf[1] = 0;
    for (u32 i = 2; i * i < n; i++) {
        if (!sieve_buf[i])
            continue;
        for (u32 j = i * i; j < n; j += i)
            sieve_buf[j] = 0;
    }
    for (u32 i = 0; i < n; i++) {
        if (sieve_buf[i]) {
            count++;
            sum += i;
        }
    }
    return mix(count, sum);
}

/* --------------------------------------------------------------------------- */
#define MAT_N 64
static i32 ma[MAT_N][MAT_N], mb[MAT_N][MAT_N], mc[MAT_N][MAT_N];

NOINLINE static u32 matmul(u32 seed)
{
    for (u32 i = 0; i < MAT_N; i++)
        for (u32 j = 0; j < MAT_N; j++) {
            ma[i][j] = (i32)((i * 7 + j * 3 + seed) % 19) - 9;
            mb[i][j] = (i32)((i * 5 + j * 11 + seed) % 23) - 11;
        }
    for (u32 i = 0; i < MAT_N; i++)
        for (u32 j = 0; j < MAT_N; j++) {
            i32 s = 0;
            for (u32 k = 0; k < MAT_N; k++)
                s += ma[i][k] * mb[k][j];
            mc[i][j] = s;
        }
    u32 h = 0;
    for (u32 i = 0; i < MAT_N; i++)
        for (u32 j = 0; j < MAT_N; j++)
            h = mix(h, (u32)mc[i][j]);
    return h;
}

/* --------------------------------------------------------------------------- */
#define COPY_N 16384
static u32 csrc[COPY_N], cdst[COPY_N];

NOINLINE static void copy_fwd(u32 *d, const u32 *s, u32 n)
{
    /* memcpy-like word copy, unrolled by hand the way a libc would */
    while (n >= 4) {
        u32 a = s[0], b = s[1], c = s[2], e = s[3];
        d[0] = a; d[1] = b; d[2] = c; d[3] = e;
        d += 4; s += 4; n -= 4;
    }
    while (n--)
        *d++ = *s++;
}

NOINLINE static void copy_bwd(u32 *d, const u32 *s, u32 n)
{
    /* memmove-like backward copy */
    while (n) {
        n--;
        d[n] = s[n] ^ n;
    }
}

NOINLINE static void copy_bytes(u8 *d, const u8 *s, u32 n)
{
    for (u32 i = 0; i < n; i++)
        d[i] = (u8)(s[i] + (u8)i);
}

NOINLINE static u32 copies(u32 seed)
{
    for (u32 i = 0; i < COPY_N; i++)
        csrc[i] = i * 2654435761u + seed;
    u32 h = 0;
    for (u32 rep = 0; rep < 4; rep++) {
        copy_fwd(cdst, csrc, COPY_N - rep);
        copy_bwd(csrc, cdst, COPY_N);
        copy_bytes((u8 *)cdst + rep, (const u8 *)csrc, COPY_N * 4 - 4);
        h = mix(h, cdst[rep * 1000 + 17]);
    }
    /* strided gather */
    for (u32 i = 0; i < COPY_N; i += 7)
        h = mix(h, cdst[(i * 13) % COPY_N]);
    return h;
}

/* --------------------------------------------------------------------------- */
NOINLINE static u32 fib(u32 n)
{
    if (n < 2)
        return n;
    return fib(n - 1) + fib(n - 2);
}

NOINLINE static void quicksort(u32 *a, i32 lo, i32 hi)
{
    while (lo < hi) {
        u32 pivot = a[lo + (hi - lo) / 2];
        i32 i = lo - 1, j = hi + 1;
        for (;;) {
            do i++; while (a[i] < pivot);
            do j--; while (a[j] > pivot);
            if (i >= j)
                break;
            u32 t = a[i]; a[i] = a[j]; a[j] = t;
        }
        /* recurse into both halves (no tail-call trick on purpose, keep it recursive) */
        quicksort(a, lo, j);
        lo = j + 1;
    }
}

NOINLINE static u32 sort_check(u32 *a, u32 n)
{
    u32 h = 0, bad = 0;
    for (u32 i = 0; i + 1 < n; i++)
        bad += a[i] > a[i + 1];
    for (u32 i = 0; i < n; i += 97)
        h = mix(h, a[i]);
    return mix(h, bad);
}

/* --------------------------------------------------------------------------- */
/* A small register-machine bytecode interpreter.  Instruction word:
 *   op | a << 8 | b << 16 | c << 24    (registers a, b, c; or a + 16-bit imm in b,c) */
enum {
    OP_HALT, OP_LI, OP_MOV, OP_ADD, OP_SUB, OP_MUL, OP_XOR, OP_OR, OP_AND,
    OP_SHLI, OP_SHRI, OP_ADDI, OP_BLTI, OP_JNZ, OP_JMP, OP_LD, OP_ST, OP_NOP,
};

#define I3(op, a, b, c) ((u32)(op) | (u32)(a) << 8 | (u32)(b) << 16 | (u32)(c) << 24)
#define I2(op, a, imm)  ((u32)(op) | (u32)(a) << 8 | ((u32)(imm) & 0xffff) << 16)

static u32 vm_mem[256];

NOINLINE static u32 vm_run(const u32 *code, u32 *r)
{
    u32 pc = 0;
    for (;;) {
        u32 insn = code[pc++];
        u32 a = (insn >> 8) & 15, b = (insn >> 16) & 15, c = insn >> 24;
        u32 imm = insn >> 16;
        switch (insn & 0xff) {
        case OP_HALT: return r[0];
        case OP_LI:   r[a] = imm; break;
        case OP_MOV:  r[a] = r[b]; break;
        case OP_ADD:  r[a] = r[b] + r[c & 15]; break;
        case OP_SUB:  r[a] = r[b] - r[c & 15]; break;
        case OP_MUL:  r[a] = r[b] * r[c & 15]; break;
        case OP_XOR:  r[a] = r[b] ^ r[c & 15]; break;
        case OP_OR:   r[a] = r[b] | r[c & 15]; break;
        case OP_AND:  r[a] = r[b] & r[c & 15]; break;
        case OP_SHLI: r[a] = r[b] << (c & 31); break;
        case OP_SHRI: r[a] = r[b] >> (c & 31); break;
        case OP_ADDI: r[a] += (u32)(i32)(short)imm; break;
        case OP_BLTI: if (r[a] < (b | (u32)(c & 0x0f) << 4)) pc += c >> 4; break;
        case OP_JNZ:  if (r[a]) pc = imm; break;
        case OP_JMP:  pc = imm; break;
        case OP_LD:   r[a] = vm_mem[r[b] & 255]; break;
        case OP_ST:   vm_mem[r[b] & 255] = r[a]; break;
        case OP_NOP:  break;
        default:      return 0xdeadbeefu;
        }
    }
}

/* r0 = result, r1 = outer counter, r2 = hash, r3..r7 temps, r8 = const 0x9e37 */
static const u32 vm_prog[] = {
    /*  0 */ I2(OP_LI, 2, 0x1234),
    /*  1 */ I2(OP_LI, 8, 0x9e37),
    /*  2 */ I2(OP_LI, 0, 0),
    /* loop: */
    /*  3 */ I3(OP_MUL, 3, 1, 8),
    /*  4 */ I3(OP_ADD, 2, 2, 3),
    /*  5 */ I3(OP_SHLI, 4, 2, 5),
    /*  6 */ I3(OP_SHRI, 5, 2, 27),
    /*  7 */ I3(OP_OR, 2, 4, 5),          /* rotate left 5 */
    /*  8 */ I3(OP_XOR, 0, 0, 2),
    /*  9 */ I3(OP_ST, 0, 1, 0),          /* vm_mem[r1 & 255] = r0 */
    /* 10 */ I3(OP_SHRI, 6, 2, 3),
    /* 11 */ I3(OP_LD, 7, 6, 0),          /* r7 = vm_mem[r6 & 255] */
    /* 12 */ I3(OP_ADD, 0, 0, 7),
    /* 13 */ I3(OP_AND, 6, 2, 8),
    /* 14 */ I3(OP_SHRI, 6, 6, 12),       /* r6 in 0..9 */
    /* 15 */ I3(OP_BLTI, 6, 4, 0x20),     /* if r6 < 4: skip 2 */
    /* 16 */ I3(OP_SUB, 0, 0, 6),
    /* 17 */ I2(OP_ADDI, 0, -77),
    /* 18 */ I3(OP_NOP, 0, 0, 0),
    /* 19 */ I2(OP_ADDI, 1, -1),
    /* 20 */ I2(OP_JNZ, 1, 3),
    /* 21 */ I3(OP_MOV, 3, 0, 0),
    /* 22 */ I3(OP_XOR, 0, 3, 2),
    /* 23 */ I3(OP_HALT, 0, 0, 0),
};

NOINLINE static u32 interp(u32 iters, u32 seed)
{
    u32 r[16];
    for (u32 i = 0; i < 16; i++)
        r[i] = 0;
    for (u32 i = 0; i < 256; i++)
        vm_mem[i] = i * seed;
    r[1] = iters;
    return vm_run(vm_prog, r);
}

/* --------------------------------------------------------------------------- */
u32 workload(u32 rounds)
{
    u32 h = 0x811c9dc5u;
    for (u32 round = 0; round < rounds; round++) {
        rng_state = 0x2545f491u + round * 0x9e3779b9u;
        for (u32 k = 0; k < 8; k++) {
            fill_random(arr, ARR_N);
            h = mix(h, array_sums(arr, ARR_N));
            quicksort(arr, 0, ARR_N - 1);
            h = mix(h, sort_check(arr, ARR_N));
        }
        for (u32 k = 0; k < 12; k++)
            h = mix(h, sieve(SIEVE_N));
        for (u32 k = 0; k < 24; k++)
            h = mix(h, matmul(round * 32 + k));
        for (u32 k = 0; k < 30; k++)
            h = mix(h, copies(round + k));
        for (u32 k = 0; k < 4; k++)
            h = mix(h, fib(27 + ((round + k) & 1)));
        h = mix(h, interp(300000, round + 3));
    }
    return h;
}

/* --------------------------------------------------------------------------- */
static inline u64 rdtsc(void)
{
    u32 lo, hi;
    __asm__ __volatile__("rdtsc" : "=a"(lo), "=d"(hi) :: "memory");
    return (u64)hi << 32 | lo;
}

/* u64 to decimal without 64-bit division (no libgcc): subtract powers of ten. */
static char *put_u64(char *p, u64 v)
{
    static const u64 pow10[] = {
        10000000000000000000ull, 1000000000000000000ull, 100000000000000000ull,
        10000000000000000ull, 1000000000000000ull, 100000000000000ull,
        10000000000000ull, 1000000000000ull, 100000000000ull, 10000000000ull,
        1000000000ull, 100000000ull, 10000000ull, 1000000ull, 100000ull,
        10000ull, 1000ull, 100ull, 10ull, 1ull,
    };
    int started = 0;
    for (u32 i = 0; i < sizeof(pow10) / sizeof(pow10[0]); i++) {
        char d = '0';
        while (v >= pow10[i]) {
            v -= pow10[i];
            d++;
        }
        if (d != '0' || started || i + 1 == sizeof(pow10) / sizeof(pow10[0])) {
            *p++ = d;
            started = 1;
        }
    }
    return p;
}

static char *put_str(char *p, const char *s)
{
    while (*s)
        *p++ = *s++;
    return p;
}

static char *put_hex32(char *p, u32 v)
{
    for (int sh = 28; sh >= 0; sh -= 4)
        *p++ = "0123456789abcdef"[(v >> sh) & 15];
    return p;
}

int bench_main(void)
{
    char line[96];
    u64 t0 = rdtsc();
    u32 sum = workload(BENCH_ROUNDS);
    u64 t1 = rdtsc();
    char *p = put_str(line, "bt86-bench cycles=");
    p = put_u64(p, t1 - t0);
    p = put_str(p, " checksum=");
    p = put_hex32(p, sum);
    *p++ = '\n';
    *p = 0;
    plat_puts(line);
    return 0;
}
