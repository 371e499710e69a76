/* The instruction forms of isa.c (X-macro lists; see there). */

/* The instruction list: R(name, kind): `name xmm2/m128, xmm1`; RI(name, imm, kind): with an
 * immediate; G(line, id, kind, reg, mem): both forms spelled out; G1(line, id, kind, text): one
 * form. */
#define LIST(R, RI, G, G1)                                                                  \
  /* SSE */                                                                                 \
  R(addps, PS) R(addss, PS) R(subps, PS) R(subss, PS) R(mulps, PS) R(mulss, PS)             \
  R(divps, PS) R(divss, PS) R(sqrtps, PS) R(sqrtss, PS) R(rcpps, PS) R(rcpss, PS)           \
  R(rsqrtps, PS) R(rsqrtss, PS) R(minps, PS) R(minss, PS) R(maxps, PS) R(maxss, PS)         \
  R(andps, PS) R(andnps, PS) R(orps, PS) R(xorps, PS) R(unpcklps, PS) R(unpckhps, PS)      \
  RI(cmpps, 0, PS) RI(cmpps, 1, PS) RI(cmpps, 2, PS) RI(cmpps, 3, PS) RI(cmpps, 4, PS)      \
  RI(cmpps, 5, PS) RI(cmpps, 6, PS) RI(cmpps, 7, PS)                                        \
  RI(cmpss, 0, PS) RI(cmpss, 1, PS) RI(cmpss, 2, PS) RI(cmpss, 3, PS) RI(cmpss, 4, PS)      \
  RI(cmpss, 5, PS) RI(cmpss, 6, PS) RI(cmpss, 7, PS)                                        \
  RI(shufps, 0x1b, PS) RI(shufps, 0x00, PS) RI(shufps, 0xe4, PS) RI(shufps, 0x9c, PS)       \
  R(comiss, PS) R(ucomiss, PS)                                                              \
  G(cvtsi2ss, l, GPR, "cvtsi2ssl %%r9d,%%xmm1", "cvtsi2ssl 80(%%rdi),%%xmm1")               \
  G(cvtsi2ss, q, GPR, "cvtsi2ssq %%r9,%%xmm1", "cvtsi2ssq 80(%%rdi),%%xmm1")                \
  G(cvtss2si, l, PS, "cvtss2si %%xmm2,%%r8d", "cvtss2si 32(%%rdi),%%r8d")                  \
  G(cvtss2si, q, PS, "cvtss2si %%xmm2,%%r8", "cvtss2si 32(%%rdi),%%r8")                    \
  G(cvttss2si, l, PS, "cvttss2si %%xmm2,%%r8d", "cvttss2si 32(%%rdi),%%r8d")               \
  G(cvttss2si, q, PS, "cvttss2si %%xmm2,%%r8", "cvttss2si 32(%%rdi),%%r8")                 \
  G1(movmskps, r, PS, "movmskps %%xmm2,%%r8d")                                              \
  R(movss, PS) G1(movss, st, PS, "movss %%xmm1,32(%%rdi)")                                  \
  G1(movhlps, r, PS, "movhlps %%xmm2,%%xmm1") G1(movlhps, r, PS, "movlhps %%xmm2,%%xmm1")   \
  G1(movlps, m, PS, "movlps 32(%%rdi),%%xmm1") G1(movlps, st, PS, "movlps %%xmm1,32(%%rdi)") \
  G1(movhps, m, PS, "movhps 32(%%rdi),%%xmm1") G1(movhps, st, PS, "movhps %%xmm1,32(%%rdi)") \
  R(movups, PS) G1(movups, st, PS, "movups %%xmm1,32(%%rdi)")                               \
  /* SSE2 floating point */                                                                 \
  R(addpd, PD) R(addsd, PD) R(subpd, PD) R(subsd, PD) R(mulpd, PD) R(mulsd, PD)             \
  R(divpd, PD) R(divsd, PD) R(sqrtpd, PD) R(sqrtsd, PD) R(minpd, PD) R(minsd, PD)           \
  R(maxpd, PD) R(maxsd, PD) R(andpd, PD) R(andnpd, PD) R(orpd, PD) R(xorpd, PD)             \
  R(unpcklpd, PD) R(unpckhpd, PD)                                                           \
  RI(cmppd, 0, PD) RI(cmppd, 1, PD) RI(cmppd, 2, PD) RI(cmppd, 3, PD) RI(cmppd, 4, PD)      \
  RI(cmppd, 5, PD) RI(cmppd, 6, PD) RI(cmppd, 7, PD)                                        \
  RI(cmpsd, 0, PD) RI(cmpsd, 1, PD) RI(cmpsd, 2, PD) RI(cmpsd, 3, PD) RI(cmpsd, 4, PD)      \
  RI(cmpsd, 5, PD) RI(cmpsd, 6, PD) RI(cmpsd, 7, PD)                                        \
  RI(shufpd, 0, PD) RI(shufpd, 1, PD) RI(shufpd, 2, PD) RI(shufpd, 3, PD)                   \
  R(comisd, PD) R(ucomisd, PD)                                                              \
  G(cvtsi2sd, l, GPR, "cvtsi2sdl %%r9d,%%xmm1", "cvtsi2sdl 80(%%rdi),%%xmm1")               \
  G(cvtsi2sd, q, GPR, "cvtsi2sdq %%r9,%%xmm1", "cvtsi2sdq 80(%%rdi),%%xmm1")                \
  G(cvtsd2si, l, PD, "cvtsd2si %%xmm2,%%r8d", "cvtsd2si 32(%%rdi),%%r8d")                  \
  G(cvtsd2si, q, PD, "cvtsd2si %%xmm2,%%r8", "cvtsd2si 32(%%rdi),%%r8")                    \
  G(cvttsd2si, l, PD, "cvttsd2si %%xmm2,%%r8d", "cvttsd2si 32(%%rdi),%%r8d")               \
  G(cvttsd2si, q, PD, "cvttsd2si %%xmm2,%%r8", "cvttsd2si 32(%%rdi),%%r8")                 \
  R(cvtps2pd, PS) R(cvtpd2ps, PD) R(cvtss2sd, PS) R(cvtsd2ss, PD) R(cvtdq2ps, INT)          \
  R(cvtps2dq, PS) R(cvttps2dq, PS) R(cvtdq2pd, INT) R(cvtpd2dq, PD) R(cvttpd2dq, PD)        \
  G1(movmskpd, r, PD, "movmskpd %%xmm2,%%r8d")                                              \
  R(movsd, PD) G1(movsd, st, PD, "movsd %%xmm1,32(%%rdi)")                                  \
  /* SSE2 integer */                                                                        \
  R(paddb, INT) R(paddw, INT) R(paddd, INT) R(paddq, INT) R(paddsb, INT) R(paddsw, INT)     \
  R(paddusb, INT) R(paddusw, INT) R(psubb, INT) R(psubw, INT) R(psubd, INT) R(psubq, INT)   \
  R(psubsb, INT) R(psubsw, INT) R(psubusb, INT) R(psubusw, INT) R(pmullw, INT)              \
  R(pmulhw, INT) R(pmulhuw, INT) R(pmuludq, INT) R(pmaddwd, INT) R(psadbw, INT)             \
  R(pavgb, INT) R(pavgw, INT) R(pminub, INT) R(pmaxub, INT) R(pminsw, INT) R(pmaxsw, INT)   \
  R(pcmpeqb, INT) R(pcmpeqw, INT) R(pcmpeqd, INT) R(pcmpgtb, INT) R(pcmpgtw, INT)           \
  R(pcmpgtd, INT) R(packsswb, INT) R(packssdw, INT) R(packuswb, INT) R(punpcklbw, INT)      \
  R(punpcklwd, INT) R(punpckldq, INT) R(punpcklqdq, INT) R(punpckhbw, INT)                  \
  R(punpckhwd, INT) R(punpckhdq, INT) R(punpckhqdq, INT) R(pand, INT) R(pandn, INT)         \
  R(por, INT) R(pxor, INT) R(psllw, INT) R(pslld, INT) R(psllq, INT) R(psrlw, INT)          \
  R(psrld, INT) R(psrlq, INT) R(psraw, INT) R(psrad, INT)                                   \
  G1(psllw, i, INT, "psllw $5,%%xmm1") G1(pslld, i, INT, "pslld $17,%%xmm1")                \
  G1(psllq, i, INT, "psllq $63,%%xmm1") G1(psrlw, i, INT, "psrlw $16,%%xmm1")               \
  G1(psrld, i, INT, "psrld $3,%%xmm1") G1(psrlq, i, INT, "psrlq $40,%%xmm1")                \
  G1(psraw, i, INT, "psraw $9,%%xmm1") G1(psrad, i, INT, "psrad $40,%%xmm1")                \
  G1(pslldq, 3, INT, "pslldq $3,%%xmm1") G1(pslldq, 17, INT, "pslldq $17,%%xmm1")           \
  G1(psrldq, 5, INT, "psrldq $5,%%xmm1") G1(psrldq, 15, INT, "psrldq $15,%%xmm1")           \
  RI(pshufd, 0x1b, INT) RI(pshufd, 0x4e, INT) RI(pshuflw, 0x1b, INT) RI(pshuflw, 0xa5, INT) \
  RI(pshufhw, 0x1b, INT) RI(pshufhw, 0x72, INT)                                             \
  G1(pmovmskb, r, INT, "pmovmskb %%xmm2,%%r8d")                                             \
  G(pinsrw, 6, GPR, "pinsrw $6,%%r9d,%%xmm1", "pinsrw $6,80(%%rdi),%%xmm1")                 \
  G(movd, to, GPR, "movd %%r9d,%%xmm1", "movd 80(%%rdi),%%xmm1")                            \
  G(movd, from, INT, "movd %%xmm2,%%r8d", "movd %%xmm1,32(%%rdi)")                          \
  G(movq, to, GPR, "movq %%r9,%%xmm1", "movq 80(%%rdi),%%xmm1")                             \
  G(movq, from, INT, "movq %%xmm2,%%r8", "movq %%xmm1,32(%%rdi)")                           \
  G(movq, x, INT, "movq %%xmm2,%%xmm1", "movq 32(%%rdi),%%xmm1")                            \
  R(movdqa, INT) R(movdqu, INT)                                                             \
  G1(maskmovdqu, r, INT, "lea 32(%%rdi),%%rdi\n\tmaskmovdqu %%xmm2,%%xmm1\n\tlea -32(%%rdi),%%rdi") \
  /* SSE3 */                                                                                \
  R(addsubps, PS) R(addsubpd, PD) R(haddps, PS) R(haddpd, PD) R(hsubps, PS) R(hsubpd, PD)   \
  R(movsldup, PS) R(movshdup, PS) R(movddup, PD) G1(lddqu, m, INT, "lddqu 32(%%rdi),%%xmm1") \
  /* SSSE3 */                                                                               \
  R(pshufb, INT) R(phaddw, INT) R(phaddd, INT) R(phaddsw, INT) R(phsubw, INT)               \
  R(phsubd, INT) R(phsubsw, INT) R(pmaddubsw, INT) R(pmulhrsw, INT) R(psignb, INT)          \
  R(psignw, INT) R(psignd, INT) R(pabsb, INT) R(pabsw, INT) R(pabsd, INT)                   \
  RI(palignr, 0, INT) RI(palignr, 1, INT) RI(palignr, 7, INT) RI(palignr, 15, INT)          \
  RI(palignr, 16, INT) RI(palignr, 20, INT) RI(palignr, 31, INT) RI(palignr, 32, INT)       \
  /* SSE4.1 */                                                                              \
  G(pblendvb, r, INT, "pblendvb %%xmm0,%%xmm2,%%xmm1", "pblendvb %%xmm0,32(%%rdi),%%xmm1")  \
  G(blendvps, r, PS, "blendvps %%xmm0,%%xmm2,%%xmm1", "blendvps %%xmm0,32(%%rdi),%%xmm1")   \
  G(blendvpd, r, PD, "blendvpd %%xmm0,%%xmm2,%%xmm1", "blendvpd %%xmm0,32(%%rdi),%%xmm1")   \
  RI(blendps, 5, PS) RI(blendps, 0xe, PS) RI(blendpd, 1, PD) RI(blendpd, 2, PD)             \
  RI(pblendw, 0x5a, INT) RI(pblendw, 0x81, INT)                                             \
  R(pminsb, INT) R(pminsd, INT) R(pminuw, INT) R(pminud, INT) R(pmaxsb, INT) R(pmaxsd, INT) \
  R(pmaxuw, INT) R(pmaxud, INT) R(pmulld, INT) R(pmuldq, INT) R(ptest, INT)                 \
  ROUND(R, RI, roundps, PS) ROUND(R, RI, roundss, PS) ROUND(R, RI, roundpd, PD)             \
  ROUND(R, RI, roundsd, PD)                                                                 \
  RI(dpps, 0xff, PS) RI(dpps, 0x31, PS) RI(dpps, 0xf1, PS) RI(dpps, 0x7e, PS)               \
  RI(dpps, 0x5a, PS) RI(dpps, 0x0f, PS) RI(dppd, 0x33, PD) RI(dppd, 0x31, PD)               \
  RI(dppd, 0x12, PD) RI(dppd, 0xf3, PD)                                                     \
  RI(insertps, 0x00, PS) RI(insertps, 0x4c, PS) RI(insertps, 0xb1, PS) RI(insertps, 0xf8, PS) \
  RI(insertps, 0x3f, PS)                                                                    \
  G(extractps, 2, PS, "extractps $2,%%xmm2,%%r8d", "extractps $2,%%xmm1,32(%%rdi)")         \
  R(pmovzxbw, INT) R(pmovzxbd, INT) R(pmovzxbq, INT) R(pmovzxwd, INT) R(pmovzxwq, INT)      \
  R(pmovzxdq, INT) R(pmovsxbw, INT) R(pmovsxbd, INT) R(pmovsxbq, INT) R(pmovsxwd, INT)      \
  R(pmovsxwq, INT) R(pmovsxdq, INT)                                                         \
  RI(mpsadbw, 0, INT) RI(mpsadbw, 1, INT) RI(mpsadbw, 2, INT) RI(mpsadbw, 3, INT)           \
  RI(mpsadbw, 4, INT) RI(mpsadbw, 5, INT) RI(mpsadbw, 6, INT) RI(mpsadbw, 7, INT)           \
  R(packusdw, INT) R(phminposuw, INT) R(pcmpeqq, INT)                                       \
  G(pextrb, 9, INT, "pextrb $9,%%xmm2,%%r8d", "pextrb $9,%%xmm1,32(%%rdi)")                 \
  G1(pextrw, 5, INT, "pextrw $5,%%xmm2,%%r8d")                                              \
  G(pextrw, 3, INT, "pextrw $3,%%xmm2,%%r8d", "pextrw $3,%%xmm1,32(%%rdi)")                 \
  G(pextrd, 3, INT, "pextrd $3,%%xmm2,%%r8d", "pextrd $3,%%xmm1,32(%%rdi)")                 \
  G(pextrq, 1, INT, "pextrq $1,%%xmm2,%%r8", "pextrq $1,%%xmm1,32(%%rdi)")                  \
  G(pinsrb, 13, GPR, "pinsrb $13,%%r9d,%%xmm1", "pinsrb $13,80(%%rdi),%%xmm1")              \
  G(pinsrd, 2, GPR, "pinsrd $2,%%r9d,%%xmm1", "pinsrd $2,80(%%rdi),%%xmm1")                 \
  G(pinsrq, 1, GPR, "pinsrq $1,%%r9,%%xmm1", "pinsrq $1,80(%%rdi),%%xmm1")                  \
  G1(movntdqa, m, INT, "movntdqa 32(%%rdi),%%xmm1")                                         \
  /* SSE4.2 */                                                                              \
  STRI(R, RI, pcmpestri) STRI(R, RI, pcmpestrm) STRI(R, RI, pcmpistri)                      \
  STRI(R, RI, pcmpistrm)                                                                    \
  G(pcmpestri, q, STR, "pcmpestriq $0x0c,%%xmm2,%%xmm1", "pcmpestriq $0x4a,32(%%rdi),%%xmm1") \
  R(pcmpgtq, INT)                                                                           \
  G(crc32, b, GPR, "crc32b %%r9b,%%r8d", "crc32b 80(%%rdi),%%r8d")                          \
  G(crc32, w, GPR, "crc32w %%r9w,%%r8d", "crc32w 80(%%rdi),%%r8d")                          \
  G(crc32, l, GPR, "crc32l %%r9d,%%r8d", "crc32l 80(%%rdi),%%r8d")                          \
  G(crc32, q, GPR, "crc32q %%r9,%%r8", "crc32q 80(%%rdi),%%r8")                             \
  /* POPCNT, MOVBE */                                                                       \
  G(popcnt, w, GPR, "popcntw %%r9w,%%r8w", "popcntw 80(%%rdi),%%r8w")                       \
  G(popcnt, l, GPR, "popcntl %%r9d,%%r8d", "popcntl 80(%%rdi),%%r8d")                       \
  G(popcnt, q, GPR, "popcntq %%r9,%%r8", "popcntq 80(%%rdi),%%r8")                          \
  G(movbe, w, GPR, "movbew 80(%%rdi),%%r8w", "movbew %%r8w,80(%%rdi)")                      \
  G(movbe, l, GPR, "movbel 80(%%rdi),%%r8d", "movbel %%r8d,80(%%rdi)")                      \
  G(movbe, q, GPR, "movbeq 80(%%rdi),%%r8", "movbeq %%r8,80(%%rdi)")                        \
  /* AES-NI, PCLMULQDQ */                                                                   \
  R(aesenc, INT) R(aesenclast, INT) R(aesdec, INT) R(aesdeclast, INT) R(aesimc, INT)        \
  RI(aeskeygenassist, 0x00, INT) RI(aeskeygenassist, 0x01, INT)                             \
  RI(aeskeygenassist, 0x1b, INT) RI(aeskeygenassist, 0x80, INT)                             \
  RI(pclmulqdq, 0x00, INT) RI(pclmulqdq, 0x01, INT) RI(pclmulqdq, 0x10, INT)                \
  RI(pclmulqdq, 0x11, INT) RI(pclmulqdq, 0xff, INT)

