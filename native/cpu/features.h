// Runtime ISA detection. Kernels are compiled for several ISAs (per-function target attributes,
// never -march=native) and pick one at run time through isa().
#pragma once
#include <string>

namespace lc::cpu {

struct Features {
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false;
  bool avx512_bf16 = false, avx512_vnni = false, avx_vnni = false, avx512_vbmi = false;
};

enum class Isa { Scalar = 0, Avx2 = 1, Avx512 = 2 };

const Features& features();
// The ISA kernels dispatch on: the best the CPU has, capped by LONGCAT_ISA (scalar|avx2|avx512)
// or set_isa(), so tests can exercise every path on one machine.
Isa isa();
void set_isa(Isa i);  // clamped to what the CPU supports
const char* isa_name(Isa i);
bool isa_from_name(const std::string& s, Isa* out);

// The variant of a kernel written per ISA (three functions of one signature) that `is` runs:
// the one place the Avx512 / Avx2 / scalar choice is spelled out.
template <class Fn>
inline Fn* by_isa(Isa is, Fn* avx512, Fn* avx2, Fn* scalar) {
  return is == Isa::Avx512 ? avx512 : is == Isa::Avx2 ? avx2 : scalar;
}

}  // namespace lc::cpu
