// Sampling, per row, in this exact order:
//   0. temperature <= 0: greedy, argmax of the logits (ties -> lowest index, NaN never wins).
//   1. z = logits / temperature (NaN -> -inf). The distribution is p = softmax(z).
//   2. top-k (k > 0 and k < V): keep the k largest z; ties broken towards the lower token id.
//   3. min-p (minP > 0): drop tokens with p < minP * pmax, i.e. exp(z - zmax) < minP.
//   4. top-p (topP < 1): on the survivors, renormalised, sort by probability (descending, ties
//      by lower id) and keep the smallest prefix whose mass is >= topP (at least one token).
//   5. renormalise the survivors and draw one with u = uniform(seed, step, row) in [0, 1):
//      walk the survivors in their current order and take the first whose cumulative weight
//      exceeds u * total.
// Every filter works on the survivors of the previous one (filter_row builds the survivors, for
// sample and sample_speculative alike). u comes from a counter-based RNG (sampling.h:
// splitmix64 of seed, step, row), so a row's token is a pure function of its logits, the
// parameters, seed, step and row index: reproducible across runs, thread counts and ISAs (the
// sampler uses no ISA-specific arithmetic; greedy rows take elementwise.h's SIMD argmax_row, which
// only compares). Weights are exp(z - zmax) in f32, sums in f64.
// Cost: top-k uses a bounded heap (O(V log k)) for k <= 4096, nth_element otherwise; top-p
// finds the nucleus boundary by a mass-guided quickselect (expected O(V)), never a full sort.
// sample_speculative (the rule in sampling.h) runs a sequence's rows in order on one thread,
// stopping at the first rejected draft; sequences run in parallel.
#include "sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../common.h"
#include "elementwise.h"
#include "threadpool.h"