#define ROUND(R, RI, n, k)                                                                  \
  RI(n, 0, k) RI(n, 1, k) RI(n, 2, k) RI(n, 3, k) RI(n, 4, k) RI(n, 5, k) RI(n, 6, k)       \
  RI(n, 7, k) RI(n, 8, k) RI(n, 9, k) RI(n, 10, k) RI(n, 11, k) RI(n, 12, k) RI(n, 13, k)   \
  RI(n, 14, k) RI(n, 15, k)

/* PCMPxSTRx immediates: every source format (ub, uw, sb, sw) and aggregation (equal any,
 * ranges, equal each, equal ordered), the four polarities and both index/mask selections. */
#define STRI(R, RI, n)                                                                      \
  RI(n, 0x00, STR) RI(n, 0x01, STR) RI(n, 0x02, STR) RI(n, 0x03, STR) RI(n, 0x04, STR)      \
  RI(n, 0x05, STR) RI(n, 0x06, STR) RI(n, 0x07, STR) RI(n, 0x08, STR) RI(n, 0x09, STR)      \
  RI(n, 0x0a, STR) RI(n, 0x0b, STR) RI(n, 0x0c, STR) RI(n, 0x0d, STR) RI(n, 0x0e, STR)      \
  RI(n, 0x0f, STR) RI(n, 0x10, STR) RI(n, 0x14, STR) RI(n, 0x18, STR) RI(n, 0x1c, STR)      \
  RI(n, 0x30, STR) RI(n, 0x38, STR) RI(n, 0x3a, STR) RI(n, 0x40, STR) RI(n, 0x44, STR)      \
  RI(n, 0x49, STR) RI(n, 0x4c, STR) RI(n, 0x5d, STR) RI(n, 0x62, STR) RI(n, 0x73, STR)      \
  RI(n, 0x7f, STR)

