// AVX2 + FMA vector traits (included inside an ISA namespace, under a target pragma).

struct Simd {
  using F = __m256;
  static constexpr int W = 8;

  static inline F zero() { return _mm256_setzero_ps(); }
  static inline F set1(float x) { return _mm256_set1_ps(x); }
  static inline F load(const float* p) { return _mm256_loadu_ps(p); }
  static inline void store(float* p, F x) { _mm256_storeu_ps(p, x); }
  static inline F add(F a, F b) { return _mm256_add_ps(a, b); }
  static inline F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  static inline F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static inline F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static inline F max(F a, F b) { return _mm256_max_ps(a, b); }

  static inline float hsum(F a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static inline float hmax(F a) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }

  static inline F load_f32(const float* p) { return _mm256_loadu_ps(p); }
  static inline F load_f32(const bf16_t* p) {
    __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }

  static inline void reduce4(F a, F b, F c, F d, float* out) {
    __m256 ab = _mm256_hadd_ps(a, b);
    __m256 cd = _mm256_hadd_ps(c, d);
    __m256 abcd = _mm256_hadd_ps(ab, cd);
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
    _mm_storeu_ps(out, r);
  }

  // out[i] = horizontal sum of a[i], for the W = 8 vectors a[0..7] (one transposing add tree).
  static inline void reduce_tile(const F* a, float* out) {
    F s[4], v[2];
    for (int i = 0; i < 4; ++i)
      s[i] = add(_mm256_permute2f128_ps(a[2 * i], a[2 * i + 1], 0x20),
                 _mm256_permute2f128_ps(a[2 * i], a[2 * i + 1], 0x31));
    for (int i = 0; i < 2; ++i) {
      const __m256d x = _mm256_castps_pd(s[2 * i]), y = _mm256_castps_pd(s[2 * i + 1]);
      v[i] = add(_mm256_castpd_ps(_mm256_unpacklo_pd(x, y)), _mm256_castpd_ps(_mm256_unpackhi_pd(x, y)));
    }
    const F w = add(_mm256_shuffle_ps(v[0], v[1], 0x88), _mm256_shuffle_ps(v[0], v[1], 0xDD));
    // lane 4j + k of w holds the sum of a[2k + j]
    _mm256_storeu_ps(out, _mm256_permutevar8x32_ps(w, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
  }

  static inline F exp2(F x) {
    const F lo = set1(-125.0f);
    F keep = _mm256_cmp_ps(x, lo, _CMP_GE_OQ);
    x = _mm256_max_ps(x, lo);
    F n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    F f = sub(x, n);
    F p = set1(1.525273380405984e-05f);
    p = fma(p, f, set1(1.5403530393381606e-04f));
    p = fma(p, f, set1(1.3333558146428443e-03f));
    p = fma(p, f, set1(9.618129107628477e-03f));
    p = fma(p, f, set1(5.550410866482158e-02f));
    p = fma(p, f, set1(2.402265069591007e-01f));
    p = fma(p, f, set1(6.931471805599453e-01f));
    p = fma(p, f, set1(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23);
    p = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e));
    return _mm256_and_ps(p, keep);
  }
};

template <class T>
struct QK {
  using QE = float;
  using QV = __m256;
  static constexpr int L = 8;
  static inline QE from_f32(float x) { return x; }
  static inline QV load_q(const QE* q) { return _mm256_loadu_ps(q); }
  static inline Simd::F step(Simd::F acc, QV q, const T* k) { return _mm256_fmadd_ps(q, Simd::load_f32(k), acc); }
};

template <class T>
struct PairPV {
  static constexpr bool value = false;
};