namespace lc::cpu {

namespace {

struct Cand {
  float w;  // z, then exp(z - zmax)
  int32_t i;
};
// Strict "comes before": larger weight first, then lower token id.
inline bool better(const Cand& a, const Cand& b) { return a.w > b.w || (a.w == b.w && a.i < b.i); }

// Steps 0-4: the survivors of row l in c[0, n), (weight, id) in the order the draw walks them;
// returns n >= 1. A greedy row, and a row whose largest z is -inf or +inf, has one survivor: the
// argmax, weight 1.
int64_t filter_row(const float* l, int64_t V, const SampleParams& p, Cand* c) {
  if (!(p.temperature > 0.0f)) {
    c[0] = {1.0f, argmax_row(l, V)};
    return 1;
  }
  const double T = p.temperature;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  auto zval = [&](int64_t j) {
    float v = l[j];
    return std::isnan(v) ? kNegInf : static_cast<float>(v / T);
  };
  // 1-2: candidates (z, id), top-k when asked.
  int64_t n;
  if (p.top_k > 0 && p.top_k < V && p.top_k <= 4096) {
    const int64_t k = p.top_k;
    for (int64_t j = 0; j < k; ++j) c[j] = {zval(j), static_cast<int32_t>(j)};
    std::make_heap(c, c + k, better);  // top = the worst kept candidate
    for (int64_t j = k; j < V; ++j) {
      float z = zval(j);
      if (z > c[0].w) {  // ids grow, so an equal z never beats a kept candidate
        std::pop_heap(c, c + k, better);
        c[k - 1] = {z, static_cast<int32_t>(j)};
        std::push_heap(c, c + k, better);
      }
    }
    n = k;
  } else {
    for (int64_t j = 0; j < V; ++j) c[j] = {zval(j), static_cast<int32_t>(j)};
    n = V;
    if (p.top_k > 0 && p.top_k < V) {
      std::nth_element(c, c + p.top_k, c + V, better);
      n = p.top_k;
    }
  }
  float zmax = kNegInf;
  int32_t imax = 0;
  for (int64_t j = 0; j < n; ++j)
    if (c[j].w > zmax || (c[j].w == zmax && c[j].i < imax)) {
      zmax = c[j].w;
      imax = c[j].i;
    }
  if (!(zmax > kNegInf) || std::isinf(zmax)) {  // all -inf, or +inf logits: greedy
    c[0] = {1.0f, imax};
    return 1;
  }
  for (int64_t j = 0; j < n; ++j) c[j].w = std::exp(c[j].w - zmax);
  // 3: min-p relative to the most likely token.
  if (p.min_p > 0.0f) {
    int64_t m = 0;
    for (int64_t j = 0; j < n; ++j)
      if (!(c[j].w < p.min_p)) c[m++] = c[j];
    n = m;  // the max token has weight 1 >= min_p (min_p <= 1 is checked by the op), so n >= 1
  }
  // 4: top-p nucleus: the smallest prefix of the (weight desc, id asc) order with mass >= need,
  // found by a mass-guided quickselect (expected O(n), no full sort): [0, lo) is known to be in
  // the nucleus with mass `acc`, the boundary lies in [lo, hi).
  if (p.top_p < 1.0f && n > 1) {
    double total = 0;
    for (int64_t j = 0; j < n; ++j) total += c[j].w;
    const double need = static_cast<double>(p.top_p) * total;
    int64_t lo = 0, hi = n, keep = n;
    double acc = 0;
    while (hi - lo > 32) {
      // median of three (deterministic) as the pivot, moved to the end of the range
      Cand* a = c + lo;
      Cand* m = c + lo + (hi - lo) / 2;
      Cand* b = c + hi - 1;
      if (better(*m, *a)) std::swap(*m, *a);
      if (better(*b, *a)) std::swap(*b, *a);
      if (better(*b, *m)) std::swap(*b, *m);  // now a, m, b in order: m is the median
      std::swap(*m, *b);
      const Cand piv = *b;
      Cand* mid = std::partition(c + lo, c + hi - 1, [&](const Cand& x) { return better(x, piv); });
      std::swap(*mid, c[hi - 1]);  // pivot in its final place
      const int64_t pi = mid - c;
      double left = 0;
      for (int64_t j = lo; j < pi; ++j) left += c[j].w;
      if (acc + left >= need) {
        hi = pi;
      } else if (acc + left + piv.w >= need) {
        keep = pi + 1;
        lo = hi = -1;
        break;
      } else {
        acc += left + piv.w;
        lo = pi + 1;
      }
    }
    if (lo >= 0) {  // small remainder: sort it and scan
      std::sort(c + lo, c + hi, better);
      keep = hi;  // rounding fallback: the whole remaining range
      for (int64_t j = lo; j < hi; ++j) {
        acc += c[j].w;
        if (acc >= need) {
          keep = j + 1;
          break;
        }
      }
    }
    n = std::max<int64_t>(1, keep);
  }
  return n;
}

// The sum of the survivors' weights (f64, in their order), token `skip` counted as 0.
double survivor_mass(const Cand* c, int64_t n, int32_t skip) {
  double total = 0;
  for (int64_t j = 0; j < n; ++j) total += c[j].i == skip ? 0.0f : c[j].w;
  return total;
}

// Step 5: walk the survivors in order and take the first whose cumulative weight exceeds
// u * total, token `skip` (-1: none) weighing 0 (the residual draw of a rejected draft). Rounding
// that lets the walk end without exceeding the target takes the last survivor of positive weight.
int32_t draw(const Cand* c, int64_t n, double u, int32_t skip) {
  const double target = u * survivor_mass(c, n, skip);
  double cum = 0;
  int64_t last = 0;
  for (int64_t j = 0; j < n; ++j) {
    const float w = c[j].i == skip ? 0.0f : c[j].w;
    if (w > 0) last = j;
    cum += w;
    if (cum > target && w > 0) return c[j].i;
  }
  return c[last].i;
}

int32_t sample_row(const float* l, int64_t V, const SampleParams& p, uint64_t row, Cand* c) {
  const int64_t n = filter_row(l, V, p, c);
  return draw(c, n, sample_uniform(p.seed, p.step, row), -1);
}

// One sequence of sample_speculative (the rule in sampling.h); returns the number accepted and
// writes the k + 1 tokens.
int32_t speculate_sequence(int64_t k, int64_t V, const float* logits, const int32_t* drafts, const int32_t* positions,
                           SampleParams p, int32_t* tokens, Cand* c) {
  int32_t a = 0, next = 0;
  for (int64_t j = 0; j <= k; ++j) {
    p.step = static_cast<uint64_t>(positions[j]) + 1;
    const float* l = logits + j * V;
    if (j == k) {  // every draft accepted: the bonus token, as sample() would draw it
      next = sample_row(l, V, p, kUniformDraw, c);
      break;
    }
    const int32_t d = drafts[j];
    if (!(p.temperature > 0.0f)) {  // greedy: p_j is all on the argmax
      next = argmax_row(l, V);
      if (next != d) break;
      ++a;
      continue;
    }
    const int64_t n = filter_row(l, V, p, c);
    const double total = survivor_mass(c, n, -1);
    double wd = 0;
    for (int64_t i = 0; i < n; ++i)
      if (c[i].i == d) wd = c[i].w;
    // u_A * total < wd is u_A < p_j(d); wd >= total: d holds all the mass (p_j(d) = 1).
    if (wd > 0 && (wd >= total || sample_uniform(p.seed, p.step, kUniformAccept) * total < wd)) {
      ++a;
      continue;
    }
    next = draw(c, n, sample_uniform(p.seed, p.step, kUniformResidual), d);
    break;
  }
  for (int64_t j = 0; j <= k; ++j) tokens[j] = j < a ? drafts[j] : next;
  return a;
}

constexpr int64_t kMaxSlots = 16;

}  // namespace

int64_t sample_workspace_bytes(int64_t rows, int64_t V) {
  return std::min(rows, kMaxSlots) * V * static_cast<int64_t>(sizeof(Cand));
}

void sample(int64_t rows, int64_t V, const float* logits, const SampleParams& p, int32_t* ids, void* workspace) {
  if (!(p.temperature > 0.0f)) {
    parallel_for(rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(V, 1)), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) ids[r] = argmax_row(logits + r * V, V);
    });
    return;
  }
  // Rows are split over at most kMaxSlots workspace slots; each row's result is independent of
  // the split, so the output does not depend on the thread count.
  const int64_t slots = std::min(rows, kMaxSlots);
  parallel_for(slots, 1, [&](int64_t b, int64_t e) {
    for (int64_t s = b; s < e; ++s) {
      Cand* c = static_cast<Cand*>(workspace) + s * V;
      for (int64_t r = rows * s / slots; r < rows * (s + 1) / slots; ++r)
        ids[r] = sample_row(logits + r * V, V, p, static_cast<uint64_t>(r), c);
    }
  });
}