/* Memory forms at any address (r10): unaligned, crossing into the next page, or (the
 * page-fault- lines) into an inaccessible page; the forms that need 16-byte alignment fault
 * (#GP, SIGSEGV) when misaligned. */
#define ULIST(U)                                                                            \
  U(movups, ld, PS, "movups (%%r10),%%xmm1") U(movups, st, PS, "movups %%xmm1,(%%r10)")     \
  U(movupd, ld, PD, "movupd (%%r10),%%xmm1") U(movupd, st, PD, "movupd %%xmm1,(%%r10)")     \
  U(movdqu, ld, INT, "movdqu (%%r10),%%xmm1") U(movdqu, st, INT, "movdqu %%xmm1,(%%r10)")   \
  U(lddqu, ld, INT, "lddqu (%%r10),%%xmm1")                                                 \
  U(movss, ld, PS, "movss (%%r10),%%xmm1") U(movss, st, PS, "movss %%xmm1,(%%r10)")         \
  U(movsd, ld, PD, "movsd (%%r10),%%xmm1") U(movsd, st, PD, "movsd %%xmm1,(%%r10)")         \
  U(movlps, ld, PS, "movlps (%%r10),%%xmm1") U(movlps, st, PS, "movlps %%xmm1,(%%r10)")     \
  U(movhps, ld, PS, "movhps (%%r10),%%xmm1") U(movhps, st, PS, "movhps %%xmm1,(%%r10)")     \
  U(movq, ld, INT, "movq (%%r10),%%xmm1") U(movq, st, INT, "movq %%xmm1,(%%r10)")           \
  U(movd, ld, INT, "movd (%%r10),%%xmm1") U(movd, st, INT, "movd %%xmm1,(%%r10)")           \
  U(movddup, ld, PD, "movddup (%%r10),%%xmm1")                                              \
  U(addss, ld, PS, "addss (%%r10),%%xmm1") U(addsd, ld, PD, "addsd (%%r10),%%xmm1")         \
  U(cvtss2sd, ld, PS, "cvtss2sd (%%r10),%%xmm1") U(cvtsd2ss, ld, PD, "cvtsd2ss (%%r10),%%xmm1") \
  U(cvtps2pd, ld, PS, "cvtps2pd (%%r10),%%xmm1") U(comisd, ld, PD, "comisd (%%r10),%%xmm1") \
  U(ucomiss, ld, PS, "ucomiss (%%r10),%%xmm1")                                              \
  U(cvtsi2sd, q, GPR, "cvtsi2sdq (%%r10),%%xmm1") U(cvtsi2ss, l, GPR, "cvtsi2ssl (%%r10),%%xmm1") \
  U(cvttsd2si, q, PD, "cvttsd2si (%%r10),%%r8") U(roundsd, 4, PD, "roundsd $4,(%%r10),%%xmm1") \
  U(insertps, 0x90, PS, "insertps $0x90,(%%r10),%%xmm1")                                    \
  U(extractps, 1, PS, "extractps $1,%%xmm1,(%%r10)")                                        \
  U(pmovzxbw, ld, INT, "pmovzxbw (%%r10),%%xmm1") U(pmovsxbd, ld, INT, "pmovsxbd (%%r10),%%xmm1") \
  U(pmovzxbq, ld, INT, "pmovzxbq (%%r10),%%xmm1")                                           \
  U(pinsrb, 3, GPR, "pinsrb $3,(%%r10),%%xmm1") U(pinsrw, 7, GPR, "pinsrw $7,(%%r10),%%xmm1") \
  U(pinsrd, 1, GPR, "pinsrd $1,(%%r10),%%xmm1") U(pinsrq, 1, GPR, "pinsrq $1,(%%r10),%%xmm1") \
  U(pextrb, 15, INT, "pextrb $15,%%xmm1,(%%r10)") U(pextrw, 1, INT, "pextrw $1,%%xmm1,(%%r10)") \
  U(pextrd, 2, INT, "pextrd $2,%%xmm1,(%%r10)") U(pextrq, 0, INT, "pextrq $0,%%xmm1,(%%r10)") \
  U(pcmpestri, 0x0c, STR, "pcmpestri $0x0c,(%%r10),%%xmm1")                                 \
  U(pcmpistrm, 0x40, STR, "pcmpistrm $0x40,(%%r10),%%xmm1")                                 \
  U(crc32, b, GPR, "crc32b (%%r10),%%r8d") U(crc32, q, GPR, "crc32q (%%r10),%%r8")          \
  U(popcnt, q, GPR, "popcntq (%%r10),%%r8")                                                 \
  U(movbe, ld, GPR, "movbeq (%%r10),%%r8") U(movbe, st, GPR, "movbeq %%r8,(%%r10)")         \
  U(movbe, stw, GPR, "movbew %%r8w,(%%r10)")                                                \
  U(addps, ld, PS, "addps (%%r10),%%xmm1") U(movaps, ld, PS, "movaps (%%r10),%%xmm1")       \
  U(movaps, st, PS, "movaps %%xmm1,(%%r10)") U(movdqa, ld, INT, "movdqa (%%r10),%%xmm1")    \
  U(movdqa, st, INT, "movdqa %%xmm1,(%%r10)") U(movntdq, st, INT, "movntdq %%xmm1,(%%r10)") \
  U(movntdqa, ld, INT, "movntdqa (%%r10),%%xmm1") U(pshufb, ld, INT, "pshufb (%%r10),%%xmm1") \
  U(palignr, 3, INT, "palignr $3,(%%r10),%%xmm1") U(pcmpeqb, ld, INT, "pcmpeqb (%%r10),%%xmm1") \
  U(ptest, ld, INT, "ptest (%%r10),%%xmm1") U(dpps, 0xff, PS, "dpps $0xff,(%%r10),%%xmm1")  \
  U(roundps, 1, PS, "roundps $1,(%%r10),%%xmm1") U(aesenc, ld, INT, "aesenc (%%r10),%%xmm1") \
  U(pclmulqdq, 0x11, INT, "pclmulqdq $0x11,(%%r10),%%xmm1")                               \
  U(ldmxcsr, ld, INT, "ldmxcsr (%%r10)") U(stmxcsr, st, INT, "stmxcsr (%%r10)")            \
  U(movnti, q, GPR, "movnti %%r8,(%%r10)") U(movnti, l, GPR, "movnti %%r8d,(%%r10)")        \
  U(clflush, x, INT, "clflush (%%r10)") U(prefetcht0, x, INT, "prefetcht0 (%%r10)")         \
  U(prefetchnta, x, INT, "prefetchnta (%%r10)")

