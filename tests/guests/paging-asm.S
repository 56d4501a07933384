/* paging: exception entry stubs, the common trap path, the switch to and
 * from CPL 3, and the user task's code page (see paging.c).
 *
 * Every stub leaves the same frame (struct frame in paging.c), from the
 * lowest address up:
 *   gs fs es ds | edi esi ebp esp' ebx edx ecx eax (pushal) | vector | error
 *   code (PG_NOERR for vectors without one) | eip cs eflags (CPU) |
 *   esp ss (CPU, only for an entry from CPL 3)
 * then calls trap_dispatch(frame). A non-zero return means "the user task
 * exited": the kernel stack saved by enter_user is restored and enter_user
 * returns to its caller. */

#define PG_NOERR 0xffffffff
#define KDATA 0x10
#define UCODE 0x1b
#define UDATA 0x23

/* linear addresses of the user task's pages (see paging.c) */
#define U_RW      0x60000000    /* user, read/write */
#define U_SUP     0x60001000    /* supervisor only */
#define U_RO      0x60002000    /* user, read-only */
#define U_NP      0x60003000    /* not present */
#define U_PDE_SUP 0x64000000    /* PTE user, PDE supervisor */
#define U_PDE_RO  0x64400000    /* PTE user r/w, PDE user read-only */

    .text
    .code32

.macro STUB_NOERR name, vec
    .globl \name
    .type \name, @function
\name:
    pushl   $PG_NOERR
    pushl   $\vec
    jmp     pg_isr_common
.endm

.macro STUB_ERR name, vec
    .globl \name
    .type \name, @function
\name:
    pushl   $\vec
    jmp     pg_isr_common
.endm

    /* exceptions 0-19: the CPU pushes an error code for 8, 10-14, 17 */
    STUB_NOERR pg_isr_0,  0
    STUB_NOERR pg_isr_1,  1
    STUB_NOERR pg_isr_2,  2
    STUB_NOERR pg_isr_3,  3
    STUB_NOERR pg_isr_4,  4
    STUB_NOERR pg_isr_5,  5
    STUB_NOERR pg_isr_6,  6
    STUB_NOERR pg_isr_7,  7
    STUB_ERR   pg_isr_8,  8
    STUB_NOERR pg_isr_9,  9
    STUB_ERR   pg_isr_10, 10
    STUB_ERR   pg_isr_11, 11
    STUB_ERR   pg_isr_12, 12
    STUB_ERR   pg_isr_13, 13
    STUB_ERR   pg_isr_14, 14
    STUB_NOERR pg_isr_15, 15
    STUB_NOERR pg_isr_16, 16
    STUB_ERR   pg_isr_17, 17
    STUB_NOERR pg_isr_18, 18
    STUB_NOERR pg_isr_19, 19
    STUB_NOERR pg_isr_0x80, 0x80        /* DPL 3 trap gate: system calls */

    .section .rodata
    .p2align 2
    .globl pg_exc_stubs
pg_exc_stubs:
    .long pg_isr_0, pg_isr_1, pg_isr_2, pg_isr_3, pg_isr_4, pg_isr_5, pg_isr_6
    .long pg_isr_7, pg_isr_8, pg_isr_9, pg_isr_10, pg_isr_11, pg_isr_12, pg_isr_13
    .long pg_isr_14, pg_isr_15, pg_isr_16, pg_isr_17, pg_isr_18, pg_isr_19

    .text
pg_isr_common:
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
    jnz     pg_user_exit
    popl    %gs
    popl    %fs
    popl    %es
    popl    %ds
    popal
    addl    $8, %esp                    /* vector, error code */
    iret

/* uint32_t enter_user(uint32_t eip, uint32_t esp): runs the user task at
 * CPL 3 (CS 0x1b, SS/DS/ES/FS/GS 0x23, EFLAGS 0x2: IF=0, IOPL=0) from eip
 * with stack esp, through iret. Returns the task's exit code (system call
 * 3), with the caller's EFLAGS and callee-saved registers restored. */
    .globl enter_user
    .type enter_user, @function
