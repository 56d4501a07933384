/* legacy: the parts that need every register (including %esp and %ebp).
 * Each function writes its observations into asm_out[] for legacy.c to check.
 * Encodings that mean something else in 64-bit mode are spelled as bytes. */

    .section .bss
    .p2align 4
    .globl asm_out
asm_out:
    .skip 4 * 64
saved_esp:
    .skip 4
    .globl fake_frame
fake_frame:
    .skip 64
    .globl fake_frame_top
fake_frame_top:
    .skip 16

    .text

/* void incdec_all(void): inc/dec 0x40-0x4f on every register.
 * asm_out[0..6]  = eax ecx edx ebx ebp esi edi after one inc
 * asm_out[7..13] = the same after two decs
 * asm_out[14] = esp before inc %esp, [15] after inc, [16] after dec
 * asm_out[17] = eflags after stc; inc 0xffffffff (eax in [18])
 * asm_out[19] = eflags after clc; inc 0x7fffffff
 * asm_out[20] = eflags after dec 0x80000000
 * asm_out[21] = eax after the ff /0 (inc) and ff /1 (dec) long forms */
    .globl incdec_all
incdec_all:
    pushl   %ebp
    pushl   %ebx
    pushl   %esi
    pushl   %edi
    movl    $0x10, %eax
    movl    $0x20, %ecx
    movl    $0x30, %edx
    movl    $0x40, %ebx
    movl    $0x50, %ebp
    movl    $0x60, %esi
    movl    $0x70, %edi
    .byte   0x40, 0x41, 0x42, 0x43, 0x45, 0x46, 0x47    /* inc eax ecx edx ebx ebp esi edi */
    movl    %eax, asm_out + 0
    movl    %ecx, asm_out + 4
    movl    %edx, asm_out + 8
    movl    %ebx, asm_out + 12
    movl    %ebp, asm_out + 16
    movl    %esi, asm_out + 20
    movl    %edi, asm_out + 24
    .byte   0x48, 0x49, 0x4a, 0x4b, 0x4d, 0x4e, 0x4f    /* dec eax ecx edx ebx ebp esi edi */
    .byte   0x48, 0x49, 0x4a, 0x4b, 0x4d, 0x4e, 0x4f
    movl    %eax, asm_out + 28
    movl    %ecx, asm_out + 32
    movl    %edx, asm_out + 36
    movl    %ebx, asm_out + 40
    movl    %ebp, asm_out + 44
    movl    %esi, asm_out + 48
    movl    %edi, asm_out + 52
    movl    %esp, asm_out + 56
    .byte   0x44                                        /* inc esp */
    movl    %esp, asm_out + 60
    .byte   0x4c                                        /* dec esp */
    movl    %esp, asm_out + 64

    movl    $0xffffffff, %eax
    stc
    .byte   0x40                                        /* inc eax: ZF=1, CF kept */
    pushfl
    popl    asm_out + 68
    movl    %eax, asm_out + 72
    movl    $0x7fffffff, %eax
    clc
    .byte   0x40                                        /* OF=1 SF=1 */
    pushfl
    popl    asm_out + 76
    movl    $0x80000000, %ecx
    .byte   0x49                                        /* dec ecx: OF=1 */
    pushfl
    popl    asm_out + 80
    movl    $100, %eax
    .byte   0xff, 0xc0, 0xff, 0xc0, 0xff, 0xc8          /* inc, inc, dec (ModRM forms) */
    movl    %eax, asm_out + 84

    popl    %edi
    popl    %esi
    popl    %ebx
    popl    %ebp
    ret

/* void pushpop_all(void): push r32 0x50-0x57, pop r32 0x58-0x5f.
 * asm_out[0..6]  = the stack words after pushing eax ecx edx ebx ebp esi edi (in push order)
 * asm_out[7..13] = eax ecx edx ebx ebp esi edi after popping known values
 * asm_out[14] = esp before push %esp, [15] = the value it pushed, [16] = esp after the pop
 * asm_out[17] = the value pop %esp loaded, [18] = what it was meant to load */
    .globl pushpop_all