int64_t sample_speculative_workspace_bytes(int64_t B, int64_t V) {
  return std::min(B, kMaxSlots) * V * static_cast<int64_t>(sizeof(Cand));
}

void sample_speculative(int64_t B, int64_t k, int64_t V, const float* logits, const int32_t* drafts, const int32_t* positions,
                        const int32_t* params, int32_t* tokens, int32_t* accepted, void* workspace) {
  const int64_t R = k + 1;
  for (int64_t b = 0; b < B; ++b) {  // everything is checked before anything is written
    const SampleParams p = decode_speculative_params(params + b * kSpeculativeParams);
    const long long bb = static_cast<long long>(b);
    if (!(p.temperature >= 0.0f) || std::isinf(p.temperature))
      fail(Code::E_ARGUMENT, "sampleSpeculative: params[%lld, 0] (temperature) must be a finite number >= 0, got %g", bb,
           static_cast<double>(p.temperature));
    if (p.top_k < 0)
      fail(Code::E_ARGUMENT, "sampleSpeculative: params[%lld, 1] (topK) must be >= 0 (0 = off), got %lld", bb,
           static_cast<long long>(p.top_k));
    if (!(p.top_p > 0.0f && p.top_p <= 1.0f))
      fail(Code::E_ARGUMENT, "sampleSpeculative: params[%lld, 2] (topP) must be in (0, 1] (1 = off), got %g", bb,
           static_cast<double>(p.top_p));
    if (!(p.min_p >= 0.0f && p.min_p <= 1.0f))
      fail(Code::E_ARGUMENT, "sampleSpeculative: params[%lld, 3] (minP) must be in [0, 1] (0 = off), got %g", bb,
           static_cast<double>(p.min_p));
    for (int64_t j = 0; j < k; ++j)
      if (drafts[b * k + j] < 0 || drafts[b * k + j] >= V)
        fail(Code::E_ARGUMENT, "sampleSpeculative: drafts[%lld, %lld] = %d is out of range for a vocabulary of %lld", bb,
             static_cast<long long>(j), drafts[b * k + j], static_cast<long long>(V));
    for (int64_t j = 0; j < R; ++j)
      if (positions[b * R + j] < 0)
        fail(Code::E_ARGUMENT, "sampleSpeculative: positions[%lld] = %d is negative", static_cast<long long>(b * R + j),
             positions[b * R + j]);
  }
  const int64_t slots = std::min(B, kMaxSlots);
  parallel_for(slots, 1, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) {
      Cand* c = static_cast<Cand*>(workspace) + s * V;
      for (int64_t b = B * s / slots; b < B * (s + 1) / slots; ++b)
        accepted[b] = speculate_sequence(k, V, logits + b * R * V, drafts + b * k, positions + b * R,
                                         decode_speculative_params(params + b * kSpeculativeParams), tokens + b * R, c);
    }
  });
}

