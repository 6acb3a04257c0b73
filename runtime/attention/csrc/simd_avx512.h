// AVX-512 vector traits (included inside an ISA namespace, under a target pragma).
// MOELENS_BF16_DOT=1 uses vdpbf16ps for bf16 key dot products (query rounded to bf16 once per item).

struct Simd {
  using F = __m512;
  static constexpr int W = 16;

  static inline F zero() { return _mm512_setzero_ps(); }
  static inline F set1(float x) { return _mm512_set1_ps(x); }
  static inline F load(const float* p) { return _mm512_loadu_ps(p); }
  static inline void store(float* p, F x) { _mm512_storeu_ps(p, x); }
  static inline F add(F a, F b) { return _mm512_add_ps(a, b); }
  static inline F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  static inline F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static inline F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static inline F max(F a, F b) { return _mm512_max_ps(a, b); }
  static inline float hsum(F a) { return _mm512_reduce_add_ps(a); }
  static inline float hmax(F a) { return _mm512_reduce_max_ps(a); }

  static inline F load_f32(const float* p) { return _mm512_loadu_ps(p); }
  static inline F load_f32(const bf16_t* p) {
    __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  }

  static inline __m256 fold256(F a) {
    return _mm256_add_ps(_mm512_castps512_ps256(a),
                         _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
  }

  // out[0..3] = horizontal sums of a, b, c, d
  static inline void reduce4(F a, F b, F c, F d, float* out) {
    __m256 ab = _mm256_hadd_ps(fold256(a), fold256(b));
    __m256 cd = _mm256_hadd_ps(fold256(c), fold256(d));
    __m256 abcd = _mm256_hadd_ps(ab, cd);
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
    _mm_storeu_ps(out, r);
  }

  // 2^x for x <= 0; exactly 0 below -125.
  static inline F exp2(F x) {
    const F lo = set1(-125.0f);
    __mmask16 keep = _mm512_cmp_ps_mask(x, lo, _CMP_GE_OQ);
    x = _mm512_max_ps(x, lo);
    F n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    F f = sub(x, n);
    F p = set1(1.525273380405984e-05f);
    p = fma(p, f, set1(1.5403530393381606e-04f));
    p = fma(p, f, set1(1.3333558146428443e-03f));
    p = fma(p, f, set1(9.618129107628477e-03f));
    p = fma(p, f, set1(5.550410866482158e-02f));
    p = fma(p, f, set1(2.402265069591007e-01f));
    p = fma(p, f, set1(6.931471805599453e-01f));
    p = fma(p, f, set1(1.0f));
    return _mm512_maskz_mov_ps(keep, _mm512_scalef_ps(p, n));
  }
};

template <class T>
struct QK;

template <>
struct QK<float> {
  using QE = float;
  static constexpr int L = 16;
  static inline QE from_f32(float x) { return x; }
  static inline Simd::F step(Simd::F acc, const QE* q, const float* k) {
    return _mm512_fmadd_ps(_mm512_loadu_ps(q), _mm512_loadu_ps(k), acc);
  }
};

#if MOELENS_BF16_DOT
template <>
struct QK<bf16_t> {
  using QE = bf16_t;
  static constexpr int L = 32;
  static inline QE from_f32(float x) { return round_to_bf16(x); }
  static inline Simd::F step(Simd::F acc, const QE* q, const bf16_t* k) {
    __m512i qv = _mm512_loadu_si512(q);
    __m512i kv = _mm512_loadu_si512(k);
    return _mm512_dpbf16_ps(acc, (__m512bh)qv, (__m512bh)kv);
  }
};
#else
template <>
struct QK<bf16_t> {
  using QE = float;
  static constexpr int L = 16;
  static inline QE from_f32(float x) { return x; }
  static inline Simd::F step(Simd::F acc, const QE* q, const bf16_t* k) {
    return _mm512_fmadd_ps(_mm512_loadu_ps(q), Simd::load_f32(k), acc);
  }
};
#endif
