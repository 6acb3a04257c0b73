// Portable scalar kernels for CPUs without AVX2 (compiled for the baseline target).
#include "attention_common.h"

namespace moelens_attn {
namespace isa_scalar {
#include "simd_scalar.h"
#include "kernel_body.h"
}  // namespace isa_scalar

const KernelTable& kernels_scalar() {
  static const KernelTable table = MOELENS_KERNEL_TABLE(isa_scalar, "scalar");
  return table;
}
}  // namespace moelens_attn
