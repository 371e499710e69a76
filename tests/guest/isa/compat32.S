/*
 * A static 32-bit program for the compatibility-mode test in tests/guest_isa.rs: it runs
 * under a 64-bit kernel (IA32 emulation) and prints one "compat32 NAME VALUE" line per check,
 * the same on this host and in the guest. It enters the kernel with `int $0x80` and through
 * the vDSO's __kernel_vsyscall (AT_SYSINFO: SYSCALL on AMD, SYSENTER on Intel), takes a
 * signal (the kernel's 32-bit signal frame and sigreturn), far-calls 64-bit code in the user
 * code segment 0x33, and uses the instructions only legacy modes have. Flags the SDM leaves
 * undefined are masked out of the single cases and kept in the BCD sweeps (this host's
 * results are the reference). Built with `as --32` and `ld -m elf_i386` (no C library).
 */
	.code32

	.macro REPORT name
	.section .rodata
9:	.asciz "\name"
	.text
	mov $9b, %esi
	call report
	.endm

	.bss
	.lcomm line, 64
	.lcomm sysinfo, 4
	.lcomm area, 512
	.lcomm signalled, 4

	.data
table:	.byte 0x10, 0x21, 0x32, 0x43, 0x54, 0x65, 0x76, 0x87
bounds:	.long -5, 100

	.text
	.globl _start
_start:
	/* AT_SYSINFO (32) from the auxiliary vector after argv and envp. */
	mov (%esp), %ecx
	lea 8(%esp,%ecx,4), %esi
1:	mov (%esi), %eax
	add $4, %esi
	test %eax, %eax
	jnz 1b
2:	mov (%esi), %eax
	test %eax, %eax
	jz 4f
	cmp $32, %eax
	jne 3f
	mov 4(%esi), %eax
	mov %eax, sysinfo
3:	add $8, %esi
	jmp 2b
4:
	/* PUSHAD/POPAD: the saved ESP is skipped. */
	mov $1, %eax
	mov $2, %ecx
	mov $3, %edx
	mov $4, %ebx
	mov $6, %ebp
	mov $7, %esi
	mov $8, %edi
	pushal
	movl $0x1234, 12(%esp)
	xor %eax, %eax
	xor %ecx, %ecx
	xor %edi, %edi
	popal
	lea (%eax,%ecx,2), %eax
	lea (%eax,%edi,8), %eax
	lea (%eax,%ebp,4), %eax
	REPORT pushad

	/* ESP moves by 4 and by 2 (operand-size prefix). */
	mov %esp, %ebx
	pushw $0x1234
	pushl $0x5678
	mov %ebx, %eax
	sub %esp, %eax
	shl $16, %eax
	popl %ecx
	popw %cx
	or %ecx, %eax
	REPORT push-sizes

	/* INC/DEC (0x40-0x4F). */
	mov $0xffffffff, %eax
	inc %eax
	pushf
	dec %edx
	popl %ebx
	and $0x8d5, %ebx
	shl $16, %ebx
	or %ebx, %eax
	REPORT inc-dec

	/* BCD adjustments: AL/AX and the defined flags. */
	mov $0x19, %eax
	add $0x28, %al
	daa
	call al_and_flags_cpazs
	REPORT daa
	mov $0x47, %eax
	sub $0x28, %al
	das
	call al_and_flags_cpazs
	REPORT das
	mov $0x0109, %eax
	add $0x08, %al
	aaa
	call ax_and_flags_ca
	REPORT aaa
	mov $0x0203, %eax
	sub $0x08, %al
	aas
	call ax_and_flags_ca
	REPORT aas
	mov $63, %eax
	aam
	call ax_and_flags_pzs
	REPORT aam
	mov $0x0603, %eax
	aad
	call ax_and_flags_pzs
	REPORT aad
	mov $0x0507, %eax
	aam $7
	call ax_and_flags_pzs
	REPORT aam7

	/* Every AL (AH 0x5a) with every CF/AF: FNV-1a of AX | flags << 16, undefined flags too. */
	.irp insn, daa, das, aaa, aas, aam, aad
	mov $0x811c9dc5, %esi
	xor %ebx, %ebx