#define RLIST(X)                                                                            \
  X(addps, x, PS, "addps isa_ripmem(%%rip),%%xmm1")                                         \
  X(pshufd, x, INT, "pshufd $0x1b,isa_ripmem(%%rip),%%xmm1")                                \
  X(pshufhw, x, INT, "pshufhw $0x1b,isa_ripmem(%%rip),%%xmm1")                              \
  X(shufps, x, PS, "shufps $0x4e,isa_ripmem(%%rip),%%xmm1")                                 \
  X(cmpps, x, PS, "cmpps $2,isa_ripmem(%%rip),%%xmm1")                                      \
  X(cmpsd, x, PD, "cmpsd $5,isa_ripmem(%%rip),%%xmm1")                                      \
  X(roundps, x, PS, "roundps $1,isa_ripmem(%%rip),%%xmm1")                                  \
  X(roundsd, x, PD, "roundsd $2,isa_ripmem(%%rip),%%xmm1")                                  \
  X(pcmpestri, x, STR, "pcmpestri $0x0c,isa_ripmem(%%rip),%%xmm1")                          \
  X(pcmpistrm, x, STR, "pcmpistrm $0x40,isa_ripmem(%%rip),%%xmm1")                          \
  X(insertps, x, PS, "insertps $0x10,isa_ripmem(%%rip),%%xmm1")                             \
  X(palignr, x, INT, "palignr $3,isa_ripmem(%%rip),%%xmm1")                                 \
  X(pinsrq, x, GPR, "pinsrq $1,isa_ripmem(%%rip),%%xmm1")                                   \
  X(pinsrb, x, GPR, "pinsrb $15,isa_ripmem(%%rip),%%xmm1")                                  \
  X(pextrd, x, INT, "pextrd $1,%%xmm1,isa_ripmem(%%rip)")                                   \
  X(pextrb, x, INT, "pextrb $7,%%xmm1,isa_ripmem(%%rip)")                                   \
  X(pextrw, x, INT, "pextrw $2,%%xmm1,isa_ripmem(%%rip)")                                   \
  X(extractps, x, PS, "extractps $3,%%xmm1,isa_ripmem(%%rip)")                              \
  X(dpps, x, PS, "dpps $0xf1,isa_ripmem(%%rip),%%xmm1")                                     \
  X(dppd, x, PD, "dppd $0x31,isa_ripmem(%%rip),%%xmm1")                                     \
  X(mpsadbw, x, INT, "mpsadbw $5,isa_ripmem(%%rip),%%xmm1")                                 \
  X(blendps, x, PS, "blendps $5,isa_ripmem(%%rip),%%xmm1")                                  \
  X(pblendw, x, INT, "pblendw $0xa5,isa_ripmem(%%rip),%%xmm1")                              \
  X(pclmulqdq, x, INT, "pclmulqdq $0x10,isa_ripmem(%%rip),%%xmm1")                          \
  X(aeskeygenassist, x, INT, "aeskeygenassist $0x1b,isa_ripmem(%%rip),%%xmm1")              \
  X(pshufb, x, INT, "pshufb isa_ripmem(%%rip),%%xmm1")                                      \
  X(movups, x, PS, "movups %%xmm1,isa_ripmem(%%rip)")                                       \
  X(crc32, x, GPR, "crc32q isa_ripmem(%%rip),%%r8")                                         \
  X(popcnt, x, GPR, "popcntq isa_ripmem(%%rip),%%r8")                                       \
  X(movbe, x, GPR, "movbeq %%r8,isa_ripmem(%%rip)")                                         \
  X(cvtsi2sd, x, GPR, "cvtsi2sdq isa_ripmem(%%rip),%%xmm1")

