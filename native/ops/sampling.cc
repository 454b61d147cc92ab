// The sampling ops (kernels: cpu/sampling.cc, cuda/elementwise.cu; types/ops-small.d.ts):
//   sample(stream, ids int32 [..], logits f32 [.., V], temperature, topK, topP, minP, seed, step):
//     one token per row
//   sampleSpeculative(stream, tokens int32 [B, k+1], accepted int32 [B], logits f32 [B*(k+1), V],
//     drafts int32 [B, k], positions int32 [B*(k+1)], params int32 [B, 6]): rejection sampling
//     of k drafts per sequence (the rule: cpu/sampling.h)
//   selectAccepted(stream, out int32 [B], candidates int32 [B, k+1], accepted int32 [B])
//   penalize(stream, logits f32 [R, V] (in place), history int32 [R, H], promptLengths int32 [R],
//     params f32 [R, 3], biasIds int32 [R, nb], biasValues f32 [R, nb]): repetition / presence /
//     frequency penalties and logit bias (the rule: cpu/sampling.h)
//   logprobs(stream, out f32 [R, 1 + k], outIds int32 [R, k], logits f32 [R, V], chosen int32 [R], k)
#include <cmath>
#include <utility>

#include "../binding.h"
#include "../cpu/sampling.h"
#ifdef LONGCAT_WITH_CUDA
#include "../../cuda/elementwise.h"
#endif

