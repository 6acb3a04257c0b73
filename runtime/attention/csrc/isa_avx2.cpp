// AVX2 + FMA kernels, selected at run time.
#include "attention_common.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,bmi,bmi2")

namespace moelens_attn {
namespace isa_avx2 {
#include "simd_avx2.h"
#include "kernel_body.h"
}  // namespace isa_avx2
}  // namespace moelens_attn

#pragma GCC pop_options

namespace moelens_attn {
const KernelTable& kernels_avx2() {
  static const KernelTable table = MOELENS_KERNEL_TABLE(isa_avx2, "avx2");
  return table;
}
}  // namespace moelens_attn
