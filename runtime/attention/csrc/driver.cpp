// Work splitting, OpenMP threading, the append of this step's rows and the merge of split items.
#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <vector>

#include "attention_common.h"

namespace moelens_attn {
namespace {

struct SplitGroup {
  int32_t seq;
  int32_t kv_head;
  int32_t first_slot;
  int32_t num_slots;
};

float* alloc_floats(int64_t n) {
  const size_t bytes = size_t((n * int64_t(sizeof(float)) + 63) / 64 * 64);
  return static_cast<float*>(std::aligned_alloc(64, bytes > 0 ? bytes : 64));
}

void merge_group(const Problem& p, const SplitGroup& sg, const float* partials, float* merged) {
  const int G = p.group;
  const int DV = p.dv;
  const int64_t slot_floats = partial_slot_floats(G, DV);
  for (int g = 0; g < G; ++g) {
    float global_max = -INFINITY;
    for (int s = 0; s < sg.num_slots; ++s)
      global_max = std::max(global_max, partials[(sg.first_slot + s) * slot_floats + g]);
    std::fill(merged, merged + DV, 0.0f);
    float total = 0.0f;
    for (int s = 0; s < sg.num_slots; ++s) {
      const float* slot = partials + (sg.first_slot + s) * slot_floats;
      const float w = std::exp2(slot[g] - global_max);
      total += slot[G + g] * w;
      const float* acc = slot + 2 * G + int64_t(g) * DV;
      for (int d = 0; d < DV; ++d) merged[d] += acc[d] * w;
    }
    const int head = sg.kv_head * G + g;
    store_output(p, sg.seq, head, merged, 1.0f / denominator(p, head, global_max, total));
  }
}

}  // namespace

std::string check_tables(const int32_t* block_tables, int64_t bt_stride, const int32_t* context_lens,
                         int batch, int block_size, int64_t num_blocks) {
  const int64_t capacity = bt_stride * block_size;
  for (int b = 0; b < batch; ++b) {
    const int64_t len = context_lens[b];
    if (len < 1 || len > capacity)
      return "context_lens[" + std::to_string(b) + "] = " + std::to_string(len) +
             " is outside [1, max_blocks * block_size = " + std::to_string(capacity) + "]";
    const int64_t used = (len + block_size - 1) / block_size;
    for (int64_t i = 0; i < used; ++i) {
      const int64_t id = block_tables[b * bt_stride + i];
      if (id < 0 || id >= num_blocks)
        return "block_tables[" + std::to_string(b) + ", " + std::to_string(i) + "] = " + std::to_string(id) +
               " is not a block of the cache (num_blocks = " + std::to_string(num_blocks) + ")";
    }
  }
  return "";
}

void append_rows(void* cache, int64_t block_stride, int64_t head_stride, int64_t row_stride, const void* rows,
                 int batch, int heads, int row_elems, int elem_size, const int32_t* block_tables,
                 int64_t bt_stride, const int32_t* context_lens, int block_size) {
  char* base = static_cast<char*>(cache);
  const char* src = static_cast<const char*>(rows);
  const size_t row_bytes = size_t(row_elems) * elem_size;
  for (int b = 0; b < batch; ++b) {
    const int pos = context_lens[b] - 1;
    const int64_t block = block_tables[b * bt_stride + pos / block_size];
    const int64_t slot = block * block_stride + int64_t(pos % block_size) * row_stride;
    for (int h = 0; h < heads; ++h)
      std::memcpy(base + (slot + h * head_stride) * elem_size, src + (int64_t(b) * heads + h) * row_bytes,
                  row_bytes);
  }
}

void run_decode(const Problem& p, const int32_t* context_lens, int batch, int sliding_window, int threads,
                ItemFn fn) {
  if (threads <= 0) threads = omp_get_max_threads();
  const int bs = p.block_size;
  std::vector<int32_t> begins(batch);
  int64_t total_tokens = 0;
  for (int b = 0; b < batch; ++b) {
    const int len = context_lens[b];
    begins[b] = sliding_window > 0 ? std::max(0, len - sliding_window) : 0;
    total_tokens += int64_t(len - begins[b]) * p.num_kv_heads;
  }
  // Split long ranges only when threads would otherwise idle: aim for ~8 items per thread.
  int64_t chunk = INT32_MAX;
  if (threads > 1) {
    const int64_t want = (total_tokens + threads * 8 - 1) / (threads * 8);
    chunk = std::max<int64_t>(256, want);
    chunk = (chunk + bs - 1) / bs * bs;
  }

  std::vector<WorkItem> items;
  std::vector<SplitGroup> groups;
  int32_t slots = 0;
  items.reserve(size_t(batch) * p.num_kv_heads);
  for (int b = 0; b < batch; ++b) {
    const int32_t begin = begins[b];
    const int32_t end = context_lens[b];
    for (int h = 0; h < p.num_kv_heads; ++h) {
      if (end - begin <= chunk) {
        items.push_back({b, h, begin, end, -1});
        continue;
      }
      const int32_t first_slot = slots;
      for (int64_t start = begin; start < end;) {
        const int64_t stop = std::min<int64_t>(end, (start / chunk + 1) * chunk);
        items.push_back({b, h, int32_t(start), int32_t(stop), slots++});
        start = stop;
      }
      groups.push_back({b, h, first_slot, slots - first_slot});
    }
  }
  std::stable_sort(items.begin(), items.end(), [](const WorkItem& x, const WorkItem& y) {
    return x.end - x.begin > y.end - y.begin;
  });

  const int G = p.group;
  const int64_t slot_floats = partial_slot_floats(G, p.dv);
  float* partials = slots > 0 ? alloc_floats(slots * slot_floats) : nullptr;
  const int num_items = int(items.size());
  const int team = std::max(1, std::min(threads, num_items));

#pragma omp parallel num_threads(team)
  {
    Scratch s;
    s.score_stride = (bs + 15) / 16 * 16;
    s.q = alloc_floats(int64_t(G) * p.dk);
    s.scores = alloc_floats(int64_t(G) * s.score_stride);
    s.acc = alloc_floats(int64_t(G) * p.dv);
    s.m = alloc_floats(G);
    s.l = alloc_floats(G);
    s.alpha = alloc_floats(G);
#pragma omp for schedule(dynamic, 1)
    for (int i = 0; i < num_items; ++i) fn(p, items[i], s, partials);
    std::free(s.q);
    std::free(s.scores);
    std::free(s.acc);
    std::free(s.m);
    std::free(s.l);
    std::free(s.alpha);
  }

  if (!groups.empty()) {
    const int num_groups = int(groups.size());
#pragma omp parallel num_threads(team)
    {
      float* merged = alloc_floats(p.dv);
#pragma omp for schedule(dynamic, 1)
      for (int i = 0; i < num_groups; ++i) merge_group(p, groups[i], partials, merged);
      std::free(merged);
    }
  }
  std::free(partials);
}

}  // namespace moelens_attn
