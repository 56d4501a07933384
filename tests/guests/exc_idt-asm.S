/* exc_idt: the exception entry stubs (see exc_idt.c). */

    .text
    .code32

/* Vectors without a dedicated handler: report the vector and stop. */
.macro OTHER vec
    .globl exc_idt_other_\vec
exc_idt_other_\vec:
    pushl   $\vec
    call    exc_idt_unexpected          /* does not return */
.endm

    OTHER 0
    OTHER 1
    OTHER 2
    OTHER 3
    OTHER 4
    OTHER 5
    OTHER 7
    OTHER 9
    OTHER 10
    OTHER 11
    OTHER 12
    OTHER 14
    OTHER 15
    OTHER 16
    OTHER 17
    OTHER 18
    OTHER 19
    OTHER 32

    .section .rodata
    .p2align 2
    .globl exc_idt_other_stubs
exc_idt_other_stubs:                    /* (vector, stub) pairs, ended by 0xffffffff */
    .long 0, exc_idt_other_0, 1, exc_idt_other_1, 2, exc_idt_other_2
    .long 3, exc_idt_other_3, 4, exc_idt_other_4, 5, exc_idt_other_5
    .long 7, exc_idt_other_7, 9, exc_idt_other_9, 10, exc_idt_other_10
    .long 11, exc_idt_other_11, 12, exc_idt_other_12, 14, exc_idt_other_14
    .long 15, exc_idt_other_15, 16, exc_idt_other_16, 17, exc_idt_other_17
    .long 18, exc_idt_other_18, 19, exc_idt_other_19, 32, exc_idt_other_32
    .long 0xffffffff, 0

    .text
/* #UD (vector 6, no error code): note it, then int $0x41, a vector beyond
 * the IDT limit: #GP(0x41*8+2), whose gate (13) is not present: #NP while
 * delivering #GP = a double fault. Nothing after the int may run. */
    .globl exc_idt_ud_stub
exc_idt_ud_stub:
    pushal
    movl    %esp, %eax
    pushl   %eax                        /* pointer to pushal area; the CPU frame follows */
    call    exc_idt_ud_seen
    addl    $4, %esp
    popal
    .globl exc_idt_int41_site
exc_idt_int41_site:
    int     $0x41
    call    exc_idt_int41_returned      /* does not return */

/* #DF (vector 8, error code 0 pushed by the CPU). */
    .globl exc_idt_df_stub
exc_idt_df_stub:
    movl    %esp, %eax
    pushl   %eax                        /* -> error code, eip, cs, eflags */
    call    exc_idt_double_fault        /* does not return */

    .section .note.GNU-stack, "", @progbits
