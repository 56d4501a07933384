/* Native platform entry: static i386 Linux ELF, no libc. */
    .text
    .globl _start
    .type _start, @function
_start:
    xorl    %ebp, %ebp
    andl    $-16, %esp
    call    bench_main
    pushl   %eax
    call    plat_exit
1:  jmp     1b
    .size _start, . - _start

    .section .note.GNU-stack, "", @progbits
