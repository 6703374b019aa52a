// How fast the engine core simulates: replays the Azure LLM conversation
// trace (19,365 requests, prompt and output lengths as recorded) through
// EngineCore in virtual time and measures CPU time. The ratio of model
// seconds simulated to CPU seconds spent is the time scale the core alone
// could sustain on one core; the HTTP shell is measured by run.sh.
#include <time.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "engine/engine_core.h"
#include "enginesim/profiles.h"

namespace {

struct TraceRequest {
  double arrival;
  uint32_t prompt;
  uint32_t output;
};

double cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + ts.tv_nsec * 1e-9;
}

// "2023-11-16 18:15:46.6805900" -> seconds since midnight.
double parse_time(const std::string& s) {
  int h = 0, m = 0;
  double sec = 0;
  std::sscanf(s.c_str() + 11, "%d:%d:%lf", &h, &m, &sec);
  return h * 3600 + m * 60 + sec;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string path = argc > 1 ? argv[1] : "../shared/traces/AzureLLMInferenceTrace_conv.csv";
  const double compress = argc > 2 ? std::atof(argv[2]) : 1.0;
  std::ifstream in(path);
  if (!in) {
    std::fprintf(stderr, "cannot read %s\n", path.c_str());
    return 1;
  }
  std::vector<TraceRequest> trace;
  std::string line;
  std::getline(in, line);  // header
  double t0 = -1;
  while (std::getline(in, line)) {
    std::stringstream ss(line);
    std::string ts, ctx, gen;
    std::getline(ss, ts, ',');
    std::getline(ss, ctx, ',');
    std::getline(ss, gen, ',');
    double t = parse_time(ts);
    if (t0 < 0) t0 = t;
    trace.push_back({(t - t0) / compress, static_cast<uint32_t>(std::stoul(ctx)),
                     std::max<uint32_t>(1, static_cast<uint32_t>(std::stoul(gen)))});
  }
  auto profile = loadstar::enginesim::find_profile(loadstar::enginesim::kDefaultProfile, "");
  loadstar::engine::EngineConfig config;
  config.cost = profile->cost;
  config.num_gpu_blocks = profile->num_gpu_blocks;
  config.max_model_len = 16384;
  loadstar::engine::EngineCore core(config);

  const double cpu_start = cpu_seconds();
  double now = 0;
  size_t next = 0, finished = 0, tokens = 0;
  uint64_t seed = 1;
  std::vector<double> ttft;
  std::vector<double> arrival(trace.size());
  std::vector<char> first(trace.size(), 1);
  while (next < trace.size() || core.has_work()) {
    if (!core.has_work() && next < trace.size()) now = std::max(now, trace[next].arrival);
    while (next < trace.size() && trace[next].arrival <= now) {
      loadstar::engine::NewRequest r;
      r.id = next;
      r.prompt.resize(
          std::min<uint32_t>(trace[next].prompt, config.max_model_len - trace[next].output - 1));
      for (auto& t : r.prompt)
        t = 32 + static_cast<uint32_t>((seed = seed * 6364136223846793005ULL + 1) >> 40) % 30000;
      r.sampling.max_tokens = trace[next].output;
      r.sampling.ignore_eos = true;
      arrival[next] = now;
      if (core.add_request(std::move(r), now).ok()) {
      }
      ++next;
    }
    auto step = core.step(now);
    now += step.duration;
    for (const auto& out : step.outputs) {
      tokens += out.has_token;
      if (out.has_token && first[out.id]) {
        first[out.id] = 0;
        ttft.push_back(now - arrival[out.id]);
      }
      finished += out.finish != loadstar::engine::FinishReason::kNone;
    }
  }
  const double cpu = cpu_seconds() - cpu_start;
  std::sort(ttft.begin(), ttft.end());
  const auto stats = core.stats();
  std::printf("trace: %zu requests over %.0f s of arrivals (compressed %.1fx)\n", trace.size(),
              trace.back().arrival, compress);
  std::printf(
      "simulated: %.1f model seconds, %llu steps, %zu tokens, %llu preemptions, TTFT p50 %.3f s "
      "p99 %.3f s\n",
      now, static_cast<unsigned long long>(stats.num_steps), tokens,
      static_cast<unsigned long long>(stats.num_preemptions), ttft[ttft.size() / 2],
      ttft[ttft.size() * 99 / 100]);
  std::printf("cpu: %.3f s -> %.0f requests/cpu-s, %.0f steps/cpu-s, %.0f tokens/cpu-s\n", cpu,
              finished / cpu, stats.num_steps / cpu, tokens / cpu);
  std::printf("model seconds per cpu second (core-only time-scale ceiling): %.0fx\n", now / cpu);
  return finished == trace.size() ? 0 : 1;
}
