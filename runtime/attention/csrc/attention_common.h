// Shared declarations of the CPU decode-attention extension: the problem description handed to the
// per-ISA kernels, work items, and the table of kernels each ISA translation unit exports.
// Everything here is plain C++ (no torch), so the ISA units compile without torch headers.
#pragma once

#include <immintrin.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

namespace moelens_attn {

using bf16_t = uint16_t;

inline float bf16_to_f32(bf16_t x) {
  uint32_t bits = uint32_t(x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// Round to nearest even (inputs here are finite).
inline bf16_t round_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  return bf16_t(bits >> 16);
}

// One decode step over a batch. Query heads h*group .. h*group+group-1 read kv head h.
struct Problem {
  const void* q;               // [B, num_q_heads, q_dim] (the first q_dim of the dk query values)
  const void* q_rope;          // [B, num_q_heads, dk - q_dim] (MLA) or null when q_dim == dk
  int q_dim;
  bool q_bf16;                 // q and q_rope are bf16 (else fp32)
  void* out;                   // [B, num_q_heads, dv]
  bool out_bf16;               // out is bf16 (else fp32)
  const void* k_cache;         // element type given by the kernel chosen
  const void* v_cache;         // MLA: equal to k_cache (values are the first dv columns of a key row)
  int64_t block_stride;        // elements from one cache block to the next
  int64_t head_stride;         // elements from one kv head to the next inside a block (0 for MLA)
  int64_t row_stride;          // elements from one token to the next inside a block
  const int32_t* block_tables; // [B, bt_stride]
  int64_t bt_stride;
  int num_q_heads;
  int num_kv_heads;
  int group;
  int dk;
  int dv;
  int block_size;
  float scale_log2;            // softmax scale * log2(e): the kernels work in base 2
  bool v_is_k;
  const float* sinks_log2;     // [num_q_heads] learned sink logits * log2(e) (gpt-oss), or null: each joins
                               // its head's softmax denominator and attends to nothing
};

// The softmax denominator of one query head given its running max m and sum l (base 2), with its sink.
inline float denominator(const Problem& p, int head, float m, float l) {
  return p.sinks_log2 ? l + std::exp2(p.sinks_log2[head] - m) : l;
}

// Tokens [begin, end) of one (sequence, kv head). partial < 0: the item covers the whole attended range
// and writes the output; otherwise it writes (max, sum, unnormalised acc) into partial slot `partial`.
struct WorkItem {
  int32_t seq;
  int32_t kv_head;
  int32_t begin;
  int32_t end;
  int32_t partial;
};

// Per-thread buffers, 64-byte aligned, sized by the driver.
struct Scratch {
  float* q;          // [group, dk] prepared query (scaled, maybe bf16)
  float* scores;     // [group, score_stride]
  float* acc;        // [group, dv]
  float* m;          // [group] running max (base 2)
  float* l;          // [group] running sum
  float* alpha;      // [group] rescale factor of the current block
  int score_stride;
};

// Query value i (< dk) of query head `head` of sequence `seq`, as fp32.
inline float query_value(const Problem& p, int64_t seq, int64_t head, int i) {
  const int64_t row = seq * p.num_q_heads + head;
  const bool rope = i >= p.q_dim;
  const int width = rope ? p.dk - p.q_dim : p.q_dim;
  const int64_t index = row * width + (rope ? i - p.q_dim : i);
  const void* base = rope ? p.q_rope : p.q;
  return p.q_bf16 ? bf16_to_f32(static_cast<const bf16_t*>(base)[index]) : static_cast<const float*>(base)[index];
}

// Writes out[seq, head, 0..dv) = acc * scale in the output dtype.
inline void store_output(const Problem& p, int64_t seq, int64_t head, const float* acc, float scale) {
  const int64_t offset = (seq * p.num_q_heads + head) * p.dv;
  if (p.out_bf16) {
    bf16_t* out = static_cast<bf16_t*>(p.out) + offset;
    for (int d = 0; d < p.dv; ++d) out[d] = round_to_bf16(acc[d] * scale);
  } else {
    float* out = static_cast<float*>(p.out) + offset;
    for (int d = 0; d < p.dv; ++d) out[d] = acc[d] * scale;
  }
}

// A partial slot holds m[group], l[group], acc[group * dv].
inline int64_t partial_slot_floats(int group, int dv) { return int64_t(group) * (dv + 2); }

using ItemFn = void (*)(const Problem&, const WorkItem&, Scratch&, float* partials);

struct KernelTable {
  const char* name;
  ItemFn gqa_f32[3];   // head dim 64, 128, 256
  ItemFn gqa_bf16[3];
  ItemFn mla_f32;      // dk 576 (512 latent + 64 rope), dv 512
  ItemFn mla_bf16;
};

// Built outside the target pragma, so reading a table never executes instructions of its ISA.
#define MOELENS_KERNEL_TABLE(ns, label)                                                              \
  KernelTable{label,                                                                                 \
              {&ns::attend_item<64, 64, float>, &ns::attend_item<128, 128, float>,                   \
               &ns::attend_item<256, 256, float>},                                                   \
              {&ns::attend_item<64, 64, bf16_t>, &ns::attend_item<128, 128, bf16_t>,                 \
               &ns::attend_item<256, 256, bf16_t>},                                                  \
              &ns::attend_item<576, 512, float>,                                                     \
              &ns::attend_item<576, 512, bf16_t>}

const KernelTable& kernels_avx512bf16();
const KernelTable& kernels_avx512();
const KernelTable& kernels_avx2();
const KernelTable& kernels_scalar();

// Driver (driver.cpp). check_tables returns "" when every context length is in [1, capacity] and every
// block id a sequence uses is in [0, num_blocks); the other two assume it passed.
std::string check_tables(const int32_t* block_tables, int64_t bt_stride, const int32_t* context_lens,
                         int batch, int block_size, int64_t num_blocks);

// Writes rows [batch, heads, row_elems] at position context_lens[b] - 1 of each sequence.
void append_rows(void* cache, int64_t block_stride, int64_t head_stride, int64_t row_stride, const void* rows,
                 int batch, int heads, int row_elems, int elem_size, const int32_t* block_tables,
                 int64_t bt_stride, const int32_t* context_lens, int block_size);

// Splits (sequence, kv head) pairs into work items (long ones into chunks merged afterwards when there
// are too few items for the threads) and runs `fn` on each with `threads` OpenMP threads.
void run_decode(const Problem& p, const int32_t* context_lens, int batch, int sliding_window, int threads,
                ItemFn fn);

}  // namespace moelens_attn
