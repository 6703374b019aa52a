#include "enginesim/calibration.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>

#include <fmt/format.h>

namespace loadstar::enginesim {

namespace {

constexpr int kTerms = 4;

std::array<double, kTerms> row(const StepSample& s) {
  return {1.0, s.prefill_tokens, s.decode_seqs, s.context_tokens};
}

// Solves the normal equations restricted to the terms in `mask`; false when
// they are singular.
bool solve(const std::vector<StepSample>& samples, unsigned mask,
           std::array<double, kTerms>& coefficients) {
  std::vector<int> terms;
  for (int t = 0; t < kTerms; ++t)
    if (mask & (1u << t)) terms.push_back(t);
  const size_t n = terms.size();
  // A (n x n+1), Gaussian elimination with partial pivoting. Columns are
  // scaled to unit size first so that tokens (hundreds) and the constant
  // term (1) are conditioned alike.
  std::array<double, kTerms> scale{};
  for (size_t i = 0; i < n; ++i) {
    double m = 0;
    for (const auto& s : samples) m = std::max(m, std::abs(row(s)[terms[i]]));
    scale[i] = m > 0 ? m : 1;
  }
  std::vector<std::vector<double>> a(n, std::vector<double>(n + 1, 0));
  // Relative errors are minimised (each sample weighted by 1/seconds^2):
  // a 20 ms decode gap counts as much as a 2 s prefill.
  for (const auto& s : samples) {
    const auto r = row(s);
    const double w = 1 / (s.seconds * s.seconds);
    for (size_t i = 0; i < n; ++i) {
      for (size_t j = 0; j < n; ++j) a[i][j] += w * r[terms[i]] / scale[i] * r[terms[j]] / scale[j];
      a[i][n] += w * r[terms[i]] / scale[i] * s.seconds;
    }
  }
  for (size_t c = 0; c < n; ++c) {
    size_t pivot = c;
    for (size_t r = c + 1; r < n; ++r)
      if (std::abs(a[r][c]) > std::abs(a[pivot][c])) pivot = r;
    if (std::abs(a[pivot][c]) < 1e-12) return false;
    std::swap(a[c], a[pivot]);
    for (size_t r = 0; r < n; ++r) {
      if (r == c) continue;
      const double f = a[r][c] / a[c][c];
      for (size_t k = c; k <= n; ++k) a[r][k] -= f * a[c][k];
    }
  }
  coefficients.fill(0);
  for (size_t i = 0; i < n; ++i) coefficients[terms[i]] = a[i][n] / a[i][i] / scale[i];
  return true;
}

double predict(const std::array<double, kTerms>& b, const StepSample& s) {
  const auto r = row(s);
  double v = 0;
  for (int t = 0; t < kTerms; ++t) v += b[t] * r[t];
  return v;
}

}  // namespace

Result<StepFit> fit_step_cost(const std::vector<StepSample>& samples) {
  bool prefill = false, decode = false;
  for (const auto& s : samples) {
    if (!(s.seconds > 0) || s.prefill_tokens < 0 || s.decode_seqs < 0 || s.context_tokens < 0)
      return make_error(ErrorCode::kInvalidArgument,
                        "a sample with {} s, {} prefill tokens, {} sequences, {} context tokens "
                        "cannot be fitted",
                        s.seconds, s.prefill_tokens, s.decode_seqs, s.context_tokens);
    prefill |= s.prefill_tokens > 0;
    decode |= s.decode_seqs > 0;
  }
  if (samples.size() < kTerms || !prefill || !decode)
    return make_error(ErrorCode::kInvalidArgument,
                      "{} samples: a fit needs at least {}, with prefill and decode steps both",
                      samples.size(), kTerms);
  std::array<double, kTerms> best{};
  double best_sse = std::numeric_limits<double>::infinity();
  for (unsigned mask = 1; mask < (1u << kTerms); ++mask) {
    std::array<double, kTerms> b{};
    if (!solve(samples, mask, b)) continue;
    if (std::any_of(b.begin(), b.end(), [](double v) { return v < 0; })) continue;
    double sse = 0;  // relative
    for (const auto& s : samples) sse += std::pow((predict(b, s) - s.seconds) / s.seconds, 2);
    if (sse < best_sse) {
      best_sse = sse;
      best = b;
    }
  }
  if (!std::isfinite(best_sse))
    return make_error(ErrorCode::kInvalidArgument, "no non-negative fit of the samples");
  StepFit fit;
  fit.cost.base_s = best[0];
  fit.cost.per_prefill_token_s = best[1];
  fit.cost.per_decode_seq_s = best[2];
  fit.cost.per_context_token_s = best[3];
  double abs_sse = 0;
  for (const auto& s : samples) abs_sse += std::pow(predict(best, s) - s.seconds, 2);
  fit.rms_error_s = std::sqrt(abs_sse / static_cast<double>(samples.size()));
  for (const auto& s : samples)
    fit.max_relative_error =
        std::max(fit.max_relative_error, std::abs(predict(best, s) - s.seconds) / s.seconds);
  return fit;
}

double percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const double at = std::clamp(p, 0.0, 100.0) / 100.0 * static_cast<double>(values.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(at));
  const size_t hi = std::min(values.size() - 1, lo + 1);
  return values[lo] + (values[hi] - values[lo]) * (at - static_cast<double>(lo));
}

std::string profile_yaml(const std::string& name, const std::string& description,
                         const engine::StepCostModel& cost, uint32_t num_gpu_blocks) {
  return fmt::format(
      "profiles:\n"
      "  - name: {}\n"
      "    description: \"{}\"\n"
      "    base_ms: {:.6g}\n"
      "    prefill_token_us: {:.6g}\n"
      "    decode_seq_us: {:.6g}\n"
      "    context_token_ns: {:.6g}\n"
      "    num_gpu_blocks: {}\n",
      name, description, cost.base_s * 1e3, cost.per_prefill_token_s * 1e6,
      cost.per_decode_seq_s * 1e6, cost.per_context_token_s * 1e9, num_gpu_blocks);
}

}  // namespace loadstar::enginesim
