// Portable scalar traits: the path for CPUs without AVX2.

struct Simd {
  using F = float;
  static constexpr int W = 1;

  static inline F zero() { return 0.0f; }
  static inline F set1(float x) { return x; }
  static inline F load(const float* p) { return *p; }
  static inline void store(float* p, F x) { *p = x; }
  static inline F add(F a, F b) { return a + b; }
  static inline F sub(F a, F b) { return a - b; }
  static inline F mul(F a, F b) { return a * b; }
  static inline F fma(F a, F b, F c) { return a * b + c; }
  static inline F max(F a, F b) { return a > b ? a : b; }
  static inline float hsum(F a) { return a; }
  static inline float hmax(F a) { return a; }

  static inline F load_f32(const float* p) { return *p; }
  static inline F load_f32(const bf16_t* p) { return bf16_to_f32(*p); }

  static inline void reduce4(F a, F b, F c, F d, float* out) {
    out[0] = a;
    out[1] = b;
    out[2] = c;
    out[3] = d;
  }

  static inline void reduce_tile(const F* a, float* out) { out[0] = a[0]; }

  static inline F exp2(F x) { return x < -125.0f ? 0.0f : std::exp2(x); }
};

template <class T>
struct QK {
  using QE = float;
  using QV = float;
  static constexpr int L = 1;
  static inline QE from_f32(float x) { return x; }
  static inline QV load_q(const QE* q) { return *q; }
  static inline Simd::F step(Simd::F acc, QV q, const T* k) { return q * Simd::load_f32(k) + acc; }
};

template <class T>
struct PairPV {
  static constexpr bool value = false;
};
