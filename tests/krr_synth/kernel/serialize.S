/* The exec-lock functions of KRR's guest patch (arch/x86/kernel/rr_serialize.c), in the
 * shapes krr's trap-point resolver looks for (krr-spec 3.7): RR_LOCK_ACQUIRE_RET is the last
 * return of rr_do_acquire_smp_exec (a JMP to the return thunk), LOCK_RELEASE is line 147 of
 * rr_serialize.c inside rr_release_smp_exec. A one-vCPU kernel never calls them (KRR
 * disables the lock when one CPU is online), so they only have to be there. */
        .file 1 "arch/x86/kernel/rr_serialize.c"
        .text
        .globl __x86_return_thunk
        .type __x86_return_thunk, @function
__x86_return_thunk:
        ret
        int3
        .size __x86_return_thunk, .-__x86_return_thunk

        .globl rr_do_acquire_smp_exec
        .type rr_do_acquire_smp_exec, @function
rr_do_acquire_smp_exec:
        .loc 1 100
        xorl %eax, %eax
        testl %edi, %edi
        jne 2f
        ret
2:      pause
        movl $1, %eax
        jmp __x86_return_thunk
        .size rr_do_acquire_smp_exec, .-rr_do_acquire_smp_exec

        .globl rr_release_smp_exec
        .type rr_release_smp_exec, @function
rr_release_smp_exec:
        .loc 1 140
        pushq %rbx
        .loc 1 145
        lock andl $0xfffffffe, (%rdi)
        .loc 1 147
        pushq %rsi
        popfq
        .loc 1 148
        popq %rbx
        jmp __x86_return_thunk
        .size rr_release_smp_exec, .-rr_release_smp_exec
