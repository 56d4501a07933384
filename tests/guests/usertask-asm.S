/* usertask: interrupt/exception entry stubs, the common trap path, and the
 * switch to and from the CPL 3 user task (see usertask.c; the same as
 * pmode-asm.S).
 *
 * Every stub leaves the same frame (struct frame in usertask.c), from the
 * lowest address up:
 *   gs fs es ds | edi esi ebp esp' ebx edx ecx eax (pushal) | vector | error
 *   code (UT_NOERR for vectors without one) | eip cs eflags (CPU) |
 *   esp ss (CPU, only for an entry from CPL 3)
 * then calls trap_dispatch(frame). A non-zero return means "the user task
 * exited": the kernel stack saved by enter_user is restored and enter_user
 * returns to its caller. */

#define UT_NOERR 0xffffffff
#define KDATA 0x10
#define UCODE 0x1b
#define UDATA 0x23

    .text
    .code32

.macro STUB_NOERR name, vec
    .globl \name
    .type \name, @function
\name:
    pushl   $UT_NOERR
    pushl   $\vec
    jmp     isr_common
.endm

.macro STUB_ERR name, vec
    .globl \name
    .type \name, @function
\name:
    pushl   $\vec
    jmp     isr_common
.endm

    /* exceptions 0-19: the CPU pushes an error code for 8, 10-14, 17 */
    STUB_NOERR isr_0,  0
    STUB_NOERR isr_1,  1
    STUB_NOERR isr_2,  2
    STUB_NOERR isr_3,  3
    STUB_NOERR isr_4,  4
    STUB_NOERR isr_5,  5
    STUB_NOERR isr_6,  6
    STUB_NOERR isr_7,  7
    STUB_ERR   isr_8,  8
    STUB_NOERR isr_9,  9
    STUB_ERR   isr_10, 10
    STUB_ERR   isr_11, 11
    STUB_ERR   isr_12, 12
    STUB_ERR   isr_13, 13
    STUB_ERR   isr_14, 14
    STUB_NOERR isr_15, 15
    STUB_NOERR isr_16, 16
    STUB_ERR   isr_17, 17
    STUB_NOERR isr_18, 18
    STUB_NOERR isr_19, 19
    /* IRQs 0-15 of the remapped PIC pair */
    STUB_NOERR irq_0,  0x20
    STUB_NOERR irq_1,  0x21
    STUB_NOERR irq_2,  0x22
    STUB_NOERR irq_3,  0x23
    STUB_NOERR irq_4,  0x24
    STUB_NOERR irq_5,  0x25
    STUB_NOERR irq_6,  0x26
    STUB_NOERR irq_7,  0x27
    STUB_NOERR irq_8,  0x28
    STUB_NOERR irq_9,  0x29
    STUB_NOERR irq_10, 0x2a
    STUB_NOERR irq_11, 0x2b
    STUB_NOERR irq_12, 0x2c
    STUB_NOERR irq_13, 0x2d
    STUB_NOERR irq_14, 0x2e
    STUB_NOERR irq_15, 0x2f
    /* software interrupts */
    STUB_NOERR isr_0x40, 0x40           /* DPL 0 interrupt gate, used at CPL 0 */
    STUB_NOERR isr_0x80, 0x80           /* DPL 3 trap gate: system calls */
    STUB_NOERR isr_0x81, 0x81           /* DPL 0 interrupt gate: CPL 3 must get #GP */

    .section .rodata
    .p2align 2
    .globl usertask_exc_stubs
usertask_exc_stubs:
    .long isr_0, isr_1, isr_2, isr_3, isr_4, isr_5, isr_6, isr_7, isr_8, isr_9
    .long isr_10, isr_11, isr_12, isr_13, isr_14, isr_15, isr_16, isr_17, isr_18, isr_19
    .globl usertask_irq_stubs
usertask_irq_stubs:
    .long irq_0, irq_1, irq_2, irq_3, irq_4, irq_5, irq_6, irq_7
    .long irq_8, irq_9, irq_10, irq_11, irq_12, irq_13, irq_14, irq_15

    .text
isr_common:
    pushal
    pushl   %ds
    pushl   %es
    pushl   %fs
    pushl   %gs
    movl    $KDATA, %eax
    movw    %ax, %ds
    movw    %ax, %es
    movw    %ax, %fs
    movw    %ax, %gs
    cld
    pushl   %esp                        /* struct frame * */
    call    trap_dispatch
    addl    $4, %esp
    testl   %eax, %eax
    jnz     user_exit
    popl    %gs
    popl    %fs
    popl    %es
    popl    %ds
    popal
    addl    $8, %esp                    /* vector, error code */
    iret

/* uint32_t enter_user(uint32_t eip, uint32_t esp): runs the user task at
 * CPL 3 (CS 0x1b, SS/DS/ES/FS/GS 0x23, EFLAGS 0x202: IF=1, IOPL=0) from
 * eip with stack esp, through iret. Returns the task's exit code when it
 * makes system call 3, with the caller's EFLAGS (and callee-saved
 * registers) restored. */
    .globl enter_user
    .type enter_user, @function
enter_user:
    pushl   %ebp
    pushl   %ebx
    pushl   %esi
    pushl   %edi
    pushfl
    movl    %esp, usertask_kernel_esp
    movl    24(%esp), %eax              /* eip */
    movl    28(%esp), %ecx              /* esp */
    movl    $UDATA, %edx
    movw    %dx, %ds
    movw    %dx, %es
    movw    %dx, %fs
    movw    %dx, %gs
    pushl   $UDATA                      /* ss */
    pushl   %ecx                        /* esp */
    pushl   $0x202                      /* eflags: IF=1, IOPL=0 */
    pushl   $UCODE                      /* cs */
    pushl   %eax                        /* eip */
    iret

user_exit:
    /* DS/ES/FS/GS are already the kernel's (isr_common); SS is the TSS's ss0 */
    movl    usertask_kernel_esp, %esp
    movl    usertask_user_exit_code, %eax
    popfl
    popl    %edi
    popl    %esi
    popl    %ebx
    popl    %ebp
    ret
    .size enter_user, . - enter_user

/* The return address of every user task's entry function: passes the
 * function's return value (eax) to system call 3 ("exit"). Runs at CPL 3. */
    .globl user_return_stub
    .type user_return_stub, @function
user_return_stub:
    movl    %eax, %ebx
    movl    $3, %eax
    int     $0x80
1:  jmp     1b

    .section .bss
    .p2align 2
    .globl usertask_kernel_esp
usertask_kernel_esp:
    .skip 4

    .section .note.GNU-stack, "", @progbits