void penalize(int64_t R, int64_t V, int64_t H, int64_t nb, float* logits, const int32_t* history, const int32_t* prompt_lengths,
              const float* params, const int32_t* bias_ids, const float* bias_values) {
  for (int64_t r = 0; r < R; ++r) {  // everything is checked before anything is written
    const long long rr = static_cast<long long>(r);
    const float* q = params + r * kPenaltyParams;
    if (!(q[0] > 0.0f) || std::isinf(q[0]))
      fail(Code::E_ARGUMENT, "penalize: params[%lld, 0] (repetition) must be a finite number > 0 (1 = off), got %g", rr,
           static_cast<double>(q[0]));
    if (!std::isfinite(q[1]) || !std::isfinite(q[2]))
      fail(Code::E_ARGUMENT, "penalize: params[%lld, 1..2] (presence, frequency) must be finite, got %g, %g", rr,
           static_cast<double>(q[1]), static_cast<double>(q[2]));
    if (prompt_lengths[r] < 0 || prompt_lengths[r] > H)
      fail(Code::E_ARGUMENT, "penalize: promptLengths[%lld] = %d is outside [0, %lld] (the history's length)", rr,
           prompt_lengths[r], static_cast<long long>(H));
    for (int64_t j = 0; j < H; ++j)
      if (history[r * H + j] >= V)
        fail(Code::E_ARGUMENT, "penalize: history[%lld, %lld] = %d is out of range for a vocabulary of %lld", rr,
             static_cast<long long>(j), history[r * H + j], static_cast<long long>(V));
    for (int64_t j = 0; j < nb; ++j) {
      if (bias_ids[r * nb + j] >= V)
        fail(Code::E_ARGUMENT, "penalize: biasIds[%lld, %lld] = %d is out of range for a vocabulary of %lld", rr,
             static_cast<long long>(j), bias_ids[r * nb + j], static_cast<long long>(V));
      if (std::isnan(bias_values[r * nb + j]))
        fail(Code::E_ARGUMENT, "penalize: biasValues[%lld, %lld] is NaN", rr, static_cast<long long>(j));
    }
  }
  parallel_for(R, 1, [&](int64_t b, int64_t e) {
    std::vector<int64_t> keys;  // 2 * token + (1 if generated): sorted, a token's entries are adjacent
    for (int64_t r = b; r < e; ++r) {
      float* x = logits + r * V;
      const float* q = params + r * kPenaltyParams;
      keys.clear();
      for (int64_t j = 0; j < H; ++j)
        if (history[r * H + j] >= 0) keys.push_back(2 * int64_t{history[r * H + j]} + (j >= prompt_lengths[r] ? 1 : 0));
      std::sort(keys.begin(), keys.end());
      for (size_t i = 0; i < keys.size();) {
        const int64_t t = keys[i] / 2;
        uint64_t generated = 0;
        for (; i < keys.size() && keys[i] / 2 == t; ++i) generated += static_cast<uint64_t>(keys[i] & 1);
        x[t] = penalized_logit(x[t], q[0], q[1], q[2], generated);
      }
      for (int64_t j = 0; j < nb; ++j)
        if (bias_ids[r * nb + j] >= 0) x[bias_ids[r * nb + j]] += bias_values[r * nb + j];
    }
  });
}

