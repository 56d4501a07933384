/* Guest platform entry: multiboot v1 header, flat GDT, stack, bss clear,
 * bench_main(), then plat_exit(status). */
    .set MB_MAGIC, 0x1BADB002
    .set MB_FLAGS, 0x00000003        /* bit 0: page-align modules, bit 1: memory info */

    .section .multiboot, "a"
    .align 4
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)

    .text
    .globl _start
    .type _start, @function
_start:
    /* multiboot: eax = 0x2BADB002, ebx = info, protected mode, paging off,
     * CS/DS flat but the GDT is the loader's: install our own. */
    cli
    cld
    movl    $stack_top, %esp
    lgdt    gdt_desc
    ljmp    $0x08, $1f
1:  movw    $0x10, %ax
    movw    %ax, %ds
    movw    %ax, %es
    movw    %ax, %fs
    movw    %ax, %gs
    movw    %ax, %ss
    movl    $stack_top, %esp
    /* clear .bss (the loader should have, but do not rely on it) */
    movl    $__bss_start, %edi
    movl    $__bss_end, %ecx
    subl    %edi, %ecx
    xorl    %eax, %eax
    rep stosb
    xorl    %ebp, %ebp
    call    bench_main
    pushl   %eax
    call    plat_exit
2:  cli
    hlt
    jmp     2b
    .size _start, . - _start

    .section .rodata
    .align 8
gdt:
    .quad 0x0000000000000000         /* null */
    .quad 0x00CF9A000000FFFF         /* 0x08: code, base 0, limit 4 GiB, 32-bit */
    .quad 0x00CF92000000FFFF         /* 0x10: data, base 0, limit 4 GiB */
gdt_end:
    .align 4
gdt_desc:
    .word gdt_end - gdt - 1
    .long gdt

    /* stack outside .bss so the bss clear cannot touch it */
    .section .stack, "aw", @nobits
    .align 16
stack_bottom:
    .skip 65536
stack_top:

    .section .note.GNU-stack, "", @progbits
