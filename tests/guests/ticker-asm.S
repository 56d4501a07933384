/* ticker's SSE rounds: void sse_rounds(uint32_t n, uint32_t mxcsr,
 * const uint32_t in[32], uint32_t out[4]) (cdecl). xmm0-3 and xmm7 are integer
 * accumulators, xmm4 and xmm6 float sums moved by xmm5 under the given MXCSR
 * (the rounding mode shows in the result); the caller's MXCSR is restored. */
        .text
        .globl sse_rounds
sse_rounds:
        pushl %ebx
        subl $8, %esp
        stmxcsr (%esp)                  /* caller's MXCSR */
        movl 16(%esp), %ecx             /* n */
        ldmxcsr 20(%esp)                /* mxcsr */
        movl 24(%esp), %eax             /* in */
        movl 28(%esp), %ebx             /* out */
        movdqa 0(%eax), %xmm0
        movdqa 16(%eax), %xmm1
        movdqa 32(%eax), %xmm2
        movdqa 48(%eax), %xmm3
        movdqa 64(%eax), %xmm4
        movdqa 80(%eax), %xmm5
        movdqa 96(%eax), %xmm6
        movdqa 112(%eax), %xmm7
1:      paddd %xmm1, %xmm0
        pxor %xmm0, %xmm2
        pshufd $0x39, %xmm2, %xmm2
        paddd %xmm2, %xmm3
        addps %xmm5, %xmm4
        subps %xmm5, %xmm6
        paddd %xmm3, %xmm7
        decl %ecx
        jnz 1b
        pxor %xmm3, %xmm0
        pxor %xmm4, %xmm0
        pxor %xmm6, %xmm0
        pxor %xmm7, %xmm0
        movdqa %xmm0, (%ebx)
        ldmxcsr (%esp)
        addl $8, %esp
        popl %ebx
        ret
