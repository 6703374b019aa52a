// `loadstar calibrate`: measures a running OpenAI-compatible engine and fits
// an engine-sim profile to it (enginesim/calibration.h), then, with
// --validate, replays a mix of requests the fit did not see against the
// engine and against engine-sim running the fitted profile, and compares
// their time to first token and inter-token latency.
//
// Measured: a lone request's time to first token at several prompt lengths
// (one prefill step each; every prompt begins with a fresh nonce, so no
// prefix cache helps), and the gaps between tokens of 1, 2 and N streams
// decoding together at two context lengths (one decode step each). Prompts
// are sized in the engine's own tokens: a probe reads how many tokens a
// word costs it (usage.prompt_tokens).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <random>
#include <thread>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "app/commands.h"
#include "common/process.h"
#include "common/url.h"
#include "enginesim/calibration.h"
#include "http/client.h"
#include "model/model_dir.h"

namespace loadstar::app {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using SteadyClock = std::chrono::steady_clock;

constexpr const char* kWords[] = {
    "the",   "house", "river", "light", "stone", "green", "water", "small", "night", "north",
    "bread", "glass", "field", "paper", "horse", "music", "table", "cloud", "plant", "smile",
    "sound", "train", "bird",  "chair", "dream", "earth", "fruit", "heart", "story", "world"};

struct Target {
  std::string host;
  uint16_t port = 0;
  std::string model;
};

// One streamed completion: when it was sent, when each token arrived.
struct Trace {
  SteadyClock::time_point sent;
  std::vector<SteadyClock::time_point> tokens;
  int prompt_tokens = 0;
  std::string error;
  double ttft() const {
    return tokens.empty() ? 0 : std::chrono::duration<double>(tokens.front() - sent).count();
  }
  // Gaps between tokens [from, to).
  std::vector<double> gaps(size_t from = 1, size_t to = SIZE_MAX) const {
    std::vector<double> out;
    for (size_t i = std::max<size_t>(from, 1); i < tokens.size() && i < to; ++i)
      out.push_back(std::chrono::duration<double>(tokens[i] - tokens[i - 1]).count());
    return out;
  }
};

// `words` words, beginning with a nonce so no two prompts share a prefix —
// within a run (the generator) and across runs against the same engine,
// whose prompt cache outlives a run (the process's own random start).
std::string prompt_of(size_t words, std::mt19937_64& rng) {
  static const uint64_t run = std::random_device()() * 0x9E3779B97F4A7C15ull;
  std::string out = fmt::format("{:x}", rng() ^ run);
  for (size_t i = 0; i < words; ++i) out += std::string(" ") + kWords[rng() % std::size(kWords)];
  return out;
}

Trace complete(const Target& t, const std::string& prompt, int max_tokens) {
  json body = {{"model", t.model},
               {"prompt", prompt},
               {"max_tokens", max_tokens},
               {"stream", true},
               {"ignore_eos", true},
               {"temperature", 0},
               {"stream_options", {{"include_usage", true}}}};
  Trace trace;
  std::string buffer;
  trace.sent = SteadyClock::now();
  auto r = http::fetch_streaming(
      {.host = t.host,
       .port = t.port,
       .method = "POST",
       .target = "/v1/completions",
       .body = body.dump(),
       .headers = {{"Content-Type", "application/json"}},
       .timeout_s = 600},
      [&](std::string_view data) {
        const auto now = SteadyClock::now();
        buffer.append(data);
        for (size_t end; (end = buffer.find("\n\n")) != std::string::npos;) {
          const std::string event = buffer.substr(0, end);
          buffer.erase(0, end + 2);
          if (!event.starts_with("data: ") || event == "data: [DONE]") continue;
          const json chunk = json::parse(event.substr(6), nullptr, false);
          if (!chunk.is_object()) continue;
          if (auto u = chunk.find("usage"); u != chunk.end() && u->is_object())
            trace.prompt_tokens = u->value("prompt_tokens", 0);
          if (auto c = chunk.find("choices"); c != chunk.end() && c->is_array() && !c->empty() &&
                                              !(*c)[0].value("text", std::string()).empty())
            trace.tokens.push_back(now);
        }
        return true;
      });
  if (!r.ok())
    trace.error = r.error().message;
  else if (r->status != 200)
    trace.error = fmt::format("HTTP {}: {}", r->status, r->body);
  return trace;
}

// Requests in parallel, each sent `delays[i]` after the first.
std::vector<Trace> run_together(const Target& t, const std::vector<std::string>& prompts,
                                int max_tokens, const std::vector<double>& delays = {}) {
  std::vector<Trace> out(prompts.size());
  std::vector<std::thread> threads;
  const auto start = SteadyClock::now();
  for (size_t i = 0; i < prompts.size(); ++i)
    threads.emplace_back([&, i] {
      if (i < delays.size())
        std::this_thread::sleep_until(start + std::chrono::duration<double>(delays[i]));
      out[i] = complete(t, prompts[i], max_tokens);
    });
  for (auto& th : threads) th.join();
  return out;
}

// Tokens a word costs the engine (its own tokenizer, via usage).
Result<double> tokens_per_word(const Target& t, std::mt19937_64& rng) {
  const Trace probe = complete(t, prompt_of(400, rng), 1);
  if (!probe.error.empty()) return make_error(ErrorCode::kUnavailable, "{}", probe.error);
  if (probe.prompt_tokens <= 0)
    return make_error(ErrorCode::kInvalidArgument,
                      "the engine reported no usage.prompt_tokens (stream_options.include_usage)");
  return probe.prompt_tokens / 401.0;
}

struct MixResult {
  std::vector<double> ttft, itl;
};

// The held-out mix: prompts of 96, 384 and 768 tokens in turn, 32 tokens
// each, sent every `gap_s`; `rounds` times.
Result<MixResult> run_mix(const Target& t, int requests, double gap_s, int rounds, uint64_t seed) {
  std::mt19937_64 rng(seed);
  LS_ASSIGN_OR_RETURN(double per_word, tokens_per_word(t, rng));
  MixResult out;
  static constexpr int kLengths[] = {96, 384, 768};
  for (int round = 0; round < rounds; ++round) {
    std::vector<std::string> prompts;
    std::vector<double> delays;
    for (int i = 0; i < requests; ++i) {
      prompts.push_back(prompt_of(static_cast<size_t>(kLengths[i % 3] / per_word), rng));
      delays.push_back(i * gap_s);
    }
    for (const Trace& tr : run_together(t, prompts, 32, delays)) {
      if (!tr.error.empty()) return make_error(ErrorCode::kUnavailable, "{}", tr.error);
      out.ttft.push_back(tr.ttft());
      for (double g : tr.gaps()) out.itl.push_back(g);
    }
  }
  return out;
}

}  // namespace

