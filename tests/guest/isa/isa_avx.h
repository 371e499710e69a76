/* AVX, AVX2, FMA3 and F16C through the compiler's intrinsics (compiled for those extensions
 * only inside these functions, so the rest of the program stays baseline): the `avx2`,
 * `fma` and `f16c` lines hash every result, MXCSR after each group (random rounding, DAZ,
 * FTZ, sticky flags) and the masked stores' memory. Included by isa.c after its helpers. */
#include <cpuid.h>
#include <immintrin.h>

#define AVX_TARGET __attribute__((target("avx2,fma,f16c")))

typedef union {
  __m256i i;
  __m256 s;
  __m256d d;
  uint8_t b[32];
  uint32_t u[8];
  uint64_t q[4];
} v32;

static void fill32(v32 *x, int kind) {
  for (int i = 0; i < 4; i++)
    x->q[i] = kind == PS ? rand_f32() | (uint64_t)rand_f32() << 32
              : kind == PD ? rand_f64()
                           : rand_int();
}
static void mix32(struct hash *h, const v32 *x) { mix(h, x, 32); }

AVX_TARGET static void avx_csr(struct hash *h) {
  uint32_t c = _mm_getcsr();
  mix(h, &c, sizeof c);
}

AVX_TARGET static void avx2_int_case(struct hash *h) {
  v32 a, b, c, r[40];
  fill32(&a, INT);
  fill32(&b, INT);
  fill32(&c, INT);
  int k = 0;
  r[k++].i = _mm256_add_epi8(a.i, b.i);
  r[k++].i = _mm256_adds_epi16(a.i, b.i);
  r[k++].i = _mm256_subs_epu8(a.i, b.i);
  r[k++].i = _mm256_mullo_epi32(a.i, b.i);
  r[k++].i = _mm256_mulhi_epi16(a.i, b.i);
  r[k++].i = _mm256_mul_epu32(a.i, b.i);
  r[k++].i = _mm256_madd_epi16(a.i, b.i);
  r[k++].i = _mm256_maddubs_epi16(a.i, b.i);
  r[k++].i = _mm256_sad_epu8(a.i, b.i);
  r[k++].i = _mm256_avg_epu8(a.i, b.i);
  r[k++].i = _mm256_min_epu8(a.i, b.i);
  r[k++].i = _mm256_max_epi32(a.i, b.i);
  r[k++].i = _mm256_cmpeq_epi8(a.i, b.i);
  r[k++].i = _mm256_cmpgt_epi64(a.i, b.i);
  r[k++].i = _mm256_packs_epi32(a.i, b.i);
  r[k++].i = _mm256_packus_epi16(a.i, b.i);
  r[k++].i = _mm256_unpackhi_epi8(a.i, b.i);
  r[k++].i = _mm256_shuffle_epi8(a.i, b.i);
  r[k++].i = _mm256_shuffle_epi32(a.i, 0x1b);
  r[k++].i = _mm256_alignr_epi8(a.i, b.i, 5);
  r[k++].i = _mm256_sll_epi32(a.i, _mm256_castsi256_si128(c.i));
  r[k++].i = _mm256_srai_epi16(a.i, 3);
  r[k++].i = _mm256_sllv_epi64(a.i, _mm256_and_si256(b.i, _mm256_set1_epi64x(0x4f)));
  r[k++].i = _mm256_srav_epi32(a.i, _mm256_and_si256(b.i, _mm256_set1_epi32(0x27)));
  r[k++].i = _mm256_permutevar8x32_epi32(a.i, b.i);
  r[k++].i = _mm256_permute4x64_epi64(a.i, 0x9c);
  r[k++].i = _mm256_permute2x128_si256(a.i, b.i, 0x21);
  r[k++].i = _mm256_blend_epi32(a.i, b.i, 0xa5);
  r[k++].i = _mm256_blendv_epi8(a.i, b.i, c.i);
  r[k++].i = _mm256_broadcastb_epi8(_mm256_castsi256_si128(a.i));
  r[k++].i = _mm256_broadcastq_epi64(_mm256_castsi256_si128(b.i));
  r[k++].i = _mm256_inserti128_si256(a.i, _mm256_extracti128_si256(b.i, 1), 0);
  r[k++].i = _mm256_abs_epi8(a.i);
  r[k++].i = _mm256_sign_epi16(a.i, b.i);
  r[k++].i = _mm256_hadd_epi32(a.i, b.i);
  r[k++].i = _mm256_andnot_si256(a.i, b.i);
  r[k++].i = _mm256_cvtepi8_epi32(_mm256_castsi256_si128(a.i));
  r[k++].i = _mm256_cvtepu16_epi64(_mm256_castsi256_si128(b.i));
  r[k++].i = _mm256_mpsadbw_epu8(a.i, b.i, 0x2d);
  r[k++].i = _mm256_or_si256(_mm256_xor_si256(a.i, b.i), c.i);
  for (int i = 0; i < k; i++) mix32(h, &r[i]);
  int m[4] = {_mm256_movemask_epi8(a.i), _mm256_testz_si256(a.i, b.i),
              _mm256_testc_si256(a.i, c.i), _mm256_testnzc_si256(b.i, c.i)};
  mix(h, m, sizeof m);
  /* Masked loads and stores, gathers (the table is in bounds; the masks are random). */
  static uint32_t table[64];
  for (int i = 0; i < 64; i++) table[i] = (uint32_t)next();
  v32 g, idx, store;
  idx.i = _mm256_and_si256(b.i, _mm256_set1_epi32(63));
  g.i = _mm256_mask_i32gather_epi32(a.i, (const int *)table, idx.i, c.i, 4);
  mix32(h, &g);
  g.i = _mm256_i32gather_epi64((const long long *)table, _mm256_castsi256_si128(idx.i), 2);
  mix32(h, &g);
  g.i = _mm256_maskload_epi32((const int *)table + (next() % 56), c.i);
  mix32(h, &g);
  memcpy(&store, table, 32);
  _mm256_maskstore_epi64((long long *)&store, a.i, b.i);
  mix32(h, &store);
  avx_csr(h);
}

