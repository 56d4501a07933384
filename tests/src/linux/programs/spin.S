/* A Linux i386 program that computes: N rounds of xorshift32 (N = argv[1] in
 * decimal, else 10^9) summed, printed as 8 hex digits; no system call in the
 * loop; `spin N reload` then reloads %ds/%es with 0x7b (see below). The same binary runs natively on an x86-64 host as an i386 process.
 * Built with `gcc -m32 -c` and `ld -m elf_i386`. */
        .globl _start
        .text
_start:
        mov 8(%esp), %esi          /* argv[1] or NULL */
        mov 12(%esp), %ebp         /* argv[2] (any: reload %ds) or NULL */
        test %esi, %esi
        jnz 0f
        xor %ebp, %ebp
0:
        mov $1000000000, %ecx
        test %esi, %esi
        jz 2f
        xor %ecx, %ecx
1:      movzbl (%esi), %eax
        inc %esi
        sub $'0', %eax
        jb 2f
        cmp $9, %eax
        ja 2f
        imul $10, %ecx, %ecx
        add %eax, %ecx
        jmp 1b
2:      mov $0x12345678, %eax
        xor %edx, %edx
        test %ecx, %ecx
        jz 4f
3:      mov %eax, %ebx
        shl $13, %ebx
        xor %ebx, %eax
        mov %eax, %ebx
        shr $17, %ebx
        xor %ebx, %eax
        mov %eax, %ebx
        shl $5, %ebx
        xor %ebx, %eax
        add %eax, %edx
        dec %ecx
        jnz 3b
4:      /* With argv[2]: reload %ds and %es with Linux i386's user data selector
         * 0x7b: nothing changes on hardware; run directly, the host loads its own
         * 0x7b (the CPUNODE segment, a limit of a few bytes), the next access
         * through %ds traps and bt86 gives the load the guest's meaning (under
         * auto, the process then runs translated: direct execution was not exact
         * there). Not for native runs on an x86-64 host, where it would fault. */
        test %ebp, %ebp
        jz 6f
        mov $0x7b, %eax
        mov %eax, %ds
        mov %eax, %es
6:      sub $12, %esp              /* edx as 8 hex digits and a newline */
        mov %esp, %edi
        mov $8, %ecx
5:      rol $4, %edx
        mov %edx, %eax
        and $15, %eax
        movb hex(%eax), %al
        movb %al, (%edi)
        inc %edi
        dec %ecx
        jnz 5b
        movb $10, (%edi)
        mov $4, %eax               /* write(1, buf, 9) */
        mov $1, %ebx
        mov %esp, %ecx
        mov $9, %edx
        int $0x80
        mov $1, %eax               /* exit(0) */
        xor %ebx, %ebx
        int $0x80
hex:    .ascii "0123456789abcdef"
