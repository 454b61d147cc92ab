// The addon runs on glibc >= 2.34 (package.json "longcat".glibc; scripts/pack-check.sh checks the
// prebuild's symbol versions). CMakeLists.txt links libstdc++ statically, and the toolchain's
// libstdc++.a (GCC 12 built on glibc 2.36) calls arc4random, new in glibc 2.36, from
// std::random_device, which comes along with std::logic_error's archive members though the addon
// never uses it. This definition, hidden and in front of libc's, takes those calls instead.
#include <sys/random.h>

#include <cerrno>
#include <cstdint>

extern "C" __attribute__((visibility("hidden"))) uint32_t arc4random() {
  uint32_t v = 0;
  for (size_t got = 0; got < sizeof v;) {
    const ssize_t n = getrandom(reinterpret_cast<char*>(&v) + got, sizeof v - got, 0);
    if (n > 0)
      got += static_cast<size_t>(n);
    else if (n < 0 && errno != EINTR)
      break;  // never expected (the kernel has had getrandom since 3.17); v stays what it has
  }
  return v;
}
