// AVX-512 kernels with bf16 dot products (avx512f/bw/vl/dq + avx512_bf16), selected at run time.
#include "attention_common.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c,bmi,bmi2")

namespace moelens_attn {
namespace isa_avx512bf16 {
#define MOELENS_BF16_DOT 1
#include "simd_avx512.h"
#undef MOELENS_BF16_DOT
#include "kernel_body.h"
}  // namespace isa_avx512bf16
}  // namespace moelens_attn

#pragma GCC pop_options

namespace moelens_attn {
const KernelTable& kernels_avx512bf16() {
  static const KernelTable table = MOELENS_KERNEL_TABLE(isa_avx512bf16, "avx512bf16");
  return table;
}
}  // namespace moelens_attn
