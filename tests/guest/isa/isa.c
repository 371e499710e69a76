/* The ISA workload of tests/guest_isa.rs: every SIMD and bit-manipulation extension krr's CPU
 * models, run on fixed-seed pseudo-random inputs (with floating-point edge values) natively and
 * inside the Debian guest under krr; both must print the same lines.
 *
 * Each instruction form is a function running one asm block: it loads xmm0/xmm1/xmm2, RAX, RCX,
 * RDX, R8, R9, RFLAGS and MXCSR from a `struct st`, runs the instruction (registers fixed in the
 * asm text: destination xmm1, source xmm2 or the memory operand 32(%rdi), implicit xmm0, GPR
 * destination r8, GPR source r9 or 80(%rdi)) and stores them back with MXCSR and RFLAGS. The
 * hash of every case's whole state after the instruction (and the memory operand's bytes, so
 * store forms count) is one line per instruction: `NAME: <hash> n=<cases>`.
 *
 * Build: gcc -static -O2 -mno-red-zone -o isa isa.c   (the asm needs no -m flags)
 * Run:   isa [-v | -d NAME]   (-v: one line per form and immediate, to narrow a difference
 *        down; -d: the state after every case of line NAME, to find the input)
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The instruction forms: the X-macro lists LIST (the main table), ULIST (operands at any
 * address), RLIST (RIP-relative), HLIST (xmm8..xmm15), MLIST (prefixes), BLIST (GPR
 * extensions) and SLIST (FS/GS). */
#include "isa_forms.h"

typedef struct {
  uint8_t b[16];
} __attribute__((aligned(16))) v16;

struct st {
  v16 x0, x1, x2;                 /* 0, 16, 32 */
  uint64_t rax, rcx, rdx, r8, r9; /* 48, 56, 64, 72, 80 */
  uint64_t flags;                 /* 88 */
  uint32_t csr, pad;              /* 96 */
  uint64_t addr;                  /* 104: the memory operand of the unaligned forms, in r10 */
};

#define PRE                                                                              \
  "movdqa 0(%%rdi),%%xmm0\n\tmovdqa 16(%%rdi),%%xmm1\n\tmovdqa 32(%%rdi),%%xmm2\n\t"      \
  "mov 48(%%rdi),%%rax\n\tmov 56(%%rdi),%%rcx\n\tmov 64(%%rdi),%%rdx\n\t"                 \
  "mov 72(%%rdi),%%r8\n\tmov 80(%%rdi),%%r9\n\tpushq 88(%%rdi)\n\tpopfq\n\t"              \
  "ldmxcsr 96(%%rdi)\n\tmov 104(%%rdi),%%r10\n\t"
#define POST                                                                             \
  "\n\tpushfq\n\tpopq 88(%%rdi)\n\tstmxcsr 96(%%rdi)\n\t"                                 \
  "movdqa %%xmm0,0(%%rdi)\n\tmovdqa %%xmm1,16(%%rdi)\n\t"                                 \
  "mov %%rax,48(%%rdi)\n\tmov %%rcx,56(%%rdi)\n\tmov %%rdx,64(%%rdi)\n\t"                 \
  "mov %%r8,72(%%rdi)\n\tmov %%r9,80(%%rdi)"

#define FN(nm, code)                                                                     \
  static void nm(struct st *p) {                                                         \
    __asm__ volatile(PRE code POST                                                       \
                     :                                                                   \
                     : "D"(p)                                                            \
                     : "rax", "rcx", "rdx", "r8", "r9", "r10", "xmm0", "xmm1", "xmm2", "xmm3", "xmm8", \
                       "xmm9", "xmm10", "xmm15", "r11", "memory", \
                       "cc");                                                            \
  }

/* A signal the instruction raised (no = 0: none). */
struct sig_facts {
  int no, code;
  uint64_t addr;
};

/* Input kinds. */
enum { PS, PD, INT, STR, GPR };



