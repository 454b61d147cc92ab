// Element types. bf16 / f16 / fp8 are carried as raw bits; conversions live in cpu/numeric.h.
#pragma once
#include <cstdint>
#include <cstring>

namespace lc {

// I4 is never a tensor's dtype (no name, no size): it marks a linear weight in the int4 format
// (cpu/linear.h), whose packed codes live in an int8 tensor.
enum class DType : int { F32 = 0, BF16, F16, FP8_E4M3, I8, I32, I64, I4 };

inline int64_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::BF16: return 2;
    case DType::F16: return 2;
    case DType::FP8_E4M3: return 1;
    case DType::I8: return 1;
    case DType::I32: return 4;
    case DType::I64: return 8;
    case DType::I4: return 0;
  }
  return 0;
}

// Names are the ones the JS API uses ('f32', 'bf16', ...).
inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "f32";
    case DType::BF16: return "bf16";
    case DType::F16: return "f16";
    case DType::FP8_E4M3: return "fp8_e4m3";
    case DType::I8: return "int8";
    case DType::I32: return "int32";
    case DType::I64: return "int64";
    case DType::I4: return "int4";
  }
  return "?";
}

inline bool dtype_from_name(const char* s, DType* out) {
  for (int i = 0; i <= static_cast<int>(DType::I64); ++i) {
    if (std::strcmp(s, dtype_name(static_cast<DType>(i))) == 0) {
      *out = static_cast<DType>(i);
      return true;
    }
  }
  return false;
}

}  // namespace lc
