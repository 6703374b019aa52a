// Fitting engine-sim's step cost model to a real engine. A step costs
//   b0 + b1 * prefill tokens + b2 * decode sequences + b3 * context tokens
// (engine::StepCostModel); measurements of a running engine are turned
// into such steps — a lone request's time to first token is one prefill
// step, the gap between tokens of B streams decoding together is one decode
// step over their contexts — and the coefficients fitted by least squares,
// none negative. The fitted profile is derived from measurements, never
// tuned by hand; `loadstar calibrate` measures, fits and checks it on a mix
// of requests the fit did not see. Pure: no I/O.
#pragma once

#include <string>
#include <vector>

#include "common/result.h"
#include "engine/engine_core.h"

namespace loadstar::enginesim {

struct StepSample {
  double prefill_tokens = 0;
  double decode_seqs = 0;
  double context_tokens = 0;
  double seconds = 0;
};

struct StepFit {
  engine::StepCostModel cost;
  double rms_error_s = 0;  // over the samples
  double max_relative_error = 0;
};

// Non-negative least squares of the relative errors over the four
// coefficients (every subset of them is solved exactly and the best
// non-negative one kept). Needs samples
// that vary prefill, decode and context independently enough to tell them
// apart; errors name what is missing.
Result<StepFit> fit_step_cost(const std::vector<StepSample>& samples);

// Percentile `p` (0..100) of `values` by linear interpolation; 0 when empty.
double percentile(std::vector<double> values, double p);

// A profile for --profiles-file (engine-sim's format).
std::string profile_yaml(const std::string& name, const std::string& description,
                         const engine::StepCostModel& cost, uint32_t num_gpu_blocks);

}  // namespace loadstar::enginesim
