// What the C++ harnesses of test/native share: the relative-error measures their comparisons of
// a kernel's output against a reference use, and the shapes of the MLA decode cases.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "cpu/mla.h"

namespace lc::harness {

// max |got[i] - want[i]| / max |want[i]| (the scale at least 1e-30); a NaN difference counts as
// infinite. got / want: anything indexable with a size() (f32 or f64 elements).
template <class Got, class Want>
double max_rel_error(const Got& got, const Want& want) {
  double scale = 1e-30, worst = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double w = static_cast<double>(want[i]), e = std::fabs(static_cast<double>(got[i]) - w);
    scale = std::max(scale, std::fabs(w));
    worst = std::isnan(e) ? INFINITY : std::max(worst, e);
  }
  return worst / scale;
}

// max over r < rows, c < cols of |got(r, c) - want(r, c)| / (1 + |want(r, c)|), element-wise
// relative with an absolute floor; a NaN result counts as infinite.
template <class Got, class Want>
double max_elem_error(int rows, int cols, const Got& got, const Want& want) {
  double worst = 0;
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) {
      const double g = got(r, c), w = want(r, c);
      worst = std::isnan(g) ? INFINITY : std::max(worst, std::fabs(g - w) / (1 + std::fabs(w)));
    }
  return worst;
}

// max_elem_error against the float64 product sum over i < inner of a(r, i) * b(i, c).
template <class Got, class A, class B>
double max_product_error(int rows, int cols, int inner, const Got& got, const A& a, const B& b) {
  return max_elem_error(rows, cols, got, [&](int r, int c) {
    double want = 0;
    for (int i = 0; i < inner; ++i) want += a(r, i) * b(i, c);
    return want;
  });
}

// The MLA dims of the absorbed-decode cases: nh heads, latent width dl, rope width dr (dn 7 and
// dv 5, odd on purpose: decode reads neither beyond q's rope offset).
inline cpu::MlaDims decode_dims(int64_t nh, int64_t dl, int64_t dr) {
  cpu::MlaDims d;
  d.nh = nh, d.dn = 7, d.dr = dr, d.dv = 5, d.dl = dl;
  return d;
}

// The most cache blocks of bs rows a sequence of `lens` needs (at least 1).
inline int64_t max_blocks(const std::vector<int32_t>& lens, int64_t bs) {
  int64_t mb = 1;
  for (int32_t l : lens) mb = std::max<int64_t>(mb, (l + bs - 1) / bs);
  return mb;
}

}  // namespace lc::harness