std::function<int()> setup_calibrate(CLI::App& app) {
  struct Args {
    std::string url;
    std::string model;
    int parallel = 4;
    int repeats = 3;
    std::string output = "calibrated.yaml";
    std::string name = "calibrated";
    uint32_t blocks = 4096;
    bool validate = false;
    int mix_requests = 12;
    double mix_gap_s = 0.15;
    int mix_rounds = 3;
    uint64_t seed = 1;
  };
  auto a = std::make_shared<Args>();
  app.add_option("--url", a->url, "The engine, e.g. http://127.0.0.1:8080")->required();
  app.add_option("--model", a->model, "The model name it serves")->required();
  app.add_option("--parallel", a->parallel, "Sequences it decodes at once (its slots)")
      ->capture_default_str();
  app.add_option("--repeats", a->repeats, "Measurements per point")->capture_default_str();
  app.add_option("-o,--output", a->output, "The fitted profile (engine-sim --profiles-file)")
      ->capture_default_str();
  app.add_option("--name", a->name, "The profile's name")->capture_default_str();
  app.add_option("--num-gpu-blocks", a->blocks, "KV blocks of the profile (its capacity)")
      ->capture_default_str();
  app.add_flag("--validate", a->validate,
               "Then replay a held-out mix against the engine and against engine-sim with the "
               "fitted profile, and compare");
  app.add_option("--mix-requests", a->mix_requests)->capture_default_str();
  app.add_option("--mix-gap", a->mix_gap_s, "Seconds between the mix's arrivals")
      ->capture_default_str();
  app.add_option("--mix-rounds", a->mix_rounds)->capture_default_str();
  app.add_option("--seed", a->seed)->capture_default_str();
  return [a]() -> int {
    auto url = parse_url(a->url);
    if (!url.ok()) {
      fmt::print(stderr, "--url: {}\n", url.error().message);
      return 2;
    }
    const Target engine{url->host, url->port, a->model};
    std::mt19937_64 rng(a->seed);
    auto per_word = tokens_per_word(engine, rng);
    if (!per_word.ok()) {
      fmt::print(stderr, "loadstar calibrate: {}\n", per_word.error().message);
      return 1;
    }
    std::vector<enginesim::StepSample> samples;
    fmt::print("prefill: time to first token of a lone request\n  {:>8} {:>10}\n", "tokens",
               "ttft ms");
    for (int tokens : {32, 128, 256, 512, 1024})
      for (int r = 0; r < a->repeats; ++r) {
        const Trace t =
            complete(engine, prompt_of(static_cast<size_t>(tokens / *per_word), rng), 1);
        if (!t.error.empty() || t.tokens.empty()) {
          fmt::print(stderr, "loadstar calibrate: {}\n", t.error.empty() ? "no token" : t.error);
          return 1;
        }
        samples.push_back({double(t.prompt_tokens), 0, double(t.prompt_tokens), t.ttft()});
        fmt::print("  {:>8} {:>10.2f}\n", t.prompt_tokens, t.ttft() * 1e3);
      }
    fmt::print("decode: gap between tokens of streams decoding together\n  {:>8} {:>8} {:>10}\n",
               "streams", "context", "itl ms");
    constexpr int kDecodeTokens = 48;
    std::vector<int> batches = {1, 2, a->parallel};
    batches.erase(std::unique(batches.begin(), batches.end()), batches.end());
    for (int b : batches)
      for (int context : {64, 512})
        for (int r = 0; r < a->repeats; ++r) {
          std::vector<std::string> prompts;
          for (int i = 0; i < b; ++i)
            prompts.push_back(prompt_of(static_cast<size_t>(context / *per_word), rng));
          std::vector<double> gaps;
          double prompt_tokens = 0;
          for (const Trace& t : run_together(engine, prompts, kDecodeTokens)) {
            if (!t.error.empty()) {
              fmt::print(stderr, "loadstar calibrate: {}\n", t.error);
              return 1;
            }
            // The middle of the stream, when all of them decode.
            for (double g : t.gaps(8, kDecodeTokens - 8)) gaps.push_back(g);
            prompt_tokens += t.prompt_tokens;
          }
          const double itl = enginesim::percentile(gaps, 50);
          const double mean_context = prompt_tokens / b + kDecodeTokens / 2.0;
          samples.push_back({0, double(b), b * mean_context, itl});
          fmt::print("  {:>8} {:>8.0f} {:>10.2f}\n", b, mean_context, itl * 1e3);
        }
    auto fit = enginesim::fit_step_cost(samples);
    if (!fit.ok()) {
      fmt::print(stderr, "loadstar calibrate: {}\n", fit.error().message);
      return 1;
    }
    const auto& c = fit->cost;
    fmt::print(
        "fit: base {:.3f} ms, prefill {:.2f} us/token, decode {:.2f} us/sequence, context "
        "{:.2f} ns/token (rms error {:.2f} ms, worst {:.0f}% of a sample)\n",
        c.base_s * 1e3, c.per_prefill_token_s * 1e6, c.per_decode_seq_s * 1e6,
        c.per_context_token_s * 1e9, fit->rms_error_s * 1e3, fit->max_relative_error * 100);
    std::ofstream(a->output) << enginesim::profile_yaml(
        a->name,
        fmt::format("fitted by loadstar calibrate to {} ({} samples)", a->url, samples.size()), c,
        a->blocks);
    fmt::print("wrote {}\n", a->output);
    if (!a->validate) return 0;

    // engine-sim with the fitted profile, on a synthetic model, at the
    // engine's parallelism and in real time.
    const fs::path dir = fs::temp_directory_path() / fmt::format("loadstar-calibrate-{}", getpid());
    fs::create_directories(dir);
    if (auto m = model::synth_model({.size_bytes = 16 << 20, .output = dir / "model"}); !m.ok()) {
      fmt::print(stderr, "loadstar calibrate: {}\n", m.error().message);
      return 1;
    }
    ProcessOptions p;
    std::error_code ec;
    const fs::path self = fs::read_symlink("/proc/self/exe", ec);
    p.argv = {self.string(),
              "engine-sim",
              "--model",
              (dir / "model").string(),
              "--served-model-name",
              a->model,
              "--port",
              "0",
              "--port-file",
              (dir / "port").string(),
              "--profiles-file",
              fs::absolute(a->output).string(),
              "--profile",
              a->name,
              "--max-num-seqs",
              std::to_string(a->parallel)};
    p.output_path = (dir / "engine-sim.log").string();
    auto sim = Subprocess::start(p);
    if (!sim.ok()) {
      fmt::print(stderr, "loadstar calibrate: {}\n", sim.error().message);
      return 1;
    }
    uint16_t sim_port = 0;
    for (int i = 0; i < 500 && sim_port == 0; ++i) {
      std::ifstream in(dir / "port");
      int port = 0;
      if (in >> port && port > 0) sim_port = static_cast<uint16_t>(port);
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    const Target simulated{"127.0.0.1", sim_port, a->model};
    auto real_mix = run_mix(engine, a->mix_requests, a->mix_gap_s, a->mix_rounds, a->seed + 1);
    auto sim_mix = run_mix(simulated, a->mix_requests, a->mix_gap_s, a->mix_rounds, a->seed + 1);
    sim->stop(std::chrono::milliseconds(2000));
    fs::remove_all(dir);
    if (!real_mix.ok() || !sim_mix.ok()) {
      fmt::print(stderr, "loadstar calibrate: {}\n",
                 (!real_mix.ok() ? real_mix : sim_mix).error().message);
      return 1;
    }
    fmt::print(
        "held-out mix: {} requests of 96/384/768 prompt tokens and 32 output tokens, one every "
        "{:.0f} ms, {} rounds\n  {:<10} {:>10} {:>10} {:>8}\n",
        a->mix_requests, a->mix_gap_s * 1e3, a->mix_rounds, "", "engine ms", "sim ms", "error");
    auto row = [](const char* what, const std::vector<double>& real, const std::vector<double>& sim,
                  double p) {
      const double r = enginesim::percentile(real, p), s = enginesim::percentile(sim, p);
      fmt::print("  {:<10} {:>10.2f} {:>10.2f} {:>7.1f}%\n", what, r * 1e3, s * 1e3,
                 r > 0 ? (s - r) / r * 100 : 0.0);
    };
    row("TTFT p50", real_mix->ttft, sim_mix->ttft, 50);
    row("TTFT p90", real_mix->ttft, sim_mix->ttft, 90);
    row("ITL p50", real_mix->itl, sim_mix->itl, 50);
    row("ITL p90", real_mix->itl, sim_mix->itl, 90);
    return 0;
  };
}

}  // namespace loadstar::app
