// CPU feature detection (cpuid + xgetbv) and the ISA the kernels run: the best this CPU and OS
// support, capped by LONGCAT_ISA or setIsa().
#include "features.h"

#include <atomic>
#include <cstdlib>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#define LC_X86 1
#endif

namespace lc::cpu {

static Features detect() {
  Features f;
#ifdef LC_X86
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  bool osxsave = c & (1u << 27);
  f.fma = c & (1u << 12);
  f.f16c = c & (1u << 29);
  unsigned long long xcr0 = 0;
  if (osxsave) {
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    xcr0 = (static_cast<unsigned long long>(hi) << 32) | lo;
  }
  bool ymm = (xcr0 & 0x6) == 0x6, zmm = (xcr0 & 0xe6) == 0xe6;
  if (__get_cpuid_max(0, nullptr) >= 7) {
    __cpuid_count(7, 0, a, b, c, d);
    f.avx2 = ymm && (b & (1u << 5));
    f.avx512f = zmm && (b & (1u << 16));
    f.avx512dq = zmm && (b & (1u << 17));
    f.avx512bw = zmm && (b & (1u << 30));
    f.avx512vl = zmm && (b & (1u << 31));
    f.avx512_vnni = zmm && (c & (1u << 11));
    f.avx512_vbmi = zmm && (c & (1u << 1));
    __cpuid_count(7, 1, a, b, c, d);
    f.avx_vnni = ymm && (a & (1u << 4));
    f.avx512_bf16 = zmm && (a & (1u << 5));
  }
  if (!ymm) f.fma = f.f16c = false;
#endif
  return f;
}

const Features& features() {
  static const Features f = detect();
  return f;
}

static Isa best() {
  const Features& f = features();
  if (f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq && f.fma && f.f16c) return Isa::Avx512;  // simd.h LC_ISA_AVX512
  if (f.avx2 && f.fma && f.f16c) return Isa::Avx2;                                                 // simd.h LC_ISA_AVX2
  return Isa::Scalar;
}

static std::atomic<int> g_isa{-1};

Isa isa() {
  int v = g_isa.load(std::memory_order_relaxed);
  if (v >= 0) return static_cast<Isa>(v);
  Isa i = best();
  if (const char* env = std::getenv("LONGCAT_ISA")) {
    Isa want;
    if (isa_from_name(env, &want) && want < i) i = want;
  }
  g_isa.store(static_cast<int>(i));
  return i;
}

void set_isa(Isa i) {
  Isa b = best();
  g_isa.store(static_cast<int>(i < b ? i : b));
}

const char* isa_name(Isa i) {
  switch (i) {
    case Isa::Scalar: return "scalar";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
  }
  return "?";
}

bool isa_from_name(const std::string& s, Isa* out) {
  for (Isa i : {Isa::Scalar, Isa::Avx2, Isa::Avx512})
    if (s == isa_name(i)) {
      *out = i;
      return true;
    }
  return false;
}

}  // namespace lc::cpu