#define HLIST(X)                                                                            \
  X(addps, PS, "addps %%xmm10,%%xmm9") X(pshufb, INT, "pshufb %%xmm10,%%xmm9")              \
  X(pcmpestri, STR, "pcmpestri $0x0c,%%xmm10,%%xmm9")                                       \
  X(pcmpestrm, STR, "pcmpestrm $0x40,%%xmm10,%%xmm9\n\tmovdqa %%xmm0,%%xmm8")               \
  X(blendvps, PS, "blendvps %%xmm0,%%xmm10,%%xmm9") X(pextrq, INT, "pextrq $1,%%xmm10,%%r8") \
  X(pinsrq, GPR, "pinsrq $1,%%r9,%%xmm9") X(cvtsi2sd, GPR, "cvtsi2sdq %%r9,%%xmm9")         \
  X(cvttsd2si, PD, "cvttsd2si %%xmm10,%%r8") X(movmskps, PS, "movmskps %%xmm10,%%r8d")      \
  X(ptest, INT, "ptest %%xmm10,%%xmm9") X(aesenc, INT, "aesenc %%xmm10,%%xmm9")             \
  X(aesdeclast, INT, "movdqa %%xmm10,%%xmm15\n\taesdeclast %%xmm8,%%xmm15\n\tmovdqa %%xmm15,%%xmm9")                  \
  X(pclmulqdq, INT, "pclmulqdq $0x01,%%xmm10,%%xmm9") X(roundss, PS, "roundss $3,%%xmm10,%%xmm9") \
  X(dpps, PS, "dpps $0x7f,%%xmm10,%%xmm9") X(insertps, PS, "insertps $0x5c,%%xmm10,%%xmm9") \
  X(palignr, INT, "palignr $9,%%xmm10,%%xmm9") X(psrldq, INT, "psrldq $7,%%xmm9")           \
  X(pslld, INT, "pslld %%xmm10,%%xmm9") X(pshufd, INT, "pshufd $0x39,%%xmm10,%%xmm9")       \
  X(movq, INT, "movq %%xmm10,%%xmm9") X(movhlps, PS, "movhlps %%xmm10,%%xmm9")              \
  X(comisd, PD, "comisd %%xmm10,%%xmm9") X(pmovmskb, INT, "pmovmskb %%xmm10,%%r8d")         \
  X(phminposuw, INT, "phminposuw %%xmm10,%%xmm9") X(extractps, PS, "extractps $1,%%xmm10,%%r8d") \
  X(unpckhpd, PD, "unpckhpd %%xmm10,%%xmm9") X(pmaddubsw, INT, "pmaddubsw %%xmm10,%%xmm9")  \
  X(psadbw, INT, "psadbw %%xmm10,%%xmm9") X(movss, PS, "movss %%xmm10,%%xmm9")              \
  X(pand, INT, "pand %%xmm10,%%xmm9") X(pcmpeqb, INT, "pcmpeqb %%xmm10,%%xmm9")             \
  X(cvtps2pd, PS, "cvtps2pd %%xmm10,%%xmm15\n\tmovdqa %%xmm15,%%xmm9")                      \
  X(sqrtsd, PD, "movdqa %%xmm10,%%xmm15\n\tsqrtsd %%xmm15,%%xmm9")                                                    \
  X(maskmovdqu, INT, "lea 32(%%rdi),%%rdi\n\tmaskmovdqu %%xmm10,%%xmm9\n\tlea -32(%%rdi),%%rdi")

