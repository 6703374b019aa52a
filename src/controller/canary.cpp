#include "controller/canary.h"

#include <algorithm>

#include <fmt/format.h>

#include "autoscaler/autoscaler.h"

namespace loadstar::controller {

using gateway::Endpoint;

void CanarySample::add(const ReplicaLoad& load) {
  requests += load.requests;
  failures += load.failures;
  for (size_t b = 0; b < ttft.size(); ++b) ttft[b] += load.ttft[b];
  for (size_t b = 0; b < itl.size(); ++b) itl[b] += load.itl[b];
}

double CanarySample::error_rate() const {
  return requests == 0 ? 0 : static_cast<double>(failures) / static_cast<double>(requests);
}

std::optional<double> CanarySample::ttft_p99() const {
  return autoscaler::histogram_quantile(0.99, Endpoint::kTtftBounds, ttft.data(), ttft.size());
}

std::optional<double> CanarySample::itl_p99() const {
  return autoscaler::histogram_quantile(0.99, Endpoint::kItlBounds, itl.data(), itl.size());
}

namespace {

template <size_t N>
uint64_t total(const std::array<uint64_t, N>& counts) {
  uint64_t n = 0;
  for (uint64_t c : counts) n += c;
  return n;
}

// A latency bound: the canary's p99 against `ratio` times the stable's,
// the stable's taken as at least `floor`: below it differences are too
// small to act on, and a canary's replicas are always freshly started
// (their first requests run cold), which a warm stable group is not.
constexpr double kTtftFloor = 0.1;  // seconds
constexpr double kItlFloor = 0.02;  // seconds
std::optional<std::string> latency_breach(const char* what, std::optional<double> ratio,
                                          std::optional<double> canary,
                                          std::optional<double> stable, double floor) {
  if (!ratio || !canary || !stable) return std::nullopt;
  const double bound = *ratio * std::max(*stable, floor);
  if (*canary <= bound) return std::nullopt;
  return fmt::format("{} p99 {:.3f}s against the stable revision's {:.3f}s (at most {:g}x)", what,
                     *canary, *stable, *ratio);
}

}  // namespace

CanaryVerdict judge_step(const api::CanaryAnalysis& analysis, const CanarySample& canary,
                         const CanarySample& stable, double held_s, double pause_s) {
  if (canary.requests < analysis.min_requests)
    return {CanaryVerdict::kWait, fmt::format("{} of {} requests reached the canary",
                                              canary.requests, analysis.min_requests)};
  const double increase = canary.error_rate() - stable.error_rate();
  if (increase > analysis.max_error_rate_increase)
    return {CanaryVerdict::kFail,
            fmt::format("{:.1f}% of the canary's requests failed ({} of {}) against {:.1f}% of "
                        "the stable revision's (at most {:g} points more)",
                        100 * canary.error_rate(), canary.failures, canary.requests,
                        100 * stable.error_rate(), 100 * analysis.max_error_rate_increase)};
  const bool ttft_enough =
      total(canary.ttft) >= analysis.min_requests && total(stable.ttft) >= analysis.min_requests;
  if (ttft_enough)
    if (auto breach = latency_breach("TTFT", analysis.max_ttft_p99_ratio, canary.ttft_p99(),
                                     stable.ttft_p99(), kTtftFloor))
      return {CanaryVerdict::kFail, *breach};
  const bool itl_enough =
      total(canary.itl) >= analysis.min_requests && total(stable.itl) >= analysis.min_requests;
  if (itl_enough)
    if (auto breach = latency_breach("inter-token latency", analysis.max_itl_p99_ratio,
                                     canary.itl_p99(), stable.itl_p99(), kItlFloor))
      return {CanaryVerdict::kFail, *breach};
  std::string measured =
      fmt::format("{} requests, {:.1f}% failed (stable {:.1f}%)", canary.requests,
                  100 * canary.error_rate(), 100 * stable.error_rate());
  if (held_s < pause_s)
    return {CanaryVerdict::kWait, fmt::format("{}; {:.0f}s of the step's {:.0f}s left", measured,
                                              pause_s - held_s, pause_s)};
  return {CanaryVerdict::kPass, measured};
}

uint32_t canary_replicas(uint32_t desired, uint32_t weight) {
  if (desired == 0) return 0;
  const uint32_t n = static_cast<uint32_t>((static_cast<uint64_t>(desired) * weight + 99) / 100);
  return std::clamp<uint32_t>(n, 1, desired);
}

}  // namespace loadstar::controller
