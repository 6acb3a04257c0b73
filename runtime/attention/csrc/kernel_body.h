// Generic decode-attention kernel over one work item, written against `Simd` and `QK<T>` (defined by the
// simd_*.h header included just before, inside the same ISA namespace and target pragma).
// Per cache block: scores for every (query head, token) of the block, an online-softmax update in base 2,
// then acc[g] = acc[g] * alpha[g] + sum_t p[g][t] * v[t]. K and V stream block by block; the next block's
// rows are prefetched while the current one is processed; nothing is converted to fp32 in memory.

inline int min_int(int a, int b) { return a < b ? a : b; }
inline int max_int(int a, int b) { return a > b ? a : b; }

// Issues the prefetches for one contiguous region spread over `steps` calls of next(). Measured here:
// prefetching into L2 (prefetcht1) beats L1 or none, and spreading the next block's lines over every
// (head, token tile) step of the current block beats issuing them in bursts.
struct Prefetcher {
  const char* ptr = nullptr;
  int64_t lines = 0;
  int64_t per_step = 0;

  void start(const void* region, int64_t bytes, int steps) {
    ptr = static_cast<const char*>(region);
    lines = region ? (bytes + 63) / 64 : 0;
    per_step = steps > 0 ? (lines + steps - 1) / steps : lines;
  }
  inline void next() {
    for (int64_t i = 0; i < per_step && lines > 0; ++i, --lines, ptr += 64) __builtin_prefetch(ptr, 0, 2);
  }
};

// Heads per register tile in qk_block_head_tiles (the other W / kHeadTile accumulators are tokens).
constexpr int kHeadTile = 4;

// Whether qk uses (kHeadTile heads x W/kHeadTile tokens) register tiles: for long key rows (MLA's 576
// values), where re-reading a W-token tile of K for every head would stream it from L2 again per head.
template <int DK>
inline bool use_head_tiles(int G) {
  return Simd::W >= 2 * kHeadTile && DK > 256 && G % kHeadTile == 0;
}

// Number of Prefetcher::next() calls qk_block makes for a block of n tokens.
template <int DK>
inline int qk_steps(int n, int G) {
  constexpr int W = Simd::W;
  if (use_head_tiles<DK>(G)) {
    constexpr int TT = W / kHeadTile > 0 ? W / kHeadTile : 1;
    return G / kHeadTile * (n / TT) + G * (n % TT);
  }
  const int rest = n % W;
  return G * (n / W + rest / 4 + rest % 4);
}

// Scores from token tiles (from token t_begin on): tiles of W tokens keep one
// query chunk in a register against W accumulators reduced together; 4-token tiles and single tokens
// take the remainder.
template <int DK, class T>
inline void qk_block_token_tiles(const typename QK<T>::QE* q, int G, const T* k, int64_t rs, int n, float* s,
                                 int SP, Prefetcher& pk, Prefetcher& pv, int t_begin = 0) {
  using Q = QK<T>;
  using F = typename Simd::F;
  constexpr int W = Simd::W;
  constexpr int L = Q::L;
  constexpr int C = DK / L;
  for (int g = 0; g < G; ++g) {
    const typename Q::QE* qg = q + int64_t(g) * DK;
    float* sg = s + int64_t(g) * SP;
    int t = t_begin;
    for (; t + W <= n; t += W) {
      pk.next();
      pv.next();
      const T* kt = k + t * rs;
      F a[W];
#pragma GCC unroll 16
      for (int i = 0; i < W; ++i) a[i] = Simd::zero();
      for (int c = 0; c < C; ++c) {
        const typename Q::QV qc = Q::load_q(qg + c * L);
#pragma GCC unroll 16
        for (int i = 0; i < W; ++i) a[i] = Q::step(a[i], qc, kt + i * rs + c * L);
      }
      Simd::reduce_tile(a, sg + t);
    }
    for (; t + 4 <= n; t += 4) {
      pk.next();
      pv.next();
      const T* k0 = k + t * rs;
      F a0 = Simd::zero(), a1 = Simd::zero(), a2 = Simd::zero(), a3 = Simd::zero();
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) {
        const typename Q::QV qc = Q::load_q(qg + c * L);
        a0 = Q::step(a0, qc, k0 + c * L);
        a1 = Q::step(a1, qc, k0 + rs + c * L);
        a2 = Q::step(a2, qc, k0 + 2 * rs + c * L);
        a3 = Q::step(a3, qc, k0 + 3 * rs + c * L);
      }
      Simd::reduce4(a0, a1, a2, a3, sg + t);
    }
    for (; t < n; ++t) {
      pk.next();
      pv.next();
      const T* k0 = k + t * rs;
      F a0 = Simd::zero(), a1 = Simd::zero();
      int c = 0;
      for (; c + 2 <= C; c += 2) {
        a0 = Q::step(a0, Q::load_q(qg + c * L), k0 + c * L);
        a1 = Q::step(a1, Q::load_q(qg + (c + 1) * L), k0 + (c + 1) * L);
      }
      if (c < C) a0 = Q::step(a0, Q::load_q(qg + c * L), k0 + c * L);
      sg[t] = Simd::hsum(Simd::add(a0, a1));
    }
  }
}