1:	movzbl %bl, %eax
	or $0x5a00, %eax
	mov %ebx, %ecx
	shr $8, %ecx
	mov %ecx, %edx
	and $1, %ecx
	and $2, %edx
	shl $3, %edx
	or %edx, %ecx
	or $2, %ecx
	push %ecx
	popf
	\insn
	pushf
	pop %ecx
	and $0x8d5, %ecx
	shl $16, %ecx
	movzwl %ax, %eax
	or %ecx, %eax
	xor %eax, %esi
	imul $0x01000193, %esi, %esi
	inc %ebx
	cmp $1024, %ebx
	jne 1b
	mov %esi, %eax
	REPORT sweep-\insn
	.endr

	/* 16-bit addressing wraps at 64 KiB. */
	mov $0x1234fff0, %ebx
	mov $0x20, %esi
	addr16 lea (%bx,%si), %eax
	REPORT addr16

	/* XLAT, BOUND (in range), LOOP, JECXZ, ENTER/LEAVE. */
	mov $table, %ebx
	mov $5, %eax
	xlat
	REPORT xlat
	mov $7, %eax
	bound %eax, bounds
	REPORT bound
	mov $10, %ecx
	xor %eax, %eax
5:	add %ecx, %eax
	loop 5b
	jecxz 6f
	mov $0xdead, %eax
6:	REPORT loop
	mov %esp, %ebx
	enter $16, $0
	mov %ebx, %eax
	sub %esp, %eax
	leave
	cmp %esp, %ebx
	jne 7f
	REPORT enter-leave
7:
	/* String instructions with ESI/EDI/ECX. */
	cld
	mov $area, %edi
	mov $64, %ecx
	mov $0x01020304, %eax
	rep stosl
	mov $area, %esi
	mov $area+256, %edi
	mov $200, %ecx
	rep movsb
	mov $area, %esi
	mov $area+256, %edi
	mov $256, %ecx
	repe cmpsb
	mov %ecx, %eax
	shl $16, %eax
	mov area+300, %ebx
	xor %ebx, %eax
	REPORT strings

	/* The kernel through int $0x80 and through the vDSO. */
	mov $20, %eax /* getpid */
	int $0x80
	mov %eax, %ebx
	mov $20, %eax
	call *sysinfo
	cmp %eax, %ebx
	sete %al
	movzbl %al, %eax
	REPORT vsyscall-getpid

	/* A signal: the kernel's 32-bit frame, the handler, sigreturn. */
	mov $48, %eax /* signal(SIGUSR1, handler) */
	mov $10, %ebx
	mov $handler, %ecx
	int $0x80
	mov $20, %eax
	int $0x80
	mov %eax, %ebx
	mov $37, %eax /* kill(getpid(), SIGUSR1) */
	mov $10, %ecx
	int $0x80
	mov signalled, %eax
	REPORT signal

	/* A far call to 64-bit code in the user code segment 0x33 and a 32-bit far return. */
	mov $5, %edx
	lcall $0x33, $code64
	mov %cs, %eax
	shl $16, %eax
	or %edx, %eax
	REPORT far-call-64

	mov $1, %eax /* exit(0) */
	xor %ebx, %ebx
	int $0x80

handler:
	mov 4(%esp), %eax
	add $0x100, %eax
	mov %eax, signalled
	ret

/* EAX = AL | the flags in FLAGS_MASK << 8, from the flags as they are now. */
	.macro AL_AND_FLAGS name, width, mask
\name:
	pushf
	popl %ecx
	and $\mask, %ecx
	shl $16, %ecx
	.if \width == 8
	movzbl %al, %eax
	.else
	movzwl %ax, %eax
	.endif
	or %ecx, %eax
	ret
	.endm
	AL_AND_FLAGS al_and_flags_cpazs, 8, 0xd5
	AL_AND_FLAGS ax_and_flags_ca, 16, 0x11
	AL_AND_FLAGS ax_and_flags_pzs, 16, 0xc4

/* Print "compat32 NAME VALUE\n": ESI = the name, EAX = the value (as 8 hex digits). */
report:
	push %eax
	mov $line, %edi
	mov $prefix, %ebx
1:	mov (%ebx), %cl
	test %cl, %cl
	jz 2f
	mov %cl, (%edi)
	inc %ebx
	inc %edi
	jmp 1b
2:	mov (%esi), %cl
	test %cl, %cl
	jz 3f
	mov %cl, (%edi)
	inc %esi
	inc %edi
	jmp 2b
3:	movb $' ', (%edi)
	inc %edi
	pop %eax
	mov $8, %ecx
4:	rol $4, %eax
	mov %eax, %edx
	and $15, %edx
	mov hexdigits(%edx), %dl
	mov %dl, (%edi)
	inc %edi
	loop 4b
	movb $'\n', (%edi)
	inc %edi
	mov %edi, %edx
	sub $line, %edx
	mov $4, %eax /* write(1, line, len) */
	mov $1, %ebx
	mov $line, %ecx
	int $0x80
	ret

	.section .rodata
prefix:	.asciz "compat32 "
hexdigits: .ascii "0123456789abcdef"

	.text
	.code64
code64:
	movabs $0x100000000, %rax
	add %rax, %rax
	shr $32, %rax
	add %eax, %edx
	lretl

	.section .note.GNU-stack, "", @progbits