pushpop_all:
    pushl   %ebp
    pushl   %ebx
    pushl   %esi
    pushl   %edi
    movl    $0xa0, %eax
    movl    $0xa1, %ecx
    movl    $0xa2, %edx
    movl    $0xa3, %ebx
    movl    $0xa5, %ebp
    movl    $0xa6, %esi
    movl    $0xa7, %edi
    .byte   0x50, 0x51, 0x52, 0x53, 0x55, 0x56, 0x57    /* push eax ecx edx ebx ebp esi edi */
    movl    24(%esp), %eax
    movl    %eax, asm_out + 0
    movl    20(%esp), %eax
    movl    %eax, asm_out + 4
    movl    16(%esp), %eax
    movl    %eax, asm_out + 8
    movl    12(%esp), %eax
    movl    %eax, asm_out + 12
    movl    8(%esp), %eax
    movl    %eax, asm_out + 16
    movl    4(%esp), %eax
    movl    %eax, asm_out + 20
    movl    0(%esp), %eax
    movl    %eax, asm_out + 24
    addl    $28, %esp

    pushl   $0xb7
    pushl   $0xb6
    pushl   $0xb5
    pushl   $0xb3
    pushl   $0xb2
    pushl   $0xb1
    pushl   $0xb0
    .byte   0x58, 0x59, 0x5a, 0x5b, 0x5d, 0x5e, 0x5f    /* pop eax ecx edx ebx ebp esi edi */
    movl    %eax, asm_out + 28
    movl    %ecx, asm_out + 32
    movl    %edx, asm_out + 36
    movl    %ebx, asm_out + 40
    movl    %ebp, asm_out + 44
    movl    %esi, asm_out + 48
    movl    %edi, asm_out + 52

    movl    %esp, asm_out + 56
    .byte   0x54                                        /* push esp: pushes the old value */
    popl    %eax
    movl    %eax, asm_out + 60
    movl    %esp, asm_out + 64

    movl    %esp, saved_esp
    leal    -64(%esp), %eax
    movl    %eax, asm_out + 72
    pushl   %eax
    .byte   0x5c                                        /* pop esp: esp = the popped value */
    movl    %esp, asm_out + 68
    movl    saved_esp, %esp

    popl    %edi
    popl    %esi
    popl    %ebx
    popl    %ebp
    ret

/* void pusha_test(void)
 * asm_out[0..7] = the 8 words pusha stored (lowest address first: edi esi ebp esp ebx edx ecx eax)
 * asm_out[8] = esp before pusha, [9] = esp after pusha, [10] = esp after popa
 * asm_out[11..17] = eax ecx edx ebx ebp esi edi after popa of modified words */
    .globl pusha_test
pusha_test:
    pushl   %ebp
    pushl   %ebx
    pushl   %esi
    pushl   %edi
    movl    $0xc0, %eax
    movl    $0xc1, %ecx
    movl    $0xc2, %edx
    movl    $0xc3, %ebx
    movl    $0xc5, %ebp
    movl    $0xc6, %esi
    movl    $0xc7, %edi
    movl    %esp, asm_out + 32
    .byte   0x60                                        /* pusha */
    movl    %esp, asm_out + 36
    movl    %esp, %esi
    movl    $asm_out, %edi
    movl    $8, %ecx
    cld
    rep movsl
    movl    $0xd0, 28(%esp)                             /* eax */
    movl    $0xd1, 24(%esp)                             /* ecx */
    movl    $0xd2, 20(%esp)                             /* edx */
    movl    $0xd3, 16(%esp)                             /* ebx */
    movl    $0x00000bad, 12(%esp)                       /* esp: ignored by popa */
    movl    $0xd5, 8(%esp)                              /* ebp */
    movl    $0xd6, 4(%esp)                              /* esi */
    movl    $0xd7, 0(%esp)                              /* edi */
    .byte   0x61                                        /* popa */
    movl    %esp, asm_out + 40
    movl    %eax, asm_out + 44
    movl    %ecx, asm_out + 48
    movl    %edx, asm_out + 52
    movl    %ebx, asm_out + 56
    movl    %ebp, asm_out + 60
    movl    %esi, asm_out + 64
    movl    %edi, asm_out + 68
    popl    %edi
    popl    %esi
    popl    %ebx
    popl    %ebp
    ret

/* void enter_test(void): enter with nesting levels 0, 1, 2, and leave.
 * asm_out[0] = E (esp before)
 * level 0: [1] esp [2] ebp [3] (%ebp)            after enter $16,$0;   [4] esp [5] ebp after leave
 * level 1: [6] esp [7] ebp [8] (%ebp) [9] -4(%ebp) after enter $8,$1; [10] esp [11] ebp after leave
 * level 2: [12] esp [13] ebp [14] (%ebp) [15] -4(%ebp) [16] -8(%ebp) after enter $4,$2; [17] esp [18] ebp after leave */
    .globl enter_test
