// Python bindings: checks tensors, picks the ISA (best supported, or the one asked for), appends this
// step's rows, runs the kernel with the GIL released and returns the output in the query's dtype.
// fp32/bf16 queries are read in place and the output written in their dtype: no torch ops (and so no
// torch thread-pool wake-ups) on the hot path besides allocating the output.
#include <torch/extension.h>
#include <torch/version.h>

#include <optional>
#include <vector>

#include "attention_common.h"

namespace moelens_attn {
namespace {

bool cpu_has(const std::string& isa) {
  __builtin_cpu_init();
  if (isa == "avx512bf16")
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512bf16");
  if (isa == "avx512")
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  if (isa == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return isa == "scalar";
}

const std::vector<std::string>& compiled_isas() {
  static const std::vector<std::string> names = {"avx512bf16", "avx512", "avx2", "scalar"};
  return names;
}

std::vector<std::string> supported_isas() {
  std::vector<std::string> out;
  for (const auto& name : compiled_isas())
    if (cpu_has(name)) out.push_back(name);
  return out;
}

const KernelTable& pick(const std::string& isa) {
  const std::string name = isa.empty() ? supported_isas().front() : isa;
  TORCH_CHECK(cpu_has(name), "ISA path '", name, "' is not supported by this CPU (or unknown)");
  if (name == "avx512bf16") return kernels_avx512bf16();
  if (name == "avx512") return kernels_avx512();
  if (name == "avx2") return kernels_avx2();
  return kernels_scalar();
}

// q / q_rope as they come when fp32 or bf16 and contiguous (no copy), else converted to fp32.
at::Tensor query_operand(const at::Tensor& q) {
  if ((q.scalar_type() == at::kFloat || q.scalar_type() == at::kBFloat16) && q.is_contiguous()) return q;
  return q.to(at::kFloat).contiguous();
}

void set_query_and_output(Problem& p, const at::Tensor& q, const at::Tensor& q_rope, const at::Tensor& out) {
  p.q = q.data_ptr();
  p.q_rope = q_rope.defined() ? q_rope.data_ptr() : nullptr;
  p.q_dim = int(q.size(2));
  p.q_bf16 = q.scalar_type() == at::kBFloat16;
  p.out = out.data_ptr();
  p.out_bf16 = out.scalar_type() == at::kBFloat16;
}

at::ScalarType output_dtype(const at::Tensor& q) {
  return q.scalar_type() == at::kBFloat16 ? at::kBFloat16 : at::kFloat;
}

int head_dim_index(int64_t d) {
  if (d == 64) return 0;
  if (d == 128) return 1;
  if (d == 256) return 2;
  TORCH_CHECK(false, "head_dim must be 64, 128 or 256, got ", d);
  return -1;
}

void check_tables_or_throw(const at::Tensor& block_tables, const at::Tensor& context_lens, int64_t block_size,
                           int64_t num_blocks) {
  TORCH_CHECK(block_tables.scalar_type() == at::kInt && block_tables.dim() == 2 && block_tables.stride(1) == 1,
              "block_tables must be int32 [B, max_blocks] with contiguous rows");
  TORCH_CHECK(context_lens.scalar_type() == at::kInt && context_lens.dim() == 1 && context_lens.is_contiguous(),
              "context_lens must be contiguous int32 [B]");
  TORCH_CHECK(block_tables.size(0) == context_lens.size(0), "block_tables and context_lens disagree on B");
  const std::string err =
      check_tables(block_tables.data_ptr<int32_t>(), block_tables.stride(0), context_lens.data_ptr<int32_t>(),
                   int(context_lens.size(0)), int(block_size), num_blocks);
  TORCH_CHECK(err.empty(), err);
}

at::Tensor decode_gqa(const at::Tensor& q, const at::Tensor& k_new, const at::Tensor& v_new, at::Tensor k_cache,
                      at::Tensor v_cache, const at::Tensor& block_tables, const at::Tensor& context_lens,
                      double scale, int64_t sliding_window, const std::optional<at::Tensor>& sinks,
                      int64_t threads, const std::string& isa) {
  TORCH_CHECK(k_cache.dim() == 4 && v_cache.sizes() == k_cache.sizes() && v_cache.strides() == k_cache.strides(),
              "k_cache and v_cache must be [num_blocks, num_kv_heads, block_size, head_dim] with equal strides");
  TORCH_CHECK(k_cache.scalar_type() == v_cache.scalar_type(), "k_cache and v_cache dtypes differ");
  TORCH_CHECK(k_cache.stride(3) == 1, "cache rows must be contiguous");
  const auto dtype = k_cache.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16, "cache dtype must be float32 or bfloat16");
  TORCH_CHECK(q.dim() == 3 && q.size(2) == k_cache.size(3), "q must be [B, Hq, head_dim] matching the cache");
  const int64_t B = q.size(0), Hq = q.size(1), D = q.size(2);
  const int64_t Hkv = k_cache.size(1), bs = k_cache.size(2);
  TORCH_CHECK(Hq % Hkv == 0, "num_q_heads must be a multiple of num_kv_heads");
  TORCH_CHECK(k_new.sizes() == at::IntArrayRef({B, Hkv, D}) && v_new.sizes() == k_new.sizes(),
              "k_new and v_new must be [B, num_kv_heads, head_dim]");
  const int d_index = head_dim_index(D);
  check_tables_or_throw(block_tables, context_lens, bs, k_cache.size(0));

  const at::Tensor qv = query_operand(q);
  const at::Tensor kn = k_new.to(dtype).contiguous();
  const at::Tensor vn = v_new.to(dtype).contiguous();
  at::Tensor out = at::empty({B, Hq, D}, q.options().dtype(output_dtype(q)));
  const KernelTable& table = pick(isa);

  Problem p;
  set_query_and_output(p, qv, at::Tensor(), out);
  p.k_cache = k_cache.data_ptr();
  p.v_cache = v_cache.data_ptr();
  p.block_stride = k_cache.stride(0);
  p.head_stride = k_cache.stride(1);
  p.row_stride = k_cache.stride(2);
  p.block_tables = block_tables.data_ptr<int32_t>();
  p.bt_stride = block_tables.stride(0);
  p.num_q_heads = int(Hq);
  p.num_kv_heads = int(Hkv);
  p.group = int(Hq / Hkv);
  p.dk = int(D);
  p.dv = int(D);
  p.block_size = int(bs);
  p.scale_log2 = float(scale * M_LOG2E);
  p.v_is_k = false;
  at::Tensor sinks_log2;
  if (sinks.has_value()) {
    TORCH_CHECK(sinks->dim() == 1 && sinks->size(0) == Hq, "sinks must be [num_q_heads]");
    sinks_log2 = (sinks->to(at::kFloat) * M_LOG2E).contiguous();
  }
  p.sinks_log2 = sinks_log2.defined() ? sinks_log2.data_ptr<float>() : nullptr;
  const ItemFn fn = dtype == at::kFloat ? table.gqa_f32[d_index] : table.gqa_bf16[d_index];
  const int32_t* lens = context_lens.data_ptr<int32_t>();
  const int elem = int(k_cache.element_size());
  {
    pybind11::gil_scoped_release no_gil;
    append_rows(k_cache.data_ptr(), p.block_stride, p.head_stride, p.row_stride, kn.data_ptr(), int(B), int(Hkv),
                int(D), elem, p.block_tables, p.bt_stride, lens, int(bs));
    append_rows(v_cache.data_ptr(), p.block_stride, p.head_stride, p.row_stride, vn.data_ptr(), int(B), int(Hkv),
                int(D), elem, p.block_tables, p.bt_stride, lens, int(bs));
    run_decode(p, lens, int(B), int(sliding_window), int(threads), fn);
  }
  return out.scalar_type() == q.scalar_type() ? out : out.to(q.scalar_type());
}

at::Tensor decode_mla(const at::Tensor& q_latent, const at::Tensor& q_rope, const at::Tensor& latent_new,
                      at::Tensor latent_cache, const at::Tensor& block_tables, const at::Tensor& context_lens,
                      double scale, int64_t threads, const std::string& isa) {
  TORCH_CHECK(latent_cache.dim() == 3 && latent_cache.stride(2) == 1,
              "latent_cache must be [num_blocks, block_size, kv_lora_rank + rope_dim] with contiguous rows");
  const auto dtype = latent_cache.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16, "cache dtype must be float32 or bfloat16");
  TORCH_CHECK(q_latent.dim() == 3 && q_rope.dim() == 3, "q_latent and q_rope must be [B, H, dim]");
  const int64_t B = q_latent.size(0), H = q_latent.size(1), R = q_latent.size(2), P = q_rope.size(2);
  TORCH_CHECK(R == 512 && P == 64 && latent_cache.size(2) == R + P,
              "MLA kernel supports kv_lora_rank 512 + rope 64 (576 cached values per token)");
  TORCH_CHECK(q_rope.size(0) == B && q_rope.size(1) == H, "q_rope must be [B, H, rope_dim]");
  TORCH_CHECK(latent_new.sizes() == at::IntArrayRef({B, R + P}), "latent_new must be [B, kv_lora_rank + rope_dim]");
  const int64_t bs = latent_cache.size(1);
  check_tables_or_throw(block_tables, context_lens, bs, latent_cache.size(0));

