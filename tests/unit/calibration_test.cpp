// Fitting engine-sim's step cost model to measurements (enginesim/calibration.h).
#include <gtest/gtest.h>

#include <random>

#include "enginesim/calibration.h"

namespace loadstar::enginesim {
namespace {

// Samples shaped like `loadstar calibrate`'s, from a known model, with
// `noise` relative jitter.
std::vector<StepSample> samples_of(const engine::StepCostModel& truth, double noise) {
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> jitter(1 - noise, 1 + noise);
  std::vector<StepSample> out;
  for (double p : {32, 128, 256, 512, 1024})
    for (int r = 0; r < 3; ++r)
      out.push_back({p, 0, p, truth.step_seconds(uint64_t(p), 0, uint64_t(p)) * jitter(rng)});
  for (double b : {1, 2, 4})
    for (double c : {88, 536})
      for (int r = 0; r < 3; ++r)
        out.push_back(
            {0, b, b * c, truth.step_seconds(0, uint64_t(b), uint64_t(b * c)) * jitter(rng)});
  return out;
}

TEST(Calibration, RecoversAKnownCostModel) {
  const engine::StepCostModel truth{0.004, 120e-6, 300e-6, 900e-9};
  auto fit = fit_step_cost(samples_of(truth, 0));
  ASSERT_TRUE(fit.ok()) << fit.error().message;
  EXPECT_NEAR(fit->cost.base_s, truth.base_s, 1e-9);
  EXPECT_NEAR(fit->cost.per_prefill_token_s, truth.per_prefill_token_s, 1e-12);
  EXPECT_NEAR(fit->cost.per_decode_seq_s, truth.per_decode_seq_s, 1e-11);
  EXPECT_NEAR(fit->cost.per_context_token_s, truth.per_context_token_s, 1e-13);
  EXPECT_LT(fit->max_relative_error, 1e-6);

  // With 5% noise the fit predicts every sample within about that.
  auto noisy = fit_step_cost(samples_of(truth, 0.05));
  ASSERT_TRUE(noisy.ok());
  EXPECT_LT(noisy->max_relative_error, 0.12);
  EXPECT_NEAR(noisy->cost.per_prefill_token_s, truth.per_prefill_token_s,
              0.15 * truth.per_prefill_token_s);
}

TEST(Calibration, CoefficientsAreNeverNegative) {
  // Decode gaps that shrink with context would want a negative b3.
  std::vector<StepSample> s = {{100, 0, 100, 0.010}, {400, 0, 400, 0.030}, {0, 1, 100, 0.005},
                               {0, 1, 600, 0.004},   {0, 2, 200, 0.006},   {0, 2, 1200, 0.005}};
  auto fit = fit_step_cost(s);
  ASSERT_TRUE(fit.ok()) << fit.error().message;
  EXPECT_GE(fit->cost.base_s, 0);
  EXPECT_GE(fit->cost.per_prefill_token_s, 0);
  EXPECT_GE(fit->cost.per_decode_seq_s, 0);
  EXPECT_GE(fit->cost.per_context_token_s, 0);
}

TEST(Calibration, SamplesThatCannotBeFittedAreClearErrors) {
  EXPECT_FALSE(fit_step_cost({}).ok());
  auto prefill_only =
      fit_step_cost({{10, 0, 10, 0.01}, {20, 0, 20, 0.02}, {30, 0, 30, 0.03}, {40, 0, 40, 0.04}});
  ASSERT_FALSE(prefill_only.ok());
  EXPECT_NE(prefill_only.error().message.find("prefill and decode"), std::string::npos);
  auto negative = fit_step_cost({{10, 0, 10, -1}, {0, 1, 10, 0.01}, {1, 1, 1, 1}, {2, 2, 2, 2}});
  EXPECT_FALSE(negative.ok());
}

TEST(Calibration, PercentilesInterpolate) {
  EXPECT_EQ(percentile({}, 50), 0);
  EXPECT_DOUBLE_EQ(percentile({3, 1, 2}, 50), 2);
  EXPECT_DOUBLE_EQ(percentile({1, 2, 3, 4}, 90), 3.7);
  const std::string yaml = profile_yaml("x", "d", {0.004, 120e-6, 300e-6, 900e-9}, 100);
  EXPECT_NE(yaml.find("base_ms: 4\n"), std::string::npos) << yaml;
  EXPECT_NE(yaml.find("prefill_token_us: 120\n"), std::string::npos) << yaml;
}

}  // namespace
}  // namespace loadstar::enginesim
