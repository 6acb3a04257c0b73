// AVX-512 kernels without bf16 dot products (bf16 keys widened in registers), selected at run time.
#include "attention_common.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi,bmi2")

namespace moelens_attn {
namespace isa_avx512 {
#define MOELENS_BF16_DOT 0
#include "simd_avx512.h"
#undef MOELENS_BF16_DOT
#include "kernel_body.h"
}  // namespace isa_avx512
}  // namespace moelens_attn

#pragma GCC pop_options

namespace moelens_attn {
const KernelTable& kernels_avx512() {
  static const KernelTable table = MOELENS_KERNEL_TABLE(isa_avx512, "avx512");
  return table;
}
}  // namespace moelens_attn