  at::Tensor ql = query_operand(q_latent);
  at::Tensor qr = query_operand(q_rope);
  if (ql.scalar_type() != qr.scalar_type()) {
    ql = ql.to(at::kFloat);
    qr = qr.to(at::kFloat);
  }
  const at::Tensor ln = latent_new.to(dtype).contiguous();
  at::Tensor out = at::empty({B, H, R}, q_latent.options().dtype(output_dtype(ql)));
  const KernelTable& table = pick(isa);

  Problem p;
  set_query_and_output(p, ql, qr, out);
  p.k_cache = latent_cache.data_ptr();
  p.v_cache = latent_cache.data_ptr();
  p.block_stride = latent_cache.stride(0);
  p.head_stride = 0;
  p.row_stride = latent_cache.stride(1);
  p.block_tables = block_tables.data_ptr<int32_t>();
  p.bt_stride = block_tables.stride(0);
  p.num_q_heads = int(H);
  p.num_kv_heads = 1;
  p.group = int(H);
  p.dk = int(R + P);
  p.dv = int(R);
  p.block_size = int(bs);
  p.scale_log2 = float(scale * M_LOG2E);
  p.v_is_k = true;
  p.sinks_log2 = nullptr;
  const ItemFn fn = dtype == at::kFloat ? table.mla_f32 : table.mla_bf16;
  const int32_t* lens = context_lens.data_ptr<int32_t>();
  {
    pybind11::gil_scoped_release no_gil;
    append_rows(latent_cache.data_ptr(), p.block_stride, 0, p.row_stride, ln.data_ptr(), int(B), 1, int(R + P),
                int(latent_cache.element_size()), p.block_tables, p.bt_stride, lens, int(bs));
    run_decode(p, lens, int(B), 0, int(threads), fn);
  }
  return out.scalar_type() == q_latent.scalar_type() ? out : out.to(q_latent.scalar_type());
}

}  // namespace
}  // namespace moelens_attn

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "moelens CPU decode attention over a paged KV cache";
  m.def("decode_gqa", &moelens_attn::decode_gqa);
  m.def("decode_mla", &moelens_attn::decode_mla);
  m.def("compiled_isas", &moelens_attn::compiled_isas);
  m.def("supported_isas", &moelens_attn::supported_isas);
  m.attr("torch_version") = TORCH_VERSION;  // the torch this binary was compiled against
  m.attr("interface_version") = 2;          // runtime.attention.extension.INTERFACE_VERSION (2: sinks)
}