namespace lc {

// The logits' last dimension indexes token ids, which are int32 everywhere.
static void expect_vocabulary(const char* op, const Tensor& logits) {
  const int64_t V = logits.dim(-1);
  if (V < 1 || V > INT32_MAX)
    fail(Code::E_SHAPE, "%s: 'logits' has shape %s, expected a vocabulary (last dimension) in [1, 2^31)", op,
         shape_str(logits.shape).c_str());
}

static void Sample(const OpArgs& a) {
  Tensor ids = a.tensor(1, "ids"), x = a.tensor(2, "logits");
  const Device d = x.device();
  a.expect(ids, "ids", {DType::I32}, d);
  a.expect(x, "logits", {DType::F32}, d);
  expect_rows(a.op(), "logits", x);
  expect_vocabulary(a.op(), x);
  expect_row_shape(a.op(), "ids", ids, x);
  const double temp = a.number(3, "temperature");
  const int64_t top_k = a.integer(4, "topK");
  const double top_p = a.number(5, "topP"), min_p = a.number(6, "minP");
  const int64_t seed = a.integer(7, "seed"), step = a.integer(8, "step");
  if (!(temp >= 0) || !std::isfinite(temp))
    fail(Code::E_ARGUMENT, "sample: temperature must be a finite number >= 0, got %g", temp);
  if (top_k < 0) fail(Code::E_ARGUMENT, "sample: topK must be >= 0 (0 = off), got %lld", static_cast<long long>(top_k));
  if (!(top_p > 0 && top_p <= 1)) fail(Code::E_ARGUMENT, "sample: topP must be in (0, 1] (1 = off), got %g", top_p);
  if (!(min_p >= 0 && min_p <= 1)) fail(Code::E_ARGUMENT, "sample: minP must be in [0, 1] (0 = off), got %g", min_p);
  if (seed < 0) fail(Code::E_ARGUMENT, "sample: seed must be a non-negative integer, got %lld", static_cast<long long>(seed));
  if (step < 0) fail(Code::E_ARGUMENT, "sample: step must be a non-negative integer, got %lld", static_cast<long long>(step));
  cpu::SampleParams p;
  p.temperature = static_cast<float>(temp);
  p.top_k = top_k;
  p.top_p = static_cast<float>(top_p);
  p.min_p = static_cast<float>(min_p);
  p.seed = static_cast<uint64_t>(seed);
  p.step = static_cast<uint64_t>(step);
  const int64_t rows = x.rows(), V = x.dim(-1);
  std::optional<Tensor> ws;  // only a temperature > 0 draws
  if (p.temperature > 0.0f && rows > 0)
    ws = empty_tensor(d, DType::I8,
                      {d.is_cpu() ? cpu::sample_workspace_bytes(rows, V) : LC_IF_CUDA(gpu::sample_workspace_bytes(rows, V), 0)});
  a.launch(
      d, [=] { cpu::sample(rows, V, x.ptr<float>(), p, ids.ptr<int32_t>(), opt_ptr<void>(ws)); },
      LC_GPU(gpu::sample(rows, V, x.ptr<float>(), p, ids.ptr<int32_t>(), opt_ptr<void>(ws), ws ? ws->numel() : 0, stream)));
}

LC_REGISTER_OP("sample", Sample);

static void SampleSpeculative(const OpArgs& a) {
  Tensor tokens = a.tensor(1, "tokens"), accepted = a.tensor(2, "accepted"), x = a.tensor(3, "logits"),
         drafts = a.tensor(4, "drafts"), positions = a.tensor(5, "positions"), params = a.tensor(6, "params");
  const Device d = x.device();
  int64_t rows, V, B, k;
  a.dims(x, "logits", {DType::F32}, d, &rows, &V);
  a.dims(drafts, "drafts", {DType::I32}, d, &B, &k);
  expect_vocabulary(a.op(), x);
  if (rows != B * (k + 1))
    fail(Code::E_SHAPE,
         "sampleSpeculative: 'logits' has %lld rows, expected B * (k + 1) = %lld for 'drafts' of shape %s (B = %lld sequences, "
         "k = %lld drafts each)",
         ll(rows), ll(B * (k + 1)), shape_str(drafts.shape).c_str(), ll(B), ll(k));
  a.expect(positions, "positions", {DType::I32}, d, {B * (k + 1)});
  a.expect(params, "params", {DType::I32}, d, {B, cpu::kSpeculativeParams});
  a.expect(tokens, "tokens", {DType::I32}, d, {B, k + 1});
  a.expect(accepted, "accepted", {DType::I32}, d, {B});
  for (const auto& [name, in] :
       {std::pair<const char*, const Tensor&>{"logits", x}, {"drafts", drafts}, {"positions", positions}, {"params", params}}) {
    if (overlaps(tokens, in)) fail(Code::E_ARGUMENT, "sampleSpeculative: 'tokens' overlaps '%s'", name);
    if (overlaps(accepted, in)) fail(Code::E_ARGUMENT, "sampleSpeculative: 'accepted' overlaps '%s'", name);
  }
  if (overlaps(tokens, accepted)) fail(Code::E_ARGUMENT, "sampleSpeculative: 'tokens' overlaps 'accepted'");
  // The parameters live in a tensor (a captured graph replays with new values), so whether a
  // sequence samples is known only when the op runs: the workspace is always made.
  std::optional<Tensor> ws;
  if (B > 0)
    ws = empty_tensor(d, DType::I8,
                      {d.is_cpu() ? cpu::sample_speculative_workspace_bytes(B, V)
                                  : LC_IF_CUDA(gpu::sample_speculative_workspace_bytes(B, V), 0)});
  a.launch(
      d,
      [=] {
        cpu::sample_speculative(B, k, V, x.ptr<float>(), drafts.ptr<int32_t>(), positions.ptr<int32_t>(), params.ptr<int32_t>(),
                                tokens.ptr<int32_t>(), accepted.ptr<int32_t>(), opt_ptr<void>(ws));
      },
      LC_GPU(gpu::sample_speculative(B, k, V, x.ptr<float>(), drafts.ptr<int32_t>(), positions.ptr<int32_t>(),
                                     params.ptr<int32_t>(), tokens.ptr<int32_t>(), accepted.ptr<int32_t>(), opt_ptr<void>(ws),
                                     ws ? ws->numel() : 0, stream)));
}

LC_REGISTER_OP("sampleSpeculative", SampleSpeculative);

static void SelectAccepted(const OpArgs& a) {
  Tensor out = a.tensor(1, "out"), candidates = a.tensor(2, "candidates"), accepted = a.tensor(3, "accepted");
  const Device d = candidates.device();
  int64_t B, R;
  a.dims(candidates, "candidates", {DType::I32}, d, &B, &R);
  if (R < 1)
    fail(Code::E_SHAPE, "selectAccepted: 'candidates' has shape %s, expected [B, k + 1] with k + 1 >= 1",
         shape_str(candidates.shape).c_str());
  a.expect(accepted, "accepted", {DType::I32}, d, {B});
  a.expect(out, "out", {DType::I32}, d, {B});
  if (overlaps(out, candidates)) fail(Code::E_ARGUMENT, "selectAccepted: 'out' overlaps 'candidates'");
  if (overlaps(out, accepted)) fail(Code::E_ARGUMENT, "selectAccepted: 'out' overlaps 'accepted'");
  const int64_t k = R - 1;
  a.launch(
      d, [=] { cpu::select_accepted(B, k, candidates.ptr<int32_t>(), accepted.ptr<int32_t>(), out.ptr<int32_t>()); },
      LC_GPU(gpu::select_accepted(B, k, candidates.ptr<int32_t>(), accepted.ptr<int32_t>(), out.ptr<int32_t>(), stream)));
}

LC_REGISTER_OP("selectAccepted", SelectAccepted);

static void Penalize(const OpArgs& a) {
  Tensor x = a.tensor(1, "logits"), history = a.tensor(2, "history"), prompt_lengths = a.tensor(3, "promptLengths"),
         params = a.tensor(4, "params"), bias_ids = a.tensor(5, "biasIds"), bias_values = a.tensor(6, "biasValues");
  const Device d = x.device();
  int64_t R, V, H, nb;
  a.dims(x, "logits", {DType::F32}, d, &R, &V);
  expect_vocabulary(a.op(), x);
  a.expect(history, "history", {DType::I32}, d, {R, -1});
  H = history.dim(1);
  a.expect(prompt_lengths, "promptLengths", {DType::I32}, d, {R});
  a.expect(params, "params", {DType::F32}, d, {R, cpu::kPenaltyParams});
  a.expect(bias_ids, "biasIds", {DType::I32}, d, {R, -1});
  nb = bias_ids.dim(1);
  a.expect(bias_values, "biasValues", {DType::F32}, d, {R, nb});
  for (const auto& [name, in] : {std::pair<const char*, const Tensor&>{"history", history},
                                 {"promptLengths", prompt_lengths},
                                 {"params", params},
                                 {"biasIds", bias_ids},
                                 {"biasValues", bias_values}})
    if (overlaps(x, in)) fail(Code::E_ARGUMENT, "penalize: 'logits' overlaps '%s'", name);
  std::optional<Tensor> ws;  // the CUDA kernel's token counts
  if (!d.is_cpu() && R > 0) ws = empty_tensor(d, DType::I8, {LC_IF_CUDA(gpu::penalize_workspace_bytes(R, V), 0)});
  a.launch(
      d,
      [=] {
        cpu::penalize(R, V, H, nb, x.ptr<float>(), history.ptr<int32_t>(), prompt_lengths.ptr<int32_t>(), params.ptr<float>(),
                      bias_ids.ptr<int32_t>(), bias_values.ptr<float>());
      },
      LC_GPU(gpu::penalize(R, V, H, nb, x.ptr<float>(), history.ptr<int32_t>(), prompt_lengths.ptr<int32_t>(),
                           params.ptr<float>(), bias_ids.ptr<int32_t>(), bias_values.ptr<float>(), opt_ptr<void>(ws),
                           ws ? ws->numel() : 0, stream)));
}

LC_REGISTER_OP("penalize", Penalize);

static void Logprobs(const OpArgs& a) {
  Tensor out = a.tensor(1, "out"), out_ids = a.tensor(2, "outIds"), x = a.tensor(3, "logits"), chosen = a.tensor(4, "chosen");
  const int64_t k = a.integer(5, "k");
  const Device d = x.device();
  int64_t R, V;
  a.dims(x, "logits", {DType::F32}, d, &R, &V);
  expect_vocabulary(a.op(), x);
  if (k < 0 || k > cpu::kMaxTopLogprobs || k > V)
    fail(Code::E_ARGUMENT, "logprobs: k must be an integer in [0, min(%lld, V = %lld)], got %lld", ll(cpu::kMaxTopLogprobs),
         ll(V), ll(k));
  a.expect(chosen, "chosen", {DType::I32}, d, {R});
  a.expect(out, "out", {DType::F32}, d, {R, 1 + k});
  a.expect(out_ids, "outIds", {DType::I32}, d, {R, k});
  for (const auto& [name, in] : {std::pair<const char*, const Tensor&>{"logits", x}, {"chosen", chosen}}) {
    if (overlaps(out, in)) fail(Code::E_ARGUMENT, "logprobs: 'out' overlaps '%s'", name);
    if (overlaps(out_ids, in)) fail(Code::E_ARGUMENT, "logprobs: 'outIds' overlaps '%s'", name);
  }
  if (overlaps(out, out_ids)) fail(Code::E_ARGUMENT, "logprobs: 'out' overlaps 'outIds'");
  a.launch(
      d, [=] { cpu::logprobs(R, V, k, x.ptr<float>(), chosen.ptr<int32_t>(), out.ptr<float>(), out_ids.ptr<int32_t>()); },
      LC_GPU(gpu::logprobs(R, V, k, x.ptr<float>(), chosen.ptr<int32_t>(), out.ptr<float>(), out_ids.ptr<int32_t>(), stream)));
}

LC_REGISTER_OP("logprobs", Logprobs);

}  // namespace lc