AVX_TARGET static void avx_fp_case(struct hash *h, uint32_t csr) {
  v32 a, b, c, r[36];
  fill32(&a, PS);
  fill32(&b, PS);
  fill32(&c, PD);
  _mm_setcsr(csr);
  int k = 0;
  r[k++].s = _mm256_add_ps(a.s, b.s);
  r[k++].s = _mm256_mul_ps(a.s, b.s);
  r[k++].s = _mm256_div_ps(a.s, b.s);
  r[k++].s = _mm256_sqrt_ps(a.s);
  r[k++].s = _mm256_min_ps(a.s, b.s);
  r[k++].s = _mm256_max_ps(a.s, b.s);
  r[k++].s = _mm256_rcp_ps(a.s);
  r[k++].s = _mm256_rsqrt_ps(b.s);
  r[k++].s = _mm256_round_ps(a.s, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  r[k++].s = _mm256_round_ps(b.s, _MM_FROUND_CUR_DIRECTION);
  r[k++].s = _mm256_cmp_ps(a.s, b.s, _CMP_LT_OQ);
  r[k++].s = _mm256_cmp_ps(a.s, b.s, _CMP_NEQ_UQ);
  r[k++].s = _mm256_cmp_ps(a.s, b.s, _CMP_NGE_US);
  r[k++].s = _mm256_dp_ps(a.s, b.s, 0xf1);
  r[k++].s = _mm256_hadd_ps(a.s, b.s);
  r[k++].s = _mm256_addsub_ps(a.s, b.s);
  r[k++].s = _mm256_blendv_ps(a.s, b.s, c.s);
  r[k++].s = _mm256_permutevar_ps(a.s, b.i);
  r[k++].s = _mm256_shuffle_ps(a.s, b.s, 0x4e);
  r[k++].s = _mm256_unpacklo_ps(a.s, b.s);
  r[k++].d = _mm256_cvtps_pd(_mm256_castps256_ps128(a.s));
  r[k++].s = _mm256_castps128_ps256(_mm256_cvtpd_ps(c.d));
  r[k++].i = _mm256_cvtps_epi32(a.s);
  r[k++].i = _mm256_cvttps_epi32(b.s);
  r[k++].s = _mm256_cvtepi32_ps(c.i);
  r[k++].d = _mm256_add_pd(c.d, _mm256_castps_pd(a.s));
  r[k++].d = _mm256_div_pd(c.d, _mm256_castps_pd(b.s));
  r[k++].d = _mm256_sqrt_pd(c.d);
  r[k++].d = _mm256_cmp_pd(c.d, _mm256_castps_pd(a.s), _CMP_UNORD_Q);
  r[k++].d = _mm256_permute2f128_pd(c.d, _mm256_castps_pd(a.s), 0x13);
  r[k++].s = _mm256_broadcast_ss((const float *)&b.u[3]);
  r[k++].s = _mm256_maskload_ps((const float *)&b, c.i);
  for (int i = 0; i < k; i++) mix32(h, &r[i]);
  int m[3] = {_mm256_movemask_ps(a.s), _mm256_testz_ps(a.s, b.s), _mm256_movemask_pd(c.d)};
  mix(h, m, sizeof m);
  avx_csr(h);
  _mm_setcsr(0x1f80);
}

AVX_TARGET static void fma_case(struct hash *h, uint32_t csr) {
  v32 a, b, c, x, y, z, r[14];
  fill32(&a, PS);
  fill32(&b, PS);
  fill32(&c, PS);
  fill32(&x, PD);
  fill32(&y, PD);
  fill32(&z, PD);
  _mm_setcsr(csr);
  int k = 0;
  r[k++].s = _mm256_fmadd_ps(a.s, b.s, c.s);
  r[k++].s = _mm256_fmsub_ps(a.s, b.s, c.s);
  r[k++].s = _mm256_fnmadd_ps(a.s, b.s, c.s);
  r[k++].s = _mm256_fnmsub_ps(a.s, b.s, c.s);
  r[k++].s = _mm256_fmaddsub_ps(a.s, b.s, c.s);
  r[k++].s = _mm256_fmsubadd_ps(a.s, b.s, c.s);
  r[k++].d = _mm256_fmadd_pd(x.d, y.d, z.d);
  r[k++].d = _mm256_fnmsub_pd(x.d, y.d, z.d);
  r[k++].d = _mm256_fmaddsub_pd(x.d, y.d, z.d);
  r[k].i = _mm256_setzero_si256();
  _mm256_storeu_ps((float *)&r[k++],
                   _mm256_castps128_ps256(_mm_fmadd_ss(_mm256_castps256_ps128(a.s),
                                                       _mm256_castps256_ps128(b.s),
                                                       _mm256_castps256_ps128(c.s))));
  r[k].i = _mm256_setzero_si256();
  _mm256_storeu_pd((double *)&r[k++],
                   _mm256_castpd128_pd256(_mm_fnmadd_sd(_mm256_castpd256_pd128(x.d),
                                                        _mm256_castpd256_pd128(y.d),
                                                        _mm256_castpd256_pd128(z.d))));
  for (int i = 0; i < k; i++) mix32(h, &r[i]);
  avx_csr(h);
  _mm_setcsr(0x1f80);
}

AVX_TARGET static void f16c_case(struct hash *h, uint32_t csr) {
  v32 a, half, r[8];
  fill32(&a, PS);
  fill32(&half, INT);
  _mm_setcsr(csr);
  memset(r, 0, sizeof r);
  r[0].s = _mm256_cvtph_ps(_mm256_castsi256_si128(half.i));
  r[1].s = _mm256_castps128_ps256(_mm_cvtph_ps(_mm256_castsi256_si128(half.i)));
  _mm_storeu_si128((__m128i *)&r[2], _mm256_cvtps_ph(a.s, _MM_FROUND_TO_NEAREST_INT));
  _mm_storeu_si128((__m128i *)&r[3], _mm256_cvtps_ph(a.s, _MM_FROUND_TO_NEG_INF));
  _mm_storeu_si128((__m128i *)&r[4], _mm256_cvtps_ph(a.s, _MM_FROUND_TO_POS_INF));
  _mm_storeu_si128((__m128i *)&r[5], _mm256_cvtps_ph(a.s, _MM_FROUND_TO_ZERO));
  _mm_storeu_si128((__m128i *)&r[6], _mm256_cvtps_ph(a.s, _MM_FROUND_CUR_DIRECTION));
  _mm_storel_epi64((__m128i *)&r[7], _mm_cvtps_ph(_mm256_castps256_ps128(a.s), 0));
  for (int i = 0; i < 8; i++) mix32(h, &r[i]);
  avx_csr(h);
  _mm_setcsr(0x1f80);
}

/* The lines; each only when this CPU reports the extensions (the host must, to be the
 * reference). */
/* CPUID and XGETBV directly: libgcc's __builtin_cpu_supports knows only some vendors' CPUs
 * (krr's `max` is "KrrKrrKrrKrr") and reports no feature for the others. */
static int avx_usable(void) {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
  const unsigned need1 = 1u << 12 | 1u << 27 | 1u << 28 | 1u << 29; /* FMA OSXSAVE AVX F16C */
  if ((c & need1) != need1) return 0;
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  if ((lo & 6) != 6) return 0; /* XCR0: SSE and AVX state enabled by the OS */
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
  return (b >> 5) & 1; /* AVX2 */
}

static void avx_tests(void) {
  if (!avx_usable()) return;
  struct hash a = {0xcbf29ce484222325ull, 0}, f = a, c = a;
  rng = seed_of("avx2");
  for (int i = 0; i < cases; i++) {
    avx2_int_case(&a);
    avx_fp_case(&a, rand_csr());
    a.n++;
  }
  print_line("", "avx2", &a);
  rng = seed_of("fma");
  for (int i = 0; i < cases; i++) {
    fma_case(&f, rand_csr());
    f.n++;
  }
  print_line("", "fma", &f);
  rng = seed_of("f16c");
  for (int i = 0; i < cases; i++) {
    f16c_case(&c, rand_csr());
    c.n++;
  }
  print_line("", "f16c", &c);
}
