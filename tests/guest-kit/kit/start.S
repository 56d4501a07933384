/* bt86 guest kit: multiboot v1 entry.
 *
 * On entry (multiboot v1): EAX = 0x2BADB002, EBX = physical address of the
 * multiboot info, protected mode, paging off, CS/DS/ES/FS/GS/SS flat but with
 * loader-chosen selectors, ESP undefined, IF = 0.
 *
 * _start: sets up a 16 KiB stack, EFLAGS = 0x2 (IF=0, DF=0, IOPL=0), loads the
 * kit's own GDT (0x00 null, 0x08 flat ring-0 code, 0x10 flat ring-0 data),
 * reloads CS with a far jump and DS/ES/FS/GS/SS with 0x10, zeroes .bss and
 * calls kmain(magic, mbi). If kmain returns, its return value is written
 * (32 bits) to the debug-exit port 0xf4, then the CPU halts.
 */

#define MB_HEADER_MAGIC 0x1BADB002
#define MB_HEADER_FLAGS 0x00000003      /* bit 0: page-align modules, bit 1: memory info */

#define KIT_CODE_SEL 0x08
#define KIT_DATA_SEL 0x10
#define KIT_STACK_SIZE 16384

    .section .multiboot, "a"
    .p2align 2
    .globl kit_multiboot_header
kit_multiboot_header:
    .long MB_HEADER_MAGIC
    .long MB_HEADER_FLAGS
    .long -(MB_HEADER_MAGIC + MB_HEADER_FLAGS)

    .section .text.entry, "ax"
    .code32
    .globl _start
    .type _start, @function
_start:
    cli
    movl    %eax, %esi                  /* multiboot magic */
    movl    %ebx, %edi                  /* multiboot info */
    movl    $kit_stack_top, %esp
    pushl   $0x2
    popfl                               /* EFLAGS = 0x2 */

    lgdt    kit_gdt_desc
    ljmp    $KIT_CODE_SEL, $1f
1:  movw    $KIT_DATA_SEL, %ax
    movw    %ax, %ds
    movw    %ax, %es
    movw    %ax, %fs
    movw    %ax, %gs
    movw    %ax, %ss
    movl    $kit_stack_top, %esp

    /* zero .bss (the stack is in .bss, nothing live on it yet) */
    movl    %edi, %ebx
    movl    $__bss_start, %edi
    movl    $__bss_end, %ecx
    subl    %edi, %ecx
    shrl    $2, %ecx
    xorl    %eax, %eax
    rep stosl

    xorl    %ebp, %ebp
    pushl   %ebx                        /* mbi */
    pushl   %esi                        /* magic */
    call    kmain
    addl    $8, %esp

    .globl kit_exit_with_eax
kit_exit_with_eax:
    movw    $0xf4, %dx
    outl    %eax, %dx
2:  cli
    hlt
    jmp     2b
    .size _start, . - _start

    .section .data
    .p2align 3
    /* Descriptors are stored with the accessed bit already set, so that LAR
     * reads the same value whether or not the CPU has written it back. */
    .globl kit_gdt
kit_gdt:
    .quad 0x0000000000000000            /* 0x00 null */
    .quad 0x00cf9b000000ffff            /* 0x08 code: base 0, limit 4 GiB, 32-bit, DPL 0, execute/read, accessed */
    .quad 0x00cf93000000ffff            /* 0x10 data: base 0, limit 4 GiB, 32-bit, DPL 0, read/write, accessed */
    .globl kit_gdt_end
kit_gdt_end:

    .p2align 2
    .word 0                             /* pad so the base is 4-aligned */
    .globl kit_gdt_desc
kit_gdt_desc:
    .word kit_gdt_end - kit_gdt - 1     /* limit 0x17 */
    .long kit_gdt

    .section .bss
    .p2align 4
    .globl kit_stack_bottom
kit_stack_bottom:
    .skip KIT_STACK_SIZE
    .globl kit_stack_top
kit_stack_top:

    .section .note.GNU-stack, "", @progbits
