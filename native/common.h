// Errors and small helpers shared by every native file. No N-API here: kernels and launchers
// throw lc::Error, and only the binding layer (addon.cc, ops/) turns it into a JS exception.
#pragma once
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace lc {

// Codes mirror lib/errors.ts; the JS side maps each to a LongcatError subclass.
#define LC_ERROR_CODES(X) \
  X(E_SHAPE)              \
  X(E_DTYPE)              \
  X(E_DEVICE)             \
  X(E_OOM)                \
  X(E_CUDA)               \
  X(E_DISPOSED)           \
  X(E_ARGUMENT)           \
  X(E_INTERNAL)           \
  X(E_CHECKPOINT)         \
  X(E_NCCL)               \
  X(E_NCCL_UNAVAILABLE)

enum class Code {
#define LCX_ENUM(name) name,
  LC_ERROR_CODES(LCX_ENUM)
#undef LCX_ENUM
};

inline const char* code_name(Code c) {
  switch (c) {
#define LCX_NAME(name) \
  case Code::name: return #name;
    LC_ERROR_CODES(LCX_NAME)
#undef LCX_NAME
  }
  return "E_INTERNAL";
}

struct Error : std::runtime_error {
  Code code;
  Error(Code c, const std::string& msg) : std::runtime_error(msg), code(c) {}
};

template <typename... Args>
std::string format(const char* fmt, Args... args) {
  int n = std::snprintf(nullptr, 0, fmt, args...);
  std::string s(n > 0 ? n : 0, '\0');
  std::snprintf(s.data(), s.size() + 1, fmt, args...);
  return s;
}

template <typename... Args>
[[noreturn]] void fail(Code c, const char* fmt, Args... args) {
  throw Error(c, format(fmt, args...));
}

inline std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

// An environment switch set to exactly `value` (the A/B switches: LONGCAT_*=0 / =1). Read on every
// call, not cached, so an in-process A/B (bench/step-ab.mjs sets process.env between steps) flips it.
inline bool env_is(const char* name, const char* value) {
  const char* v = std::getenv(name);
  return v && std::strcmp(v, value) == 0;
}

}  // namespace lc