/* Prefixes (raw bytes; x1 in xmm1, x2 in xmm2): redundant and conflicting mandatory prefixes,
 * REX.W where it is ignored, REX not next to the opcode (ignored), segment overrides on
 * register forms; LOCK and 0F B8 without F3 (#UD, SIGILL); the fences and PAUSE. */
#define MLIST(X)                                                                            \
  X(addss_66f3, ".byte 0x66,0xf3,0x0f,0x58,0xca") X(addsd_f3f2, ".byte 0xf3,0xf2,0x0f,0x58,0xca") \
  X(addss_f2f3, ".byte 0xf2,0xf3,0x0f,0x58,0xca") X(addpd_6666, ".byte 0x66,0x66,0x0f,0x58,0xca") \
  X(addps_rexw, ".byte 0x48,0x0f,0x58,0xca") X(addpd_rex66, ".byte 0x48,0x66,0x0f,0x58,0xca") \
  X(pshufb_ds, ".byte 0x3e,0x66,0x0f,0x38,0x00,0xca")                                       \
  X(movq_66rexwb, ".byte 0x66,0x49,0x0f,0x7e,0xc8")                                         \
  X(roundsd_cs, ".byte 0x2e,0x66,0x0f,0x3a,0x0b,0xca,0x05")                                 \
  X(crc32_66rexw, ".byte 0x66,0xf2,0x4d,0x0f,0x38,0xf1,0xc1")                               \
  X(lock_addps, ".byte 0xf0,0x0f,0x58,0xca") X(lock_pshufb, ".byte 0xf0,0x66,0x0f,0x38,0x00,0xca") \
  X(popcnt_nof3, ".byte 0x0f,0xb8,0xc1") X(fences, "lfence\n\tsfence\n\tmfence\n\tpause")

