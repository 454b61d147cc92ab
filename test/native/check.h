// What the C++ harnesses of test/native share: the relative-error measures their comparisons of
// a kernel's output against a reference use.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>

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

}  // namespace lc::harness