// Scores for kHeadTile heads x TT tokens at a time: per query/key chunk, TT key loads and kHeadTile query
// loads feed W dot-product accumulators (one reduce_tile); leftover tokens go through the token-tile path.
template <int DK, class T>
inline void qk_block_head_tiles(const typename QK<T>::QE* q, int G, const T* k, int64_t rs, int n, float* s,
                                int SP, Prefetcher& pk, Prefetcher& pv) {
  using Q = QK<T>;
  using F = typename Simd::F;
  constexpr int W = Simd::W;
  constexpr int TT = W / kHeadTile;
  constexpr int L = Q::L;
  constexpr int C = DK / L;
  const int tiled = n / TT * TT;
  for (int t = 0; t < tiled; t += TT) {
    const T* kt = k + t * rs;
    for (int g = 0; g < G; g += kHeadTile) {
      pk.next();
      pv.next();
      const typename Q::QE* qg = q + int64_t(g) * DK;
      F a[W];
#pragma GCC unroll 16
      for (int i = 0; i < W; ++i) a[i] = Simd::zero();
      for (int c = 0; c < C; ++c) {
#pragma GCC unroll 4
        for (int h = 0; h < kHeadTile; ++h) {
          const typename Q::QV qc = Q::load_q(qg + h * DK + c * L);
#pragma GCC unroll 4
          for (int j = 0; j < TT; ++j) a[h * TT + j] = Q::step(a[h * TT + j], qc, kt + j * rs + c * L);
        }
      }
      float sums[W];
      Simd::reduce_tile(a, sums);
      for (int h = 0; h < kHeadTile; ++h)
        for (int j = 0; j < TT; ++j) s[int64_t(g + h) * SP + t + j] = sums[h * TT + j];
    }
  }
  if (tiled < n) qk_block_token_tiles<DK, T>(q, G, k, rs, n, s, SP, pk, pv, tiled);
}

// s[g * SP + t] = (q_g . k_t) for t < n (q already carries scale * log2 e).
template <int DK, class T>
inline void qk_block(const typename QK<T>::QE* q, int G, const T* k, int64_t rs, int n, float* s, int SP,
                     Prefetcher& pk, Prefetcher& pv) {
  if constexpr (Simd::W >= 2 * kHeadTile) {
    if (use_head_tiles<DK>(G)) return qk_block_head_tiles<DK, T>(q, G, k, rs, n, s, SP, pk, pv);
  }
  qk_block_token_tiles<DK, T>(q, G, k, rs, n, s, SP, pk, pv);
}

// Turns scores into probabilities against the updated running max; sets alpha (rescale of old acc/l).
// With the bf16 pair path the probabilities are rounded to bf16 (l sums the rounded values) and the row
// is rewritten in place as bf16, which is exactly the token-pair packing that path reads.
template <class T>
inline void softmax_update(float* s, int SP, int n, int G, float* m, float* l, float* alpha) {
  using F = typename Simd::F;
  constexpr int W = Simd::W;
  const int padded = (n + W - 1) / W * W;
  for (int g = 0; g < G; ++g) {
    float* row = s + int64_t(g) * SP;
    for (int t = n; t < padded; ++t) row[t] = -INFINITY;
    F mx = Simd::set1(-INFINITY);
    for (int t = 0; t < padded; t += W) mx = Simd::max(mx, Simd::load(row + t));
    const float block_max = Simd::hmax(mx);
    if (block_max > m[g]) {
      alpha[g] = m[g] == -INFINITY ? 0.0f : std::exp2(m[g] - block_max);
      m[g] = block_max;
    } else {
      alpha[g] = 1.0f;
    }
    const float new_max = m[g];
    const F mv = Simd::set1(new_max);
    F sum = Simd::zero();
    for (int t = 0; t < padded; t += W) {
      F p = Simd::exp2(Simd::sub(Simd::load(row + t), mv));
      if constexpr (PairPV<T>::value)
        p = PairPV<T>::store_bf16(reinterpret_cast<bf16_t*>(row) + t, p);
      else
        Simd::store(row + t, p);
      sum = Simd::add(sum, p);
    }
    l[g] = l[g] * alpha[g] + Simd::hsum(sum);
  }
}

// acc rows g0..g0+NG-1: acc = acc * alpha + sum_t p[t] * v[t]
template <int NG, int DV, class T>
inline void pv_tile_f32(float* acc, const float* p, int SP, const float* alpha, const T* v, int64_t rs, int n) {
  using F = typename Simd::F;
  constexpr int W = Simd::W;
  for (int c = 0; c < DV; c += W) {
    F a[NG];
#pragma GCC unroll 8
    for (int j = 0; j < NG; ++j) a[j] = Simd::mul(Simd::load(acc + j * DV + c), Simd::set1(alpha[j]));
    const T* vc = v + c;
    for (int t = 0; t < n; ++t) {
      const F vt = Simd::load_f32(vc + t * rs);
#pragma GCC unroll 8
      for (int j = 0; j < NG; ++j) a[j] = Simd::fma(Simd::set1(p[j * SP + t]), vt, a[j]);
    }
#pragma GCC unroll 8
    for (int j = 0; j < NG; ++j) Simd::store(acc + j * DV + c, a[j]);
  }
}

