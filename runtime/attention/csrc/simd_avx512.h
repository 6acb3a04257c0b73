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

  // out[i] = horizontal sum of a[i], for the W = 16 vectors a[0..15] (one transposing add tree).
  static inline void reduce_tile(const F* a, float* out) {
    F s[8], u[4], v[2];
    for (int i = 0; i < 8; ++i)
      s[i] = add(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x44), _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xEE));
    for (int i = 0; i < 4; ++i)
      u[i] = add(_mm512_shuffle_f32x4(s[2 * i], s[2 * i + 1], 0x88), _mm512_shuffle_f32x4(s[2 * i], s[2 * i + 1], 0xDD));
    for (int i = 0; i < 2; ++i) {
      const __m512d x = _mm512_castps_pd(u[2 * i]), y = _mm512_castps_pd(u[2 * i + 1]);
      v[i] = add(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
    }
    const F w = add(_mm512_shuffle_ps(v[0], v[1], 0x88), _mm512_shuffle_ps(v[0], v[1], 0xDD));
    // lane 4j + k of w holds the sum of a[4k + j]
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    _mm512_storeu_ps(out, _mm512_permutexvar_ps(order, w));
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
  using QV = __m512;
  static constexpr int L = 16;
  static inline QE from_f32(float x) { return x; }
  static inline QV load_q(const QE* q) { return _mm512_loadu_ps(q); }
  static inline Simd::F step(Simd::F acc, QV q, const float* k) { return _mm512_fmadd_ps(q, _mm512_loadu_ps(k), acc); }
};

// P.V with vdpbf16ps over token pairs: probabilities as a bf16 row, read two per 32-bit word (token t
// low, t+1 high; an odd tail pairs with the row's zero padding); value rows t, t+1 interleaved with
// unpack{lo,hi}_epi16. Accumulators then hold each 32-wide chunk permuted: lo lane 4i+k is d = 8i+k,
// hi lane 4i+k is d = 8i+4+k (undone once per item by unpermute).
template <class T>
struct PairPV {
  static constexpr bool value = false;
};

#if MOELENS_BF16_DOT
template <>
struct PairPV<bf16_t> {
  static constexpr bool value = true;

  // Stores p as 16 bf16 (round to nearest even) and returns the rounded values as fp32. Safe in place
  // over the fp32 row being read: the bf16 store lands at half the byte offset of the fp32 load.
  static inline __m512 store_bf16(bf16_t* dst, __m512 p) {
    const __m256i h = (__m256i)_mm512_cvtneps_pbh(p);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }

  template <int NG, int DV>
  static inline void tile(float* acc, const float* probs, int SP, const float* alpha, const bf16_t* v,
                          int64_t rs, int n) {
    const uint32_t* pp = reinterpret_cast<const uint32_t*>(probs);
    for (int c = 0; c < DV; c += 32) {
      __m512 lo[NG], hi[NG];
#pragma GCC unroll 8
      for (int j = 0; j < NG; ++j) {
        const __m512 a = _mm512_set1_ps(alpha[j]);
        lo[j] = _mm512_mul_ps(_mm512_loadu_ps(acc + j * DV + c), a);
        hi[j] = _mm512_mul_ps(_mm512_loadu_ps(acc + j * DV + c + 16), a);
      }
      const bf16_t* vc = v + c;
      int t = 0;
      for (; t + 2 <= n; t += 2) {
        const __m512i r0 = _mm512_loadu_si512(vc + t * rs);
        const __m512i r1 = _mm512_loadu_si512(vc + (t + 1) * rs);
        const __m512bh vlo = (__m512bh)_mm512_unpacklo_epi16(r0, r1);
        const __m512bh vhi = (__m512bh)_mm512_unpackhi_epi16(r0, r1);
#pragma GCC unroll 8
        for (int j = 0; j < NG; ++j) {
          const __m512bh pj = (__m512bh)_mm512_set1_epi32(int(pp[j * SP + t / 2]));
          lo[j] = _mm512_dpbf16_ps(lo[j], vlo, pj);
          hi[j] = _mm512_dpbf16_ps(hi[j], vhi, pj);
        }
      }
      if (t < n) {
        const __m512i r0 = _mm512_loadu_si512(vc + t * rs);
        const __m512i zero = _mm512_setzero_si512();
        const __m512bh vlo = (__m512bh)_mm512_unpacklo_epi16(r0, zero);
        const __m512bh vhi = (__m512bh)_mm512_unpackhi_epi16(r0, zero);
#pragma GCC unroll 8
        for (int j = 0; j < NG; ++j) {
          const __m512bh pj = (__m512bh)_mm512_set1_epi32(int(pp[j * SP + t / 2]));
          lo[j] = _mm512_dpbf16_ps(lo[j], vlo, pj);
          hi[j] = _mm512_dpbf16_ps(hi[j], vhi, pj);
        }
      }
#pragma GCC unroll 8
      for (int j = 0; j < NG; ++j) {
        _mm512_storeu_ps(acc + j * DV + c, lo[j]);
        _mm512_storeu_ps(acc + j * DV + c + 16, hi[j]);
      }
    }
  }

  // Undo the chunk permutation of one accumulator row of length dv.
  static inline void unpermute(float* row, int dv) {
    float chunk[32];
    for (int c = 0; c < dv; c += 32) {
      std::memcpy(chunk, row + c, sizeof(chunk));
      for (int i = 0; i < 4; ++i)
        for (int k = 0; k < 4; ++k) {
          row[c + 8 * i + k] = chunk[4 * i + k];
          row[c + 8 * i + 4 + k] = chunk[16 + 4 * i + k];
        }
    }
  }
};

template <>
struct QK<bf16_t> {
  using QE = bf16_t;
  using QV = __m512bh;
  static constexpr int L = 32;
  static inline QE from_f32(float x) { return round_to_bf16(x); }
  static inline QV load_q(const QE* q) { return (__m512bh)_mm512_loadu_si512(q); }
  static inline Simd::F step(Simd::F acc, QV q, const bf16_t* k) {
    return _mm512_dpbf16_ps(acc, q, (__m512bh)_mm512_loadu_si512(k));
  }
};
#else
template <>
struct QK<bf16_t> {
  using QE = float;
  using QV = __m512;
  static constexpr int L = 16;
  static inline QE from_f32(float x) { return x; }
  static inline QV load_q(const QE* q) { return _mm512_loadu_ps(q); }
  static inline Simd::F step(Simd::F acc, QV q, const bf16_t* k) { return _mm512_fmadd_ps(q, Simd::load_f32(k), acc); }
};
#endif