enter_test:
    pushl   %ebp
    pushl   %ebx
    pushl   %esi
    pushl   %edi
    movl    $0xf00df00d, fake_frame_top - 4
    movl    $0xfeedf00d, fake_frame_top - 8
    movl    $fake_frame_top, %ebp
    movl    %esp, asm_out + 0

    enter   $16, $0
    movl    %esp, asm_out + 4
    movl    %ebp, asm_out + 8
    movl    (%ebp), %eax
    movl    %eax, asm_out + 12
    leave
    movl    %esp, asm_out + 16
    movl    %ebp, asm_out + 20

    enter   $8, $1
    movl    %esp, asm_out + 24
    movl    %ebp, asm_out + 28
    movl    (%ebp), %eax
    movl    %eax, asm_out + 32
    movl    -4(%ebp), %eax
    movl    %eax, asm_out + 36
    leave
    movl    %esp, asm_out + 40
    movl    %ebp, asm_out + 44

    enter   $4, $2
    movl    %esp, asm_out + 48
    movl    %ebp, asm_out + 52
    movl    (%ebp), %eax
    movl    %eax, asm_out + 56
    movl    -4(%ebp), %eax
    movl    %eax, asm_out + 60
    movl    -8(%ebp), %eax
    movl    %eax, asm_out + 64
    leave
    movl    %esp, asm_out + 68
    movl    %ebp, asm_out + 72

    popl    %edi
    popl    %esi
    popl    %ebx
    popl    %ebp
    ret

/* void esp_forms(void): memory operands relative to %esp.
 * [0] pushl 4(%esp) result (want 0xaaaa)  [1] pop (%esp) then pop (want 0xbbbb)
 * [2],[3] pop 4(%esp) then two pops (want 2, 3)  [4],[5] pushl (%esp) (want 5, 5)
 * [6] lea 8(%esp) - esp  [7] lea (%esp,%ecx,4) - esp with ecx=3  [8] lea -4(%esp,%ecx,2) - esp
 * [9] esp seen after xchg %eax,%esp (want 0x12345678)  [10] esp restored == [11] esp before
 * [12] call/pop gives the return address == [13] the label
 * [14] esp after pushw $imm - esp before (want -2), [15] the word pushed
 * [16] esp moved by push imm8 (want -4), [17] value (sign-extended -1)
 * [18] push mem / pop mem copied value */
    .globl esp_forms
esp_forms:
    pushl   %ebp
    pushl   %ebx
    pushl   %esi
    pushl   %edi

    pushl   $0xaaaa
    pushl   $0xbbbb
    pushl   4(%esp)                 /* address computed before the decrement: 0xaaaa */
    popl    %eax
    movl    %eax, asm_out + 0
    popl    (%esp)                  /* address computed after the increment: overwrites 0xaaaa */
    popl    %eax
    movl    %eax, asm_out + 4

    pushl   $1
    pushl   $2
    pushl   $3
    popl    4(%esp)                 /* pops 3, stores it where 1 was */
    popl    %eax
    popl    %ebx
    movl    %eax, asm_out + 8
    movl    %ebx, asm_out + 12

    pushl   $5
    pushl   (%esp)
    popl    %eax
    popl    %ebx
    movl    %eax, asm_out + 16
    movl    %ebx, asm_out + 20

    leal    8(%esp), %eax
    subl    %esp, %eax
    movl    %eax, asm_out + 24
    movl    $3, %ecx
    leal    (%esp,%ecx,4), %eax
    subl    %esp, %eax
    movl    %eax, asm_out + 28
    leal    -4(%esp,%ecx,2), %eax
    subl    %esp, %eax
    movl    %eax, asm_out + 32

    movl    %esp, asm_out + 44
    movl    $0x12345678, %eax
    xchgl   %eax, %esp
    movl    %esp, asm_out + 36      /* (no stack use while esp is bogus) */
    xchgl   %esp, %eax
    movl    %esp, asm_out + 40

    call    1f
1:  popl    %eax
    movl    %eax, asm_out + 48
    movl    $1b, asm_out + 52

    movl    %esp, %ebx
    pushw   $0x4321
    movl    %esp, %ecx
    subl    %ebx, %ecx
    movl    %ecx, asm_out + 56
    movzwl  (%esp), %eax
    movl    %eax, asm_out + 60
    addl    $2, %esp

    movl    %esp, %ebx
    .byte   0x6a, 0xff              /* push $-1 (imm8, sign-extended) */
    movl    %esp, %ecx
    subl    %ebx, %ecx
    movl    %ecx, asm_out + 64
    popl    %eax
    movl    %eax, asm_out + 68

    movl    $0x600dcafe, asm_out + 80
    pushl   asm_out + 80
    popl    asm_out + 72

    popl    %edi
    popl    %esi
    popl    %ebx
    popl    %ebp
    ret

    .section .note.GNU-stack, "", @progbits