#define BLIST(X)                                                                            \
  X(andn, q, ZSCO, "andn %%r9,%%rdx,%%r8") X(andn, l, ZSCO, "andn %%r9d,%%edx,%%r8d")       \
  X(andn, m, ZSCO, "andn 80(%%rdi),%%rdx,%%r8")                                             \
  X(bextr, q, ZCO, "movzwl %%cx,%%ecx\n\tbextr %%rcx,%%r9,%%r8")                            \
  X(bextr, l, ZCO, "bextr %%ecx,%%r9d,%%r8d") X(bextr, m, ZCO, "bextr %%rcx,80(%%rdi),%%r8") \
  X(blsi, q, ZSCO, "blsi %%r9,%%r8") X(blsi, l, ZSCO, "blsi %%r9d,%%r8d")                   \
  X(blsmsk, q, ZSCO, "blsmsk %%r9,%%r8") X(blsmsk, l, ZSCO, "blsmsk 80(%%rdi),%%r8d")       \
  X(blsr, q, ZSCO, "blsr %%r9,%%r8") X(blsr, l, ZSCO, "blsr %%r9d,%%r8d")                   \
  X(tzcnt, q, ZC, "tzcnt %%r9,%%r8") X(tzcnt, l, ZC, "tzcnt %%r9d,%%r8d")                   \
  X(tzcnt, w, ZC, "tzcnt %%r9w,%%r8w") X(tzcnt, m, ZC, "tzcnt 80(%%rdi),%%r8")              \
  X(lzcnt, q, ZC, "lzcnt %%r9,%%r8") X(lzcnt, l, ZC, "lzcnt %%r9d,%%r8d")                   \
  X(lzcnt, w, ZC, "lzcnt %%r9w,%%r8w") X(lzcnt, m, ZC, "lzcnt 80(%%rdi),%%r8")              \
  X(bzhi, q, ZSCO, "bzhi %%rcx,%%r9,%%r8") X(bzhi, l, ZSCO, "bzhi %%ecx,%%r9d,%%r8d")       \
  X(mulx, q, ALL, "mulx %%r9,%%r8,%%rcx") X(mulx, l, ALL, "mulx %%r9d,%%r8d,%%ecx")         \
  X(mulx, m, ALL, "mulx 80(%%rdi),%%r8,%%rcx")                                              \
  X(pdep, q, ALL, "pdep %%r9,%%rdx,%%r8") X(pdep, l, ALL, "pdep %%r9d,%%edx,%%r8d")         \
  X(pext, q, ALL, "pext %%r9,%%rdx,%%r8") X(pext, l, ALL, "pext 80(%%rdi),%%edx,%%r8d")     \
  X(rorx, q, ALL, "rorx $13,%%r9,%%r8") X(rorx, l, ALL, "rorx $37,%%r9d,%%r8d")             \
  X(sarx, q, ALL, "sarx %%rcx,%%r9,%%r8") X(sarx, l, ALL, "sarx %%ecx,%%r9d,%%r8d")         \
  X(shlx, q, ALL, "shlx %%rcx,%%r9,%%r8") X(shlx, l, ALL, "shlx %%ecx,80(%%rdi),%%r8d")     \
  X(shrx, q, ALL, "shrx %%rcx,%%r9,%%r8") X(shrx, l, ALL, "shrx %%ecx,%%r9d,%%r8d")         \
  X(adcx, q, ALL, "adcx %%r9,%%r8") X(adcx, l, ALL, "adcx %%r9d,%%r8d")                     \
  X(adcx, m, ALL, "adcx 80(%%rdi),%%r8")                                                    \
  X(adox, q, ALL, "adox %%r9,%%r8") X(adox, l, ALL, "adox %%r9d,%%r8d")                     \
  X(adox, m, ALL, "adox 80(%%rdi),%%r8")                                                    \
  X(cmpxchg16b, ne, ALL, "push %%rbx\n\tmov %%r9,%%rbx\n\tlock cmpxchg16b 32(%%rdi)\n\tpop %%rbx") \
  X(cmpxchg16b, eq, ALL,                                                                    \
    "push %%rbx\n\tmov %%r9,%%rbx\n\tmov 32(%%rdi),%%rax\n\tmov 40(%%rdi),%%rdx\n\t"        \
    "cmpxchg16b 32(%%rdi)\n\tpop %%rbx")                                                    \
  X(gsbase, use, ALL,                                                                       \
    "rdgsbase %%r11\n\tlea 32(%%rdi),%%rdx\n\twrgsbase %%rdx\n\tmov %%gs:8,%%r8\n\t"        \
    "rdgsbase %%rcx\n\tsub %%rdx,%%rcx\n\twrgsbase %%r11\n\txor %%edx,%%edx")               \
  X(gsbase, write, ALL, "rdgsbase %%r11\n\twrgsbase %%r9\n\trdgsbase %%r8\n\twrgsbase %%r11")

#define SLIST(X)                                                                            \
  X(fs_addps, PS, FSOFF "addps %%fs:(%%r11),%%xmm1")                                        \
  X(fs_movdqu, INT, FSOFF "movdqu %%xmm1,%%fs:(%%r11)")                                     \
  X(fs_pextrq, INT, FSOFF "pextrq $1,%%xmm1,%%fs:(%%r11)")                                  \
  X(gs_pcmpestri, STR, GS("pcmpestri $0x0c,%%gs:32,%%xmm1"))                                \
  X(gs_roundsd, PD, GS("roundsd $3,%%gs:32,%%xmm1"))                                        \
  X(gs_crc32, GPR, GS("crc32q %%gs:80,%%r8"))                                               \
  X(gs_movss, PS, GS("movss %%xmm1,%%gs:36"))