#define D_G(line, id, kind, rs, ms) FN(f_##line##_##id##_r, rs) FN(f_##line##_##id##_m, ms)
#define D_G1(line, id, kind, s) FN(f_##line##_##id, s)
#define D_R(line, kind) D_G(line, x, kind, #line " %%xmm2,%%xmm1", #line " 32(%%rdi),%%xmm1")
#define D_RI(line, imm, kind)                                                               \
  D_G(line, imm, kind, #line " $" #imm ",%%xmm2,%%xmm1", #line " $" #imm ",32(%%rdi),%%xmm1")
LIST(D_R, D_RI, D_G, D_G1)

struct test {
  const char *line, *form;
  void (*fn)(struct st *);
  int kind;
  unsigned fmask; /* the RFLAGS bits compared (0: all six status flags) */
};
#define T_G(line, id, kind, rs, ms)                                                         \
  {#line, #id "/r", f_##line##_##id##_r, kind}, {#line, #id "/m", f_##line##_##id##_m, kind},
#define T_G1(line, id, kind, s) {#line, #id, f_##line##_##id, kind},
#define T_R(line, kind) T_G(line, x, kind, , )
#define T_RI(line, imm, kind) T_G(line, imm, kind, , )
static const struct test tests[] = {LIST(T_R, T_RI, T_G, T_G1)};


#define D_U(line, id, kind, s) FN(u_##line##_##id, s)
ULIST(D_U)
#define T_U(line, id, kind, s) {#line, #id, u_##line##_##id, kind},
static const struct test utests[] = {ULIST(T_U)};

/* RIP-relative memory operands (the displacement counts from the end of the instruction, after
 * its immediate): x2 goes to isa_ripmem before and comes back after (stores). */
v16 isa_ripmem;
#define RIP(s) "movdqa %%xmm2,isa_ripmem(%%rip)\n\t" s "\n\tmovdqa isa_ripmem(%%rip),%%xmm3\n\tmovdqa %%xmm3,32(%%rdi)"
#define D_RIP(line, id, kind, s) FN(rip_##line, RIP(s))
RLIST(D_RIP)
#define T_RIP(line, id, kind, s) {"rip-" #line, #id, rip_##line, kind},
static const struct test rip_tests[] = {RLIST(T_RIP)};

/* xmm8..xmm15 (REX.R/REX.B): x0, x1, x2 in xmm8, xmm9, xmm10 (xmm15 for some). */
#define HIGH(s)                                                                            \
  "movdqa %%xmm0,%%xmm8\n\tmovdqa %%xmm1,%%xmm9\n\tmovdqa %%xmm2,%%xmm10\n\t" s             \
  "\n\tmovdqa %%xmm8,%%xmm0\n\tmovdqa %%xmm9,%%xmm1"
#define D_HIGH(line, kind, s) FN(high_##line, HIGH(s))
HLIST(D_HIGH)
#define T_HIGH(line, kind, s) {"high-" #line, "x", high_##line, kind},
static const struct test high_tests[] = {HLIST(T_HIGH)};

#define D_MISC(line, s) FN(misc_##line, s)
MLIST(D_MISC)
#define T_MISC(line, s) {"prefix-" #line, "x", misc_##line, INT},
static const struct test misc_tests[] = {MLIST(T_MISC)};

/* The GPR extensions of krr's max model: BMI1, BMI2, ADX, LZCNT (ABM), CMPXCHG16B, FSGSBASE
 * (GS base: written, read back, used; a non-canonical write is #GP). Flags the SDM leaves
 * undefined are not compared (ZC: ZF CF; ZCO: ZF CF OF; ZSCO: ZF SF CF OF). */
#define ZC 0x41
#define ZCO 0x841
#define ZSCO 0x8c1
#define ALL 0x8d5
#define D_B(line, id, mask, s) FN(b_##line##_##id, s)
BLIST(D_B)
#define T_B(line, id, mask, s) {#line, #id, b_##line##_##id, GPR, mask},
static const struct test gpr_tests[] = {BLIST(T_B)};

/* SIMD memory operands through FS (glibc's TLS base; r11 = the operand's offset from it) and
 * GS (its base set to the struct). */
#define FSOFF "rdfsbase %%r11\n\tneg %%r11\n\tlea 32(%%rdi,%%r11),%%r11\n\t"
#define GS(s) "rdgsbase %%r10\n\twrgsbase %%rdi\n\t" s "\n\twrgsbase %%r10"
#define D_S(line, kind, s) FN(s_##line, s)
SLIST(D_S)
#define T_S(line, kind, s) {#line, "x", s_##line, kind},
static const struct test seg_tests[] = {SLIST(T_S)};

/* splitmix64 */
static uint64_t rng;
static uint64_t next(void) {
  uint64_t z = (rng += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
static uint64_t seed_of(const char *s) {
  uint64_t h = 0xcbf29ce484222325ull;
  while (*s) h = (h ^ (uint8_t)*s++) * 0x100000001b3ull;
  return h;
}
struct hash {
  uint64_t h, n;
};
static void mix(struct hash *h, const void *p, size_t len) {
  const uint8_t *b = p;
  for (size_t i = 0; i < len; i++) h->h = (h->h ^ b[i]) * 0x100000001b3ull;
}

static const uint32_t f32_edges[] = {
    0x00000000, 0x80000000, 0x3f800000, 0xbf800000, 0x00000001, 0x80000001, 0x007fffff,
    0x807fffff, 0x00400000, 0x00800000, 0x80800000, 0x7f7fffff, 0xff7fffff, 0x7f800000,
    0xff800000, 0x7fc00000, 0xffc00000, 0x7fc12345, 0x7f800001, 0xff800001, 0x7fa00000,
    0x7fbfffff, 0x3fc00000, 0x3f000000, 0xbf000000, 0x40200000, 0xc0200000, 0x40600000,
    0x3effffff, 0x4f000000, 0xcf000000, 0x4effffff, 0xcf000001, 0x5f000000, 0xdf000000,
    0x5effffff, 0x4b000000, 0x4b7fffff, 0x34000000, 0x0c000000, 0x72000000, 0x3f7fffff,
};
static const uint64_t f64_edges[] = {
    0x0000000000000000, 0x8000000000000000, 0x3ff0000000000000, 0xbff0000000000000,
    0x0000000000000001, 0x8000000000000001, 0x000fffffffffffff, 0x0008000000000000,
    0x0010000000000000, 0x8010000000000000, 0x7fefffffffffffff, 0xffefffffffffffff,
    0x7ff0000000000000, 0xfff0000000000000, 0x7ff8000000000000, 0xfff8000000000000,
    0x7ff8000000012345, 0x7ff0000000000001, 0xfff0000000000001, 0x7ff4000000000000,
    0x3ff8000000000000, 0x3fe0000000000000, 0xbfe0000000000000, 0x4004000000000000,
    0xc004000000000000, 0x3fdfffffffffffff, 0x41e0000000000000, 0xc1e0000000000000,
    0x41dfffffffc00000, 0xc1e0000000200000, 0x43e0000000000000, 0xc3e0000000000000,
    0x43dfffffffffffff, 0x4330000000000000, 0x3ca0000000000000, 0x0370000000000000,
    0x36a0000000000000, 0x47efffffe0000000, 0x380fffffffffffff, 0x3810000000000000,
    0x3e9fffffffffffff, 0x3fefffffffffffff,
};
#define N(a) (sizeof(a) / sizeof((a)[0]))

static uint32_t rand_f32(void) {
  uint64_t r = next();
  switch (r & 7) {
  case 0: case 1: case 2: return f32_edges[(r >> 8) % N(f32_edges)];
  case 3: return (uint32_t)(r >> 32);
  case 4: /* near the denormal boundary */
    return (uint32_t)((r >> 63) << 31) | (uint32_t)(((r >> 20) % 3) << 23) | ((r >> 32) & 0x7fffff);
  default: /* a modest number: exponent around 1.0, sometimes an integer */
    return (uint32_t)((r >> 63) << 31) | (uint32_t)((112 + (r >> 40) % 40) << 23) |
           ((r >> 8) & (((r >> 50) & 1) ? 0x7fffff : 0x7f0000));
  }
}
static uint64_t rand_f64(void) {
  uint64_t r = next();
  switch (r & 7) {
  case 0: case 1: case 2: return f64_edges[(r >> 8) % N(f64_edges)];
  case 3: return next();
  case 4: return (r & (1ull << 63)) | (((r >> 20) % 3) << 52) | (next() & 0xfffffffffffffull);
  case 5: /* the float range's edges, as doubles (CVTSD2SS, rounding to float) */
    return (r & (1ull << 63)) | ((0x36aull + (r >> 40) % 0xa0) << 52) |
           (next() & 0xfffffffffffffull) | ((r >> 16) & 1 ? 0 : 0xfffffff);
  default:
    return (r & (1ull << 63)) | ((1008 + (r >> 40) % 60) << 52) |
           (next() & ((r >> 50) & 1 ? 0xfffffffffffffull : 0xffff000000000ull));
  }
}
static uint64_t rand_int(void) {
  uint64_t r = next(), v = next();
  switch (r & 7) {
  case 0: return 0;
  case 1: return ~0ull;
  case 2: return 0x8080808080808080ull ^ (v & 0x0101010101010101ull * ((r >> 8) & 0xff));
  case 3: return 0x7fff80007fff8000ull ^ (v & 0x0003000300030003ull);
  case 4: return v & 0x0f0f0f0f0f0f0f0full; /* small bytes */
  case 5: return (r >> 32) & 0xff ? v & 0x00ff00ff00ff00ffull : (int64_t)(int8_t)v;
  default: return v;
  }
}
static void fill(v16 *x, int kind) {
  uint64_t q[2];
  for (int i = 0; i < 2; i++) {
    if (kind == PS)
      q[i] = rand_f32() | (uint64_t)rand_f32() << 32;
    else if (kind == PD)
      q[i] = rand_f64();
    else
      q[i] = rand_int();
  }
  memcpy(x, q, 16);
}
/* PCMPxSTRx strings: bytes/words from a small alphabet (so matches happen), embedded zeros. */
static void fill_str(v16 *x) {
  static const uint8_t alpha[] = {'a', 'b', 'c', 'z', 0, 0x80, 0xff, 'A', '0', '9'};
  for (int i = 0; i < 16; i++) x->b[i] = alpha[next() % N(alpha)];
  if (next() % 3 == 0) memset(x->b + next() % 16, 'a', 1 + next() % 3);
  if (next() % 4 == 0) /* no zero at all */
    for (int i = 0; i < 16; i++)
      if (!x->b[i]) x->b[i] = 'q';
}
static uint64_t rand_len(void) {
  uint64_t r = next();
  switch (r & 3) {
  case 0: return (uint64_t)(int64_t)((int)((r >> 8) % 41) - 20);
  case 1: return (r >> 8) % 17;
  case 2: return (uint32_t)(r >> 8) | (r & 0x10 ? 0xffffffff00000000ull : 0);
  default: return next();
  }
}
static uint64_t rand_gpr(void) {
  uint64_t r = next();
  switch (r & 7) {
  case 0: return (int64_t)(int32_t)(0x80000000u ^ ((r >> 8) & 3));
  case 1: return 0x8000000000000000ull ^ ((r >> 8) & 3);
  case 2: return (r >> 8) & 0xff;
  case 3: return (int64_t)(int16_t)(r >> 8);
  case 4: return (uint32_t)(0x7fffffffu - ((r >> 8) & 3));
  default: return next();
  }
}
static uint32_t rand_csr(void) {
  uint64_t r = next();
  uint32_t c = 0x1f80 | (uint32_t)((r >> 8) & 3) << 13; /* rounding control */
  if (r & 0x100000) c |= 0x40;                            /* DAZ */
  if (r & 0x200000) c |= 0x8000;                          /* FTZ */
  if ((r & 0xc00000) == 0) c |= (r >> 32) & 0x3f;         /* sticky flags already set */
  return c;
}

static int cases = 600;
/* `isa -d NAME`: every case of the forms of line NAME (without prefix), to find the input. */
static const char *dump_line;
static void dump(const char *what, const struct test *t, int i, const struct sig_facts *f,
                 const struct st *s) {
  if (!dump_line || strcmp(dump_line, t->line)) return;
  const uint64_t *x = (const uint64_t *)s;
  printf("%s %s %d: sig %d/%d/%llx", what, t->form, i, f->no, f->code,
         (unsigned long long)f->addr);
  for (size_t k = 0; k < sizeof *s / 8; k++) printf(" %016llx", (unsigned long long)x[k]);
  printf("\n");
}

static void setup(struct st *s, int kind);
static struct sig_facts run_catching(const struct test *t, struct st *s);

static void run_test(const struct test *t, struct hash *h) {
  char key[96];
  snprintf(key, sizeof key, "%s %s", t->line, t->form);
  rng = seed_of(key);
  for (int i = 0; i < cases; i++) {
    struct st s;
    setup(&s, t->kind);
    struct sig_facts f = run_catching(t, &s);
    if (f.no) mix(h, &f, sizeof f);
    dump("", t, i, &f, &s);
    mix(h, &s, sizeof s);
    h->n++;
  }
}

/* XLAT: AL := [rBX + AL], 64-bit and 32-bit address size (EBX's upper half ignored). */
static uint8_t xlat_table[256];
static void xlat_test(struct hash *h) {
  rng = seed_of("xlat");
  for (int i = 0; i < cases; i++) {
    if (i % 16 == 0)
      for (int k = 0; k < 256; k++) xlat_table[k] = (uint8_t)next();
    uint64_t a = next(), b = next(), t = (uint64_t)(uintptr_t)xlat_table;
    __asm__ volatile("xlatb" : "+a"(a) : "b"(xlat_table) : "memory");
    __asm__ volatile("addr32 xlatb" : "+a"(b) : "b"(t | next() << 32) : "memory");
    mix(h, &a, 8);
    mix(h, &b, 8);
    h->n++;
  }
}

/* REP MOVS/STOS (byte and quadword, forward and backward, overlapping, unaligned, lengths
 * 0..4096) and glibc's memcpy/memmove/memset/strlen/memcmp/memchr (whichever variants its
 * ifuncs pick on this CPU). */
static uint8_t strbuf[3 * 4096 + 512] __attribute__((aligned(64)));
static void mix_buf(struct hash *h) {
  uint64_t acc = 0;
  for (size_t i = 0; i < sizeof strbuf; i += 8) {
    uint64_t q;
    memcpy(&q, strbuf + i, 8);
    acc = (acc ^ q) * 0x100000001b3ull + i;
  }
  mix(h, &acc, 8);
}
static size_t rand_n(void) {
  uint64_t r = next();
  switch (r & 3) {
  case 0: return (r >> 8) % 65;
  case 1: return 4096 - (r >> 8) % 70;
  default: return (r >> 8) % 4097;
  }
}
enum { MOVSB, MOVSQ, STOSB, STOSQ, MEMCPY, MEMMOVE, MEMSET, STRLEN, MEMCMP, MEMCHR, NSTR };
static const char *const str_names[] = {"rep_movsb", "rep_movsq", "rep_stosb", "rep_stosq",
                                        "memcpy",    "memmove",   "memset",    "strlen",
                                        "memcmp",    "memchr"};
static void str_test(int op, struct hash *h) {
  rng = seed_of(str_names[op]);
  for (int i = 0; i < cases / 4; i++) {
    for (size_t k = 0; k < sizeof strbuf; k += 8) {
      uint64_t q = next();
      memcpy(strbuf + k, &q, 8);
    }
    size_t n = rand_n(), q = op == MOVSQ || op == STOSQ ? 8 : 1;
    if (q == 8) n /= 8;
    size_t src = 256 + next() % 4096, dst;
    uint64_t r = next();
    int back = (op <= STOSQ) && (r & 7) == 0;
    if ((r >> 8) & 1) /* overlapping */
      dst = src + (int)((r >> 16) % 129) - 64;
    else
      dst = 256 + (r >> 16) % (2 * 4096);
    uint64_t rs = (uint64_t)(uintptr_t)(strbuf + src), rd = (uint64_t)(uintptr_t)(strbuf + dst);
    uint64_t c = n, a = next(), ret = 0;
    if (back) { /* DF=1: the pointers start at the last element */
      rs += n ? (n - 1) * q : 0;
      rd += n ? (n - 1) * q : 0;
    }
    switch (op) {
    case MOVSB:
      if (back)
        __asm__ volatile("std\n\trep movsb\n\tcld" : "+S"(rs), "+D"(rd), "+c"(c) : : "memory");
      else
        __asm__ volatile("rep movsb" : "+S"(rs), "+D"(rd), "+c"(c) : : "memory");
      break;
    case MOVSQ:
      if (back)
        __asm__ volatile("std\n\trep movsq\n\tcld" : "+S"(rs), "+D"(rd), "+c"(c) : : "memory");
      else
        __asm__ volatile("rep movsq" : "+S"(rs), "+D"(rd), "+c"(c) : : "memory");
      break;
    case STOSB:
      if (back)
        __asm__ volatile("std\n\trep stosb\n\tcld" : "+D"(rd), "+c"(c) : "a"(a) : "memory");
      else
        __asm__ volatile("rep stosb" : "+D"(rd), "+c"(c) : "a"(a) : "memory");
      break;
    case STOSQ:
      if (back)
        __asm__ volatile("std\n\trep stosq\n\tcld" : "+D"(rd), "+c"(c) : "a"(a) : "memory");
      else
        __asm__ volatile("rep stosq" : "+D"(rd), "+c"(c) : "a"(a) : "memory");
      break;
    case MEMCPY: /* no overlap */
      if (dst < src + n && src < dst + n) dst = src + n + (r >> 32) % 64;
      memcpy(strbuf + dst, strbuf + src, n);
      break;
    case MEMMOVE: memmove(strbuf + dst, strbuf + src, n); break;
    case MEMSET: memset(strbuf + dst, (int)a, n); break;
    case STRLEN:
      strbuf[src + n] = 0;
      for (size_t k = 0; k < n; k++)
        if (!strbuf[src + k]) strbuf[src + k] = 1;
      ret = strlen((char *)strbuf + src);
      break;
    case MEMCMP:
      memcpy(strbuf + dst, strbuf + src, n);
      if (n && (r >> 40) & 1) strbuf[dst + (r >> 44) % n] ^= 1 << ((r >> 56) & 7);
      if (dst < src + n && src < dst + n) ret = 7; /* overlapping: skip */
      else ret = (uint64_t)(memcmp(strbuf + src, strbuf + dst, n) > 0) * 2 + !!memcmp(strbuf + src, strbuf + dst, n);
      break;
    case MEMCHR: {
      const uint8_t *p = memchr(strbuf + src, (int)(a & 0xff), n);
      ret = p ? (uint64_t)(p - strbuf) : ~0ull;
      break;
    }
    }
    uint64_t out[4] = {rs - (uint64_t)(uintptr_t)strbuf, rd - (uint64_t)(uintptr_t)strbuf, c, ret};
    mix(h, out, sizeof out);
    mix_buf(h);
    h->n++;
  }
}

/* Signals (SIGFPE for unmasked SIMD exceptions, SIGSEGV for #GP and #PF): the number, si_code,
 * si_addr and the registers the handler sees (the instruction's destination unchanged). */
#include <setjmp.h>
#include <sys/mman.h>
#include <ucontext.h>
static sigjmp_buf sig_jump;
static volatile int sig_no, sig_code;
static volatile uint64_t sig_addr, sig_rsi, sig_rdi;
static struct st sig_st;
static void on_signal(int sig, siginfo_t *si, void *ctx) {
  ucontext_t *uc = ctx;
  sig_no = sig;
  sig_code = si->si_code;
  sig_addr = (uint64_t)(uintptr_t)si->si_addr;
  memcpy(&sig_st.x0, &uc->uc_mcontext.fpregs->_xmm[0], 16);
  memcpy(&sig_st.x1, &uc->uc_mcontext.fpregs->_xmm[1], 16);
  sig_st.csr = uc->uc_mcontext.fpregs->mxcsr;
  sig_st.r8 = uc->uc_mcontext.gregs[REG_R8];
  sig_st.rcx = uc->uc_mcontext.gregs[REG_RCX];
  sig_rsi = uc->uc_mcontext.gregs[REG_RSI];
  sig_rdi = uc->uc_mcontext.gregs[REG_RDI];
  siglongjmp(sig_jump, 1);
}
/* Runs t on s; on a signal, s is the state the handler saw. Returns the signal's facts. */
static struct sig_facts run_catching(const struct test *t, struct st *s) {
  static struct st in;
  struct sig_facts f = {0, 0, 0};
  in = *s;
  if (sigsetjmp(sig_jump, 1) == 0) {
    t->fn(s);
  } else {
    *s = in;
    s->x0 = sig_st.x0;
    s->x1 = sig_st.x1;
    s->csr = sig_st.csr;
    s->r8 = sig_st.r8;
    s->rcx = sig_st.rcx;
    f.no = sig_no;
    f.code = sig_code;
    f.addr = sig_addr;
  }
  __builtin_ia32_ldmxcsr(0x1f80);
  s->flags &= t->fmask ? t->fmask : 0x8d5;
  return f;
}
static void setup(struct st *s, int kind) {
  memset(s, 0, sizeof *s);
  if (kind == STR) {
    fill_str(&s->x0);
    fill_str(&s->x1);
    fill_str(&s->x2);
    s->rax = rand_len();
    s->rdx = rand_len();
  } else {
    fill(&s->x0, kind == GPR ? INT : kind);
    fill(&s->x1, kind == GPR ? INT : kind);
    fill(&s->x2, kind == GPR ? INT : kind);
    s->rax = rand_gpr();
    s->rdx = rand_gpr();
  }
  s->rcx = rand_gpr();
  s->r8 = rand_gpr();
  s->r9 = rand_gpr();
  s->flags = 0x202 | (next() & 0x8d5);
  s->csr = rand_csr();
}

/* Unmasked SIMD floating-point exceptions: SIGFPE's si_code, MXCSR and the unchanged
 * destination, or the results when nothing traps. */
/* Every floating-point line: kind PS or PD, or an integer-to-FP conversion (inexact). */
static int fp_line(const struct test *t) {
  return t->kind == PS || t->kind == PD || !strncmp(t->line, "cvtsi2s", 7);
}
static void unmasked_test(const struct test *t, struct hash *h) {
  char key[96];
  snprintf(key, sizeof key, "unmasked %s %s", t->line, t->form);
  rng = seed_of(key);
  for (int i = 0; i < cases / 4; i++) {
    struct st s;
    setup(&s, t->kind);
    s.csr &= ~(uint32_t)((next() & 0x3f) << 7); /* some exceptions unmasked */
    struct sig_facts f = run_catching(t, &s);
    f.addr = 0;
    mix(h, &f, sizeof f);
    mix(h, &s, sizeof s);
    h->n++;
  }
}

/* The unaligned forms: at offsets anywhere in a page, aligned ones, and ones crossing into the
 * next page (accessible, or with page_fault an inaccessible one). The facts, the state and the
 * 48 bytes around the operand (stores) are hashed; addresses relative to the page boundary. */
static uint8_t ubuf[3 * 4096] __attribute__((aligned(4096)));
static uint8_t *fault_pages;
static void unaligned_test(const struct test *t, int page_fault, struct hash *h) {
  char key[96];
  snprintf(key, sizeof key, "%s %s %s", page_fault ? "page-fault" : "unaligned", t->line, t->form);
  rng = seed_of(key);
  uint8_t *boundary = page_fault ? fault_pages + 4096 : ubuf + 8192;
  for (int i = 0; i < cases / 4; i++) {
    uint64_t r = next();
    size_t k = 1 + (r >> 8) % 16;
    uint8_t *a = boundary - k;
    if (!page_fault && (r & 3) == 1) a = boundary - 16 * (1 + (r >> 16) % 4);
    if (!page_fault && (r & 3) >= 2) a = ubuf + 4096 + (r >> 16) % 4096;
    uint8_t *w = page_fault ? boundary - 48 : a - 16;
    for (int j = 0; j < 48; j++) w[j] = (uint8_t)next();
    v16 op;
    if (t->kind == STR)
      fill_str(&op);
    else
      fill(&op, t->kind == GPR ? INT : t->kind);
    /* MXCSR bit 17 is AMD's misaligned-SSE mode (MXCSR_MASK 0x2ffff on CPUs with
     * MisAlignSse): LDMXCSR accepts it there, krr's CPU (MXCSR_MASK 0xffff) raises #GP as
     * Intel's do. The other reserved bits (#GP everywhere) stay. */
    if (!strcmp(t->line, "ldmxcsr")) op.b[2] &= (uint8_t)~2;
    memcpy(a, &op, page_fault ? k : 16);
    struct st s;
    setup(&s, t->kind);
    s.addr = (uint64_t)(uintptr_t)a;
    struct sig_facts f = run_catching(t, &s);
    s.addr = (uint64_t)(a - boundary);
    f.addr = f.addr ? f.addr - (uint64_t)(uintptr_t)boundary : 1;
    mix(h, &f, sizeof f);
    mix(h, &s, sizeof s);
    mix(h, w, 48);
    dump(page_fault ? "page-fault" : "unaligned", t, i, &f, &s);
    h->n++;
  }
}

/* REP MOVSB/STOSB/MOVSQ running into an inaccessible page: the fault leaves RCX, RSI and RDI at
 * the faulting element and the bytes before it written (what the kernel's copy_user fixups
 * count on). */
static void rep_fault_test(int op, struct hash *h) {
  static const char *const names[] = {"rep_movsb", "rep_movsq", "rep_stosb"};
  rng = seed_of(names[op]);
  uint8_t *boundary = fault_pages + 4096;
  for (int i = 0; i < cases / 4; i++) {
    uint64_t r = next();
    size_t k = (r >> 8) % 300, n = k + 1 + (r >> 24) % 2000, q = op == 1 ? 8 : 1;
    for (size_t j = 0; j < 512; j++) boundary[j - 512] = (uint8_t)next();
    for (size_t j = 0; j < 4096; j++) ubuf[j] = (uint8_t)next();
    uint64_t src = (uint64_t)(uintptr_t)(ubuf + (r >> 40) % 64);
    uint64_t dst = (uint64_t)(uintptr_t)(boundary - k), c = (n + q - 1) / q, a = next();
    uint64_t out[5] = {0, 0, 0, 0, 0};
    if (sigsetjmp(sig_jump, 1) == 0) {
      if (op == 0)
        __asm__ volatile("rep movsb" : "+S"(src), "+D"(dst), "+c"(c) : : "memory");
      else if (op == 1)
        __asm__ volatile("rep movsq" : "+S"(src), "+D"(dst), "+c"(c) : : "memory");
      else
        __asm__ volatile("rep stosb" : "+D"(dst), "+c"(c) : "a"(a) : "memory");
      out[0] = 1;
    } else {
      out[1] = (uint64_t)sig_no << 32 | (uint32_t)sig_code;
      out[2] = sig_addr - (uint64_t)(uintptr_t)boundary;
      c = sig_st.rcx;
      src = op == 2 ? 0 : sig_rsi;
      dst = sig_rdi;
    }
    out[3] = c;
    out[4] = (dst - (uint64_t)(uintptr_t)boundary) ^ (src ? (src - (uint64_t)(uintptr_t)ubuf) << 32 : 0);
    mix(h, out, sizeof out);
    mix(h, boundary - 512, 512);
    h->n++;
  }
}

/* FXSAVE/FXRSTOR and FNSTCW/FLDCW/FNSTSW/FNINIT: a saved image with random XMM registers, a
 * random MXCSR (reserved bits: #GP) and FCW restored, saved again and read back. Bytes 28..31
 * (MXCSR_MASK: 0x2ffff on AMD hosts with MisAlignSse, krr's 0xffff) and 416.. (reserved,
 * available) are not compared. */
static void fxsave_test(struct hash *h) {
  static uint8_t img[512] __attribute__((aligned(16))), out[512] __attribute__((aligned(16)));
  static const uint16_t fcws[] = {0x37f, 0x27f, 0x07f, 0xf7f, 0x360, 0x77f};
  rng = seed_of("fxsave");
  for (int i = 0; i < cases / 4; i++) {
    __asm__ volatile("fninit\n\tfxsave64 %0" : "=m"(img));
    for (int k = 160; k < 416; k += 8) {
      uint64_t q = rand_int();
      memcpy(img + k, &q, 8);
    }
    uint16_t fcw = fcws[next() % N(fcws)], cw = 0, sw = 0xffff;
    uint32_t bad = 1u << (16 + next() % 16); /* a reserved bit, but not AMD's bit 17 */
    uint32_t csr = rand_csr() ^ (next() % 8 == 0 ? (bad == 1u << 17 ? 1u << 18 : bad) : 0);
    memcpy(img, &fcw, 2);
    memcpy(img + 24, &csr, 4);
    memset(out, 0x5a, sizeof out);
    int sig = 0;
    if (sigsetjmp(sig_jump, 1) == 0)
      __asm__ volatile("fxrstor64 %3\n\tfxsave64 %0\n\tfnstcw %1\n\tfldcw %4\n\tfnstcw %1\n\t"
                       "fnstsw %%ax\n\tmov %%ax,%2\n\tfninit"
                       : "=m"(out), "=m"(cw), "=m"(sw)
                       : "m"(img), "m"(fcws[i % N(fcws)])
                       : "rax", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7",
                         "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15",
                         "memory");
    else
      sig = sig_no;
    __builtin_ia32_ldmxcsr(0x1f80);
    memset(out + 28, 0, 4);
    mix(h, &sig, sizeof sig);
    mix(h, &cw, sizeof cw);
    mix(h, &sw, sizeof sw);
    mix(h, out, 416);
    h->n++;
  }
}

/* x87: long double arithmetic and libm's long double functions (static glibc runs them on
 * the x87, transcendental instructions included), conversions, comparisons and BCD under the
 * four rounding modes, FADD/FMUL/FDIV/FSQRT under the three precisions, the exception flags;
 * and unmasked exceptions, whose #MF reaches the program as SIGFPE. */
#include <fenv.h>
#include <math.h>
static long double rand_ld(void) {
  union {
    long double v;
    struct {
      uint64_t m;
      uint16_t se;
    } p;
  } u;
  memset(&u, 0, sizeof u);
  uint64_t r = next();
  uint16_t sign = (r >> 20) & 1 ? 0x8000 : 0;
  switch (r & 7) {
  case 0: u.p.m = 0; u.p.se = sign; break;                                 /* zero */
  case 1: u.p.m = next() >> 12; u.p.se = sign; break;                      /* denormal */
  case 2: u.p.m = 1ull << 63; u.p.se = 0x7fff | sign; break;               /* infinity */
  case 3: u.p.m = 0xc000000000000000ull | (next() >> 2); u.p.se = 0x7fff; break; /* NaN */
  default: u.p.m = next() | 1ull << 63; u.p.se = (0x3fff - 40 + (r >> 8) % 80) | sign;
  }
  return u.v;
}
static void mix_ld(struct hash *h, long double v) { mix(h, &v, 10); }
static void x87_test(struct hash *h) {
  static const int modes[] = {FE_TONEAREST, FE_DOWNWARD, FE_UPWARD, FE_TOWARDZERO};
  static const uint16_t pcs[] = {0x037f, 0x027f, 0x007f};
  rng = seed_of("x87");
  for (int i = 0; i < cases; i++) {
    volatile long double a = rand_ld(), b = rand_ld();
    fesetround(modes[i % 4]);
    feclearexcept(FE_ALL_EXCEPT);
    volatile long double r[16];
    r[0] = a + b;
    r[1] = a * b;
    r[2] = a / b;
    r[3] = sqrtl(a);
    r[4] = sinl(a);
    r[5] = cosl(b);
    r[6] = tanl(a);
    r[7] = atan2l(a, b);
    r[8] = expl(b);
    r[9] = logl(a);
    r[10] = rintl(a);
    r[11] = fmodl(a, b);
    r[12] = remainderl(a, b);
    r[13] = (long double)(long long)a;
    r[14] = (long double)(double)a;
    r[15] = (long double)(float)b;
    for (int k = 0; k < 16; k++) mix_ld(h, r[k]);
    int ex = fetestexcept(FE_ALL_EXCEPT);
    int cmp = (a < b) | (a == b) << 1 | isunordered(a, b) << 2 | (a > b) << 3;
    mix(h, &ex, sizeof ex);
    mix(h, &cmp, sizeof cmp);
    uint16_t pc = pcs[i % 3], sw;
    long double la = a, lb = b, sum, prod, quot, root;
    uint8_t bcd[10];
    __asm__ volatile("fninit\n\tfldcw %6\n\tfldt %7\n\tfldt %8\n\t"
                     "fld %%st(1)\n\tfadd %%st(1), %%st\n\tfstpt %0\n\t"
                     "fld %%st(1)\n\tfmul %%st(1), %%st\n\tfstpt %1\n\t"
                     "fld %%st(1)\n\tfdiv %%st(1), %%st\n\tfstpt %2\n\t"
                     "fstp %%st(0)\n\tfsqrt\n\tfstpt %3\n\t"
                     "fldt %7\n\tfbstp %4\n\tfnstsw %5\n\tfninit"
                     : "=m"(sum), "=m"(prod), "=m"(quot), "=m"(root), "=m"(bcd), "=m"(sw)
                     : "m"(pc), "m"(la), "m"(lb)
                     : "memory");
    mix_ld(h, sum);
    mix_ld(h, prod);
    mix_ld(h, quot);
    mix_ld(h, root);
    mix(h, bcd, sizeof bcd);
    mix(h, &sw, sizeof sw);
    if (dump_line && !strcmp(dump_line, "x87")) {
      printf("case %d:", i);
      for (int k = 0; k < 16; k++) {
        long double v = r[k];
        uint8_t *p = (uint8_t *)&v;
        printf(" %02x%02x.%02x%02x%02x%02x%02x%02x%02x%02x", p[9], p[8], p[7], p[6], p[5], p[4],
               p[3], p[2], p[1], p[0]);
      }
      printf(" ex=%x cmp=%x sw=%04x\n", ex, cmp, sw);
    }
    h->n++;
  }
  fesetround(FE_TONEAREST);
  feclearexcept(FE_ALL_EXCEPT);
}
static void x87_unmasked_test(struct hash *h) {
  static const int excepts[] = {FE_DIVBYZERO, FE_INVALID, FE_OVERFLOW, FE_UNDERFLOW};
  for (int i = 0; i < 4; i++) {
    volatile long double one = 1.0L, zero = 0.0L, big = 1e4000L, tiny = 1e-4000L, r = 0;
    sig_no = 0;
    sig_code = 0;
    feclearexcept(FE_ALL_EXCEPT);
    feenableexcept(excepts[i]);
    if (sigsetjmp(sig_jump, 1) == 0) {
      switch (i) {
      case 0: r = one / zero; break;
      case 1: r = sqrtl(-one); break;
      case 2: r = big * big; break;
      default: r = tiny * tiny; break;
      }
      r = r + one; /* the next x87 instruction takes the pending exception */
    }
    fedisableexcept(FE_ALL_EXCEPT);
    __asm__ volatile("fninit");
    int got[2] = {sig_no, sig_code};
    mix(h, got, sizeof got);
    h->n++;
  }
}

static void print_line(const char *prefix, const char *line, const struct hash *h) {
  printf("%s%s: %016llx n=%llu\n", prefix, line, (unsigned long long)h->h,
         (unsigned long long)h->n);
}

#include "isa_avx.h"

static void extra_tests(int verbose) {
  struct hash h = {0xcbf29ce484222325ull, 0};
  xlat_test(&h);
  printf("xlat: %016llx n=%llu\n", (unsigned long long)h.h, (unsigned long long)h.n);
  struct hash fx = {0xcbf29ce484222325ull, 0};
  fxsave_test(&fx);
  print_line("", "fxsave", &fx);
  struct hash x = {0xcbf29ce484222325ull, 0};
  x87_test(&x);
  print_line("", "x87", &x);
  struct hash xu = {0xcbf29ce484222325ull, 0};
  x87_unmasked_test(&xu);
  print_line("", "x87-unmasked", &xu);
  avx_tests();
  for (int op = 0; op < NSTR; op++) {
    struct hash s = {0xcbf29ce484222325ull, 0};
    str_test(op, &s);
    printf("%s: %016llx n=%llu\n", str_names[op], (unsigned long long)s.h,
           (unsigned long long)s.n);
  }
  for (size_t i = 0; i < N(tests);) {
    struct hash u = {0xcbf29ce484222325ull, 0};
    size_t j = i;
    for (; j < N(tests) && !strcmp(tests[j].line, tests[i].line); j++)
      if (fp_line(&tests[j])) unmasked_test(&tests[j], &u);
    if (u.n) print_line("unmasked-", tests[i].line, &u);
    i = j;
  }
  for (int pf = 0; pf < 2; pf++)
    for (size_t i = 0; i < N(utests);) {
      struct hash u = {0xcbf29ce484222325ull, 0};
      size_t j = i;
      for (; j < N(utests) && !strcmp(utests[j].line, utests[i].line); j++) {
        struct hash form = {0xcbf29ce484222325ull, 0};
        unaligned_test(&utests[j], pf, &form);
        if (verbose)
          printf("  %s%s %s: %016llx n=%llu\n", pf ? "page-fault-" : "unaligned-", utests[j].line,
                 utests[j].form, (unsigned long long)form.h, (unsigned long long)form.n);
        mix(&u, &form, sizeof form);
        u.n += form.n;
      }
      print_line(pf ? "page-fault-" : "unaligned-", utests[i].line, &u);
      i = j;
    }
  for (int op = 0; op < 3; op++) {
    static const char *const names[] = {"rep_movsb", "rep_movsq", "rep_stosb"};
    struct hash u = {0xcbf29ce484222325ull, 0};
    rep_fault_test(op, &u);
    print_line("page-fault-", names[op], &u);
  }
}

/* One line per run of consecutive entries with the same line name. */
static void run_table(const struct test *tab, size_t n, int verbose) {
  for (size_t i = 0; i < n;) {
    struct hash line = {0xcbf29ce484222325ull, 0};
    size_t j = i;
    for (; j < n && !strcmp(tab[j].line, tab[i].line); j++) {
      struct hash form = {0xcbf29ce484222325ull, 0};
      run_test(&tab[j], &form);
      if (verbose) printf("  %s %s: %016llx n=%llu\n", tab[j].line, tab[j].form,
                          (unsigned long long)form.h, (unsigned long long)form.n);
      mix(&line, &form, sizeof form);
      line.n += form.n;
    }
    printf("%s: %016llx n=%llu\n", tab[i].line, (unsigned long long)line.h,
           (unsigned long long)line.n);
    i = j;
  }
}

int main(int argc, char **argv) {
  int verbose = argc > 1 && !strcmp(argv[1], "-v");
  if (argc > 2 && !strcmp(argv[1], "-d")) dump_line = argv[2];
  if (getenv("ISA_CASES")) cases = atoi(getenv("ISA_CASES"));
  setvbuf(stdout, NULL, _IOLBF, 0);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_signal;
  sa.sa_flags = SA_SIGINFO | SA_NODEFER;
  sigaction(SIGFPE, &sa, NULL);
  sigaction(SIGSEGV, &sa, NULL);
  sigaction(SIGILL, &sa, NULL);
  fault_pages = mmap(NULL, 2 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (fault_pages == MAP_FAILED || mprotect(fault_pages + 4096, 4096, PROT_NONE)) {
    perror("mmap");
    exit(1);
  }
  run_table(tests, N(tests), verbose);
  run_table(rip_tests, N(rip_tests), verbose);
  run_table(high_tests, N(high_tests), verbose);
  run_table(misc_tests, N(misc_tests), verbose);
  run_table(gpr_tests, N(gpr_tests), verbose);
  run_table(seg_tests, N(seg_tests), verbose);
  extra_tests(verbose);
  return 0;
}
