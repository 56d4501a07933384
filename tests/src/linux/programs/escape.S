/* A Linux i386 program whose user code escapes to the host: a far jump to
 * selector 0x33 (on an x86-64 host, Linux's 64-bit user code segment; in an i386
 * guest, a TLS slot that is no code segment, so real hardware raises #GP), then
 * x86-64 system calls: mkdir(argv[1]) and a write. Run directly by bt86, neither
 * may reach the host: the guest kernel must get a fault instead (the process dies
 * of SIGSEGV) and carry on. Built with `gcc -m32 -c` and `ld -m elf_i386`. */
        .globl _start
        .text
_start:
        mov 8(%esp), %esi          /* argv[1]: the host directory to make */
        mov $4, %eax               /* write(1, msg, len) */
        mov $1, %ebx
        mov $msg, %ecx
        mov $msglen, %edx
        int $0x80
        ljmp $0x33, $long
        .code64
long:
        mov %esi, %edi             /* mkdir(argv[1], 0755) */
        mov $0755, %esi
        mov $83, %eax
        syscall
        mov $1, %edi               /* write(1, won, len) */
        mov $won, %esi
        mov $wonlen, %edx
        mov $1, %eax
        syscall
        mov $42, %edi              /* exit(42) */
        mov $60, %eax
        syscall
        jmp .
        .data
msg:    .ascii "escape: far jump to 0x33\n"
        msglen = . - msg
won:    .ascii "escape: ESCAPED, host system calls ran\n"
        wonlen = . - won