template <int NG, int DV, class T>
inline void pv_tile(float* acc, const float* p, int SP, const float* alpha, const T* v, int64_t rs, int n) {
  if constexpr (PairPV<T>::value)
    PairPV<T>::template tile<NG, DV>(acc, p, SP, alpha, v, rs, n);
  else
    pv_tile_f32<NG, DV, T>(acc, p, SP, alpha, v, rs, n);
}

template <int DV, class T>
inline void pv_block(float* acc, const float* p, int SP, const float* alpha, int G, const T* v, int64_t rs,
                     int n) {
  int g = 0;
  for (; g + 8 <= G; g += 8) pv_tile<8, DV, T>(acc + g * DV, p + g * SP, SP, alpha + g, v, rs, n);
  if (G - g >= 4) {
    pv_tile<4, DV, T>(acc + g * DV, p + g * SP, SP, alpha + g, v, rs, n);
    g += 4;
  }
  if (G - g >= 2) {
    pv_tile<2, DV, T>(acc + g * DV, p + g * SP, SP, alpha + g, v, rs, n);
    g += 2;
  }
  if (G - g >= 1) pv_tile<1, DV, T>(acc + g * DV, p + g * SP, SP, alpha + g, v, rs, n);
}

template <int DK, int DV, class T>
void attend_item(const Problem& P, const WorkItem& it, Scratch& S, float* partials) {
  using Q = QK<T>;
  using QE = typename Q::QE;
  const int G = P.group;
  const int bs = P.block_size;
  const int SP = S.score_stride;
  const int64_t rs = P.row_stride;
  const int q_head0 = it.kv_head * G;

  QE* qp = reinterpret_cast<QE*>(S.q);
  for (int g = 0; g < G; ++g)
    for (int i = 0; i < DK; ++i) qp[g * DK + i] = Q::from_f32(query_value(P, it.seq, q_head0 + g, i) * P.scale_log2);
  for (int g = 0; g < G; ++g) {
    S.m[g] = -INFINITY;
    S.l[g] = 0.0f;
  }
  std::memset(S.acc, 0, sizeof(float) * G * DV);

  const T* kbase = static_cast<const T*>(P.k_cache) + int64_t(it.kv_head) * P.head_stride;
  const T* vbase = static_cast<const T*>(P.v_cache) + int64_t(it.kv_head) * P.head_stride;
  const int32_t* bt = P.block_tables + int64_t(it.seq) * P.bt_stride;
  const int first_block = it.begin / bs;
  const int last_block = (it.end - 1) / bs;
  const int64_t block_bytes = int64_t(bs) * rs * int64_t(sizeof(T));
  Prefetcher pk, pv;

  for (int bi = first_block; bi <= last_block; ++bi) {
    const int t0 = max_int(it.begin - bi * bs, 0);
    const int t1 = min_int(it.end - bi * bs, bs);
    const int n = t1 - t0;
    const int64_t block_off = int64_t(bt[bi]) * P.block_stride + int64_t(t0) * rs;
    if (bi < last_block) {
      const int64_t next_off = int64_t(bt[bi + 1]) * P.block_stride;
      const int steps = qk_steps<DK>(n, G);
      pk.start(kbase + next_off, block_bytes, steps);
      pv.start(P.v_is_k ? nullptr : vbase + next_off, block_bytes, steps);
    } else {
      pk.start(nullptr, 0, 1);
      pv.start(nullptr, 0, 1);
    }
    qk_block<DK, T>(qp, G, kbase + block_off, rs, n, S.scores, SP, pk, pv);
    softmax_update<T>(S.scores, SP, n, G, S.m, S.l, S.alpha);
    pv_block<DV, T>(S.acc, S.scores, SP, S.alpha, G, vbase + block_off, rs, n);
  }

  if constexpr (PairPV<T>::value)
    for (int g = 0; g < G; ++g) PairPV<T>::unpermute(S.acc + int64_t(g) * DV, DV);
  if (it.partial < 0) {
    for (int g = 0; g < G; ++g)
      store_output(P, it.seq, q_head0 + g, S.acc + int64_t(g) * DV,
                   1.0f / denominator(P, q_head0 + g, S.m[g], S.l[g]));
  } else {
    float* slot = partials + int64_t(it.partial) * partial_slot_floats(G, DV);
    std::memcpy(slot, S.m, sizeof(float) * G);
    std::memcpy(slot + G, S.l, sizeof(float) * G);
    std::memcpy(slot + 2 * G, S.acc, sizeof(float) * G * DV);
  }
}