enter_user:
    pushl   %ebp
    pushl   %ebx
    pushl   %esi
    pushl   %edi
    pushfl
    movl    %esp, pg_kernel_esp
    movl    24(%esp), %eax              /* eip */
    movl    28(%esp), %ecx              /* esp */
    movl    $UDATA, %edx
    movw    %dx, %ds
    movw    %dx, %es
    movw    %dx, %fs
    movw    %dx, %gs
    pushl   $UDATA                      /* ss */
    pushl   %ecx                        /* esp */
    pushl   $0x2                        /* eflags: IF=0, IOPL=0 */
    pushl   $UCODE                      /* cs */
    pushl   %eax                        /* eip */
    iret

pg_user_exit:
    /* DS/ES/FS/GS are already the kernel's (pg_isr_common); SS is the TSS's ss0 */
    movl    pg_kernel_esp, %esp
    movl    pg_user_exit_code, %eax
    popfl
    popl    %edi
    popl    %esi
    popl    %ebx
    popl    %ebp
    ret
    .size enter_user, . - enter_user

/* The user task: one page of position-independent code, mapped (user,
 * read-only) at a linear address of its own; the kernel's identity mapping
 * of it is supervisor-only. It uses no stack and no kernel data: results go
 * to U_RW + 0x800.., faults are recorded by the kernel's #PF handler, which
 * skips each faulting instruction using pg_user_sites (offset, length). */
    .p2align 12
    .globl user_page_start
user_page_start:
    .globl user_task
user_task:
    movl    $0xdeadbeef, %ecx
    movl    U_RW, %eax                  /* user page: works */
    movl    %eax, U_RW + 0x800
    movl    U_RO + 4, %eax              /* user read-only page, read: works */
    movl    %eax, U_RW + 0x804
    movl    %ecx, %eax
u_f1:
    movl    U_SUP, %eax                 /* supervisor page: #PF 0x5 */
u_f1e:
    movl    %eax, U_RW + 0x808          /* still 0xdeadbeef */
u_f2:
    movl    %ecx, U_RO + 0x10           /* user read-only page, write: #PF 0x7 */
u_f2e:
    movl    %ecx, %eax
u_f3:
    movl    U_NP + 0x234, %eax          /* not present, read: #PF 0x4 */
u_f3e:
    movl    %eax, U_RW + 0x80c
u_f4:
    movl    %ecx, U_NP + 0x238          /* not present, write: #PF 0x6 */
u_f4e:
    movl    %ecx, %eax
u_f5:
    movl    U_PDE_SUP + 0x10, %eax      /* PTE user, PDE supervisor: #PF 0x5 */
u_f5e:
    movl    %eax, U_RW + 0x810
u_f6:
    movl    %ecx, U_PDE_RO + 0x20       /* PTE writable, PDE read-only: #PF 0x7 */
u_f6e:
    movl    U_PDE_RO + 0x24, %eax       /* ... but a read works */
    movl    %eax, U_RW + 0x814
u_f7:
    movl    U_SUP + 0x40, %eax          /* the supervisor page again (the kernel wrote it): #PF 0x5 */
u_f7e:
    movl    %ecx, U_RW + 0x818          /* a user write to the user page: works */
    sidt    U_RW + 0x820                /* an emulated user store to a user page: works */
u_f8:
    sgdt    U_SUP + 0x80                /* ... to a supervisor page: #PF 0x7 */
u_f8e:
u_f9:
    sidt    U_RO + 0x20                 /* ... to a user read-only page: #PF 0x7 */
u_f9e:
    movl    $3, %eax                    /* system call 3: exit with 0x77 */
    movl    $0x77, %ebx
    int     $0x80
1:  jmp     1b
    .p2align 12
    .globl user_page_end
user_page_end:

    .section .rodata
    .p2align 2
    /* the faulting instructions of the user task: offset in its page, length */
    .globl pg_user_sites
pg_user_sites:
    .long u_f1 - user_page_start, u_f1e - u_f1
    .long u_f2 - user_page_start, u_f2e - u_f2
    .long u_f3 - user_page_start, u_f3e - u_f3
    .long u_f4 - user_page_start, u_f4e - u_f4
    .long u_f5 - user_page_start, u_f5e - u_f5
    .long u_f6 - user_page_start, u_f6e - u_f6
    .long u_f7 - user_page_start, u_f7e - u_f7
    .long u_f8 - user_page_start, u_f8e - u_f8
    .long u_f9 - user_page_start, u_f9e - u_f9
    .globl pg_user_nsites
pg_user_nsites:
    .long 9

    .section .bss
    .p2align 2
    .globl pg_kernel_esp
pg_kernel_esp:
    .skip 4

    .section .note.GNU-stack, "", @progbits