void logprobs(int64_t R, int64_t V, int64_t k, const float* logits, const int32_t* chosen, float* out, int32_t* out_ids) {
  for (int64_t r = 0; r < R; ++r)
    if (chosen[r] < 0 || chosen[r] >= V)
      fail(Code::E_ARGUMENT, "logprobs: chosen[%lld] = %d is out of range for a vocabulary of %lld", static_cast<long long>(r),
           chosen[r], static_cast<long long>(V));
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  parallel_for(R, std::max<int64_t>(1, 16384 / std::max<int64_t>(V, 1)), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const float* l = logits + r * V;
      auto val = [&](int64_t j) { return std::isnan(l[j]) ? kNegInf : l[j]; };
      float m = kNegInf;
      for (int64_t j = 0; j < V; ++j) m = std::max(m, val(j));
      double lse = std::numeric_limits<double>::quiet_NaN();
      if (std::isfinite(m)) {
        double s = 0;
        for (int64_t j = 0; j < V; ++j) s += std::exp(static_cast<double>(val(j)) - m);
        lse = m + std::log(s);
      }
      float* o = out + r * (1 + k);
      o[0] = static_cast<float>(static_cast<double>(val(chosen[r])) - lse);
      // the k best by a bounded heap whose top is the worst kept (k <= 20)
      Cand c[kMaxTopLogprobs];
      auto before = [](const Cand& a, const Cand& b) { return logit_before(a.w, a.i, b.w, b.i); };
      for (int64_t j = 0; j < V; ++j) {
        const Cand cj{val(j), static_cast<int32_t>(j)};
        if (j < k) {
          c[j] = cj;
          std::push_heap(c, c + j + 1, before);
        } else if (k > 0 && before(cj, c[0])) {
          std::pop_heap(c, c + k, before);
          c[k - 1] = cj;
          std::push_heap(c, c + k, before);
        }
      }
      std::sort_heap(c, c + k, before);
      for (int64_t i = 0; i < k; ++i) {
        out_ids[r * k + i] = c[i].i;
        o[1 + i] = static_cast<float>(static_cast<double>(c[i].w) - lse);
      }
    }
  });
}

void select_accepted(int64_t B, int64_t k, const int32_t* candidates, const int32_t* accepted, int32_t* out) {
  for (int64_t b = 0; b < B; ++b) out[b] = candidates[b * (k + 1) + clamp_accepted(accepted[b], k)];
}

}  // namespace lc::cpu
