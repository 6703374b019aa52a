// trace_replay: replays a production trace through the gateway, open loop,
// and reports TTFT percentiles and SLO attainment, output throughput, the
// engines' prefix-cache hit rate, and what the run cost: GPU-seconds and
// cold starts from loadstar up's metrics. Used by bench/routing (the
// Mooncake trace) and bench/autoscale (the Azure LLM trace).
//
// Traces: Mooncake's JSON lines (timestamp ms, input_length, output_length,
// hash_ids), or Azure's CSV (TIMESTAMP, ContextTokens, GeneratedTokens),
// whose prompts share nothing (each request gets its own block ids).
//
// Prompts: each of a request's hash_ids names one 512-token block; the block
// is made of vocabulary words drawn from a generator seeded by the id, so
// requests sharing leading ids share identical prefix text, exactly as they
// shared KV blocks in production. The last block is cut to the request's
// input_length.
//
// Time: the engines run at --time-scale S (model time S times faster than
// wall time) and the trace is replayed S * rate times faster, so the engines
// see the trace's arrival rate times `rate` in model time. Latencies are
// reported in model seconds (wall seconds * S).
//
// LoRA adapters (--adapters N): each request names one of N adapters
// (PREFIX0 .. PREFIX{N-1}) drawn with Zipf popularity (--adapter-zipf S:
// adapter k has weight 1/(k+1)^S), from a fixed seed, so every run sends the
// same adapter with the same request. The report adds the engines' adapter
// loads (engine-sim's counters) per model minute.
//
// Requests that met a cold start: a poller reads the replicas from the
// admin API every 50 ms; a request met a cold start when some replica of
// its service was Pending or Starting at a sample between its sending and
// its first token (it may have waited on that start), or the gateway held
// it (x-loadstar-held-seconds: no replica was ready). Their TTFT and SLO
// attainment are reported apart.
//
// Demand (with --replica-capacity C, requests one replica runs at once):
// the requests in flight in each model second, from sending to the last
// byte, and from them the clairvoyant bound on an autoscaler's cost — per
// window of W model seconds, just the replicas the window's busiest second
// needs, known in advance and ready at once — next to one static count for
// the busiest second of the run. Measured under a policy that queues little
// (static-peak), it is the demand curve; no real policy can cost less than
// the bound for its window and still serve every request at once.
//
// Token gaps: each request's time per output token after the first (TPOT,
// (last byte - first token) / (tokens - 1)) and every gap between its
// streamed events (ITL); with --slo-tpot, goodput is the share of requests
// within both SLOs (TTFT and TPOT), as DistServe judges a system; with
// --slo-itl, smooth_goodput the share within TTFT whose every gap between
// tokens is within it (a stream that never stalls).
// --input-scale / --output-scale shrink or grow the trace's lengths (a
// prompt/output mix of the same arrivals and prefixes).
//
//   trace_replay --trace T --requests N --rate R --time-scale S
//                --gateway-port P --admin-port A [--model chat]
//                [--skip-seconds X] [--slo-ttft S] [--replica-capacity C]
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <mutex>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "http/client.h"
#include "tokenizer/tokenizer.h"

namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;
constexpr uint32_t kBlockTokens = 512;

struct TraceRequest {
  double at_s = 0;  // trace time
  uint32_t input_tokens = 0;
  uint32_t output_tokens = 0;
  std::vector<uint64_t> hash_ids;
  std::string model;  // empty: --model
};

uint64_t splitmix(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// `tokens` words of block `id`, each one token (vocabulary words carry their
// leading space).
void append_block(uint64_t id, uint32_t tokens, std::string& out) {
  const auto& tok = loadstar::tokenizer::Tokenizer::get();
  uint64_t state = id * 0x2545f4914f6cdd1dull + 1;
  for (uint32_t i = 0; i < tokens; ++i) {
    const auto word = static_cast<loadstar::tokenizer::TokenId>(
        loadstar::tokenizer::kFirstWord +
        splitmix(state) % (loadstar::tokenizer::kVocabSize - loadstar::tokenizer::kFirstWord));
    out.append(tok.text_of(word));
  }
}

std::string prompt_of(const TraceRequest& r) {
  std::string text;
  text.reserve(static_cast<size_t>(r.input_tokens) * 8);
  uint32_t left = r.input_tokens;
  for (uint64_t id : r.hash_ids) {
    if (left == 0) break;
    const uint32_t n = std::min(left, kBlockTokens);
    append_block(id, n, text);
    left -= n;
  }
  return text;
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(std::ceil(p * v.size())) - 1);
  return v[i];
}

// The sum of the samples of `name` whose line contains `labels`.
double scrape(uint16_t port, const std::string& name, const std::string& labels = "") {
  auto r = loadstar::http::fetch({.port = port, .target = "/metrics", .timeout_s = 5});
  if (!r.ok()) {
    fmt::print(stderr, "scrape :{}: {}\n", port, r.error().message);
    return NAN;
  }
  double sum = 0;
  size_t pos = 0;
  while ((pos = r->body.find("\n" + name, pos)) != std::string::npos) {
    pos += 1;
    const size_t end = r->body.find('\n', pos);
    const std::string line = r->body.substr(pos, end - pos);
    const size_t space = line.rfind(' ');
    if (line.compare(0, name.size(), name) == 0 &&
        (line[name.size()] == '{' || line[name.size()] == ' ') &&
        line.find(labels) != std::string::npos)
      sum += std::stod(line.substr(space + 1));
  }
  return sum;
}

// Prints the runs of a results file as a table, with each picker's TTFT
// against round-robin's and least-request's at the same rate.
int summarize(const std::string& path) {
  std::ifstream in(path);
  std::vector<json> runs;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) runs.push_back(json::parse(line));
  fmt::print("\n{:<6} {:<14} {:>9} {:>9} {:>9} {:>11} {:>9} {:>13} {:>13} {:>10}\n", "rate",
             "picker", "TTFT p50", "p90", "p99", "out tok/s", "prefix", "p90 vs RR", "p90 vs LR",
             "loads/min");
  for (const auto& r : runs) {
    auto p90_of = [&](const char* label) -> double {
      for (const auto& o : runs)
        if (o["label"] == label && o["rate"] == r["rate"]) return o["ttft_p90_s"].get<double>();
      return std::nan("");
    };
    const double p90 = r["ttft_p90_s"];
    fmt::print(
        "{:<6} {:<14} {:>8.3f}s {:>8.3f}s {:>8.3f}s {:>11.0f} {:>8.1f}% {:>12.2f}x {:>12.2f}x "
        "{:>10}\n",
        fmt::format("{}x", r["rate"].get<double>()), r["label"].get<std::string>(),
        r["ttft_p50_s"].get<double>(), p90, r["ttft_p99_s"].get<double>(),
        r["output_tokens_per_s"].get<double>(), 100 * r["prefix_cache_hit_rate"].get<double>(),
        p90_of("round-robin") / p90, p90_of("least-request") / p90,
        r.contains("lora_loads_per_minute")
            ? fmt::format("{:.1f}", r["lora_loads_per_minute"].get<double>())
            : std::string("-"));
  }
  return 0;
}

// See "Demand" at the top. `spans` are [start, end) in model seconds.
json demand_report(const std::vector<std::pair<double, double>>& spans, unsigned capacity) {
  double last = 0;
  for (const auto& [from, to] : spans) last = std::max(last, to);
  const size_t seconds = static_cast<size_t>(std::ceil(last)) + 1;
  std::vector<int64_t> delta(seconds + 1, 0);
  for (const auto& [from, to] : spans) {
    ++delta[static_cast<size_t>(from)];
    --delta[static_cast<size_t>(to) + 1];
  }
  std::vector<int64_t> in_flight(seconds);
  int64_t running = 0, peak = 0;
  for (size_t t = 0; t < seconds; ++t) {
    running += delta[t];
    in_flight[t] = running;
    peak = std::max(peak, running);
  }
  auto replicas_for = [capacity](int64_t n) { return (n + capacity - 1) / capacity; };
  json report = {{"replica_capacity", capacity},
                 {"peak_in_flight", peak},
                 {"mean_in_flight", std::accumulate(in_flight.begin(), in_flight.end(), 0.0) /
                                        static_cast<double>(seconds)},
                 {"static_replicas", replicas_for(peak)},
                 {"static_gpu_seconds", static_cast<double>(replicas_for(peak) * seconds)}};
  for (size_t window : {10, 60}) {
    int64_t gpu_seconds = 0;
    for (size_t from = 0; from < seconds; from += window) {
      const size_t to = std::min(seconds, from + window);
      gpu_seconds +=
          replicas_for(*std::max_element(in_flight.begin() + from, in_flight.begin() + to)) *
          static_cast<int64_t>(to - from);
    }
    report[fmt::format("clairvoyant_{}s_gpu_seconds", window)] = gpu_seconds;
  }
  return report;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && std::string(argv[1]) == "--summarize") return summarize(argv[2]);
  CLI::App app{"Replay the Mooncake or Azure trace through the Loadstar gateway"};
  std::string trace_path, model = "chat", label = "run";
  size_t requests = 1000;
  double rate = 1, time_scale = 10, max_input = 32768;
  uint16_t gateway_port = 0, admin_port = 0;
  unsigned threads = 400, replica_capacity = 0;
  double skip_s = 0, slo_ttft_s = 0, slo_tpot_s = 0, slo_itl_s = 0, input_scale = 1,
         output_scale = 1;
  app.add_option("--trace", trace_path,
                 "mooncake_conversation_trace.jsonl or AzureLLMInferenceTrace_conv.csv")
      ->required();
  app.add_option("--skip-seconds", skip_s, "Start this many trace seconds in");
  app.add_option("--slo-ttft", slo_ttft_s, "TTFT SLO in model seconds (report attainment)");
  app.add_option("--slo-tpot", slo_tpot_s,
                 "Time-per-output-token SLO in model seconds (goodput: both SLOs met)");
  app.add_option("--slo-itl", slo_itl_s,
                 "Largest gap between tokens in model seconds (smooth goodput: TTFT met and no "
                 "gap over it)");
  app.add_option("--input-scale", input_scale, "Multiply every prompt's length by this");
  app.add_option("--output-scale", output_scale, "Multiply every output's length by this");
  app.add_option("--requests", requests, "Requests from the start of the trace");
  app.add_option("--rate", rate, "Arrival rate relative to the trace's");
  app.add_option("--time-scale", time_scale, "The engines' --time-scale");
  app.add_option("--max-input", max_input, "Skip requests with longer prompts (tokens)");
  app.add_option("--gateway-port", gateway_port)->required();
  unsigned gateways = 1;
  app.add_option("--gateways", gateways,
                 "Gateways on --gateway-port and the ports after it (loadstar up --gateways): "
                 "request i goes to the (i mod N)-th, a round-robin split");
  app.add_option("--admin-port", admin_port)->required();
  app.add_option("--model", model);
  app.add_option("--label", label, "Name of this run in the output");
  app.add_option("--threads", threads, "Client threads (the most requests in flight)");
  std::string requests_out;
  app.add_option("--requests-out", requests_out,
                 "Write each request here (JSON lines: sent_s, ttft_s model seconds, ok), after a "
                 "first line with the run's start (start_unix)");
  app.add_option("--replica-capacity", replica_capacity,
                 "Requests one replica runs at once: report the demand and its clairvoyant bound");
  unsigned adapters = 0;
  double adapter_zipf = 1;
  std::string adapter_prefix = "adapter-";
  app.add_option("--adapters", adapters, "Requests name one of this many LoRA adapters");
  app.add_option("--adapter-zipf", adapter_zipf, "Zipf exponent of the adapters' popularity");
  app.add_option("--adapter-prefix", adapter_prefix, "The adapters' names before their number");
  CLI11_PARSE(app, argc, argv);

  std::vector<TraceRequest> trace;
  size_t skipped = 0;
  {
    std::ifstream in(trace_path);
    if (!in) {
      fmt::print(stderr, "cannot read {}\n", trace_path);
      return 1;
    }
    std::string line;
    const bool azure = trace_path.ends_with(".csv");
    double azure_first = -1;
    uint64_t index = 0;
    if (azure) std::getline(in, line);  // header
    while (trace.size() < requests && std::getline(in, line)) {
      TraceRequest r;
      if (azure) {  // 2023-11-16 18:15:46.6805900,374,44
        int hh = 0, mm = 0;
        double ss = 0;
        uint32_t ctx = 0, gen = 0;
        if (std::sscanf(line.c_str(), "%*d-%*d-%*d %d:%d:%lf,%u,%u", &hh, &mm, &ss, &ctx, &gen) !=
            5)
          continue;
        double t = hh * 3600 + mm * 60 + ss;
        if (azure_first < 0) azure_first = t;
        r.at_s = t - azure_first;
        r.input_tokens = std::max<uint32_t>(1, ctx);
        r.output_tokens = std::max<uint32_t>(1, gen);
        ++index;
        for (uint32_t b = 0; b * kBlockTokens < r.input_tokens; ++b)
          r.hash_ids.push_back((index << 20) + b);
      } else {
        json j = json::parse(line);
        r.at_s = j["timestamp"].get<double>() / 1000;
        r.input_tokens = j["input_length"];
        r.output_tokens = std::max<uint32_t>(1, j["output_length"].get<uint32_t>());
        r.hash_ids = j["hash_ids"].get<std::vector<uint64_t>>();
      }
      if (r.at_s < skip_s) continue;
      if (r.input_tokens > max_input) {
        ++skipped;
        continue;
      }
      trace.push_back(std::move(r));
    }
  }
  if (adapters > 0) {
    std::vector<double> cumulative(adapters);
    double total = 0;
    for (unsigned k = 0; k < adapters; ++k)
      cumulative[k] = total += 1 / std::pow(k + 1.0, adapter_zipf);
    std::mt19937_64 rng(42);
    for (TraceRequest& r : trace) {
      const double draw = std::uniform_real_distribution<double>(0, total)(rng);
      const auto k = std::min<size_t>(
          adapters - 1,
          std::upper_bound(cumulative.begin(), cumulative.end(), draw) - cumulative.begin());
      r.model = adapter_prefix + std::to_string(k);
    }
  }
  for (TraceRequest& r : trace) {
    r.input_tokens =
        std::max<uint32_t>(1, static_cast<uint32_t>(std::lround(r.input_tokens * input_scale)));
    r.output_tokens =
        std::max<uint32_t>(1, static_cast<uint32_t>(std::lround(r.output_tokens * output_scale)));
  }
  // What the run costs, as loadstar up counts it (wall seconds there).
  const double gpu_seconds_before =
      scrape(gateway_port, "loadstar_scheduler_queue_gpu_seconds_total", "queue=\"default\"");
  const double cold_starts_before =
      scrape(gateway_port, "loadstar_cold_start_phase_seconds_count", "phase=\"total\"");
  const double speed = time_scale * rate;  // trace seconds per wall second

  struct Result {
    bool ok = false;
    bool held = false;         // the gateway held it for a replica to start
    double sent_s = 0;         // wall, since the start
    double ttft_s = 0;         // wall
    double end_s = 0;          // wall, since the start
    std::vector<double> gaps;  // wall, between streamed events after the first
    uint64_t completion_tokens = 0;
    uint64_t cached_tokens = 0;
    int status = 0;
    std::string error;  // the start of a failed response's body
  };
  std::vector<Result> results(trace.size());
  std::atomic<size_t> next{0};
  const Clock::time_point start = Clock::now() + std::chrono::milliseconds(200);
  const double first_at = trace.empty() ? 0 : trace.front().at_s;
  // Samples of "some replica of the service is starting", by wall time.
  std::mutex samples_mu;
  std::vector<std::pair<double, bool>> samples;
  std::atomic<bool> done{false};
  std::thread poller([&] {
    while (!done.load()) {
      auto r = loadstar::http::fetch({.port = admin_port, .target = "/api/v1/replicas"});
      const double at = std::chrono::duration<double>(Clock::now() - start).count();
      bool starting = false;
      if (r.ok() && r->status == 200) {
        const json list = json::parse(r->body, nullptr, false);
        if (list.is_object() && list.contains("items") && list["items"].is_array())
          for (const auto& item : list["items"])
            if (item.value("service", "") == model) {
              const std::string state = item.value("state", "");
              starting |= state == "Pending" || state == "Starting";
            }
      }
      {
        std::lock_guard lock(samples_mu);
        samples.emplace_back(at, starting);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  });
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < threads; ++t)
    pool.emplace_back([&] {
      for (size_t i; (i = next.fetch_add(1)) < trace.size();) {
        const TraceRequest& r = trace[i];
        json body = {{"model", r.model.empty() ? model : r.model},
                     {"prompt", prompt_of(r)},
                     {"max_tokens", r.output_tokens},
                     {"ignore_eos", true},
                     {"stream", true},
                     {"stream_options", {{"include_usage", true}}}};
        const std::string text = body.dump();
        const auto due = start + std::chrono::microseconds(
                                     static_cast<int64_t>((r.at_s - first_at) / speed * 1e6));
        std::this_thread::sleep_until(due);
        const auto sent = Clock::now();
        Result& out = results[i];
        out.sent_s = std::chrono::duration<double>(sent - start).count();
        std::string tail;
        bool first = true;
        Clock::time_point last_event = sent;
        auto response = loadstar::http::fetch_streaming(
            {.port = static_cast<uint16_t>(gateway_port + i % std::max(1u, gateways)),
             .method = "POST",
             .target = "/v1/completions",
             .body = text,
             .timeout_s = 600},
            [&](std::string_view data) {
              if (data.find("data: {") != std::string_view::npos) {
                const auto now = Clock::now();
                if (first) {
                  out.ttft_s = std::chrono::duration<double>(now - sent).count();
                  first = false;
                } else {
                  out.gaps.push_back(std::chrono::duration<double>(now - last_event).count());
                }
                last_event = now;
              }
              tail.append(data);
              if (tail.size() > 4096) tail.erase(0, tail.size() - 4096);
              return true;
            });
        out.end_s = std::chrono::duration<double>(Clock::now() - start).count();
        out.status = response.ok() ? response->status : -1;
        out.held = response.ok() && !response->header("x-loadstar-held-seconds").empty();
        if (out.status != 200)
          out.error = response.ok() ? tail.substr(0, 300) : response.error().message;
        const size_t usage = tail.rfind("\"usage\":");
        if (out.status == 200 && !first && usage != std::string::npos) {
          const size_t event = tail.rfind("data: {", usage);
          const size_t end = tail.find("\n", usage);
          json u = json::parse(tail.substr(event + 6, end - event - 6), nullptr, false);
          if (!u.is_discarded() && u.contains("usage") && u["usage"].is_object()) {
            out.ok = true;
            out.completion_tokens = u["usage"].value("completion_tokens", 0);
            if (u["usage"].contains("prompt_tokens_details") &&
                u["usage"]["prompt_tokens_details"].is_object())
              out.cached_tokens = u["usage"]["prompt_tokens_details"].value("cached_tokens", 0);
          }
        }
      }
    });
  for (auto& t : pool) t.join();
  done = true;
  poller.join();
  if (!requests_out.empty()) {
    std::ofstream out(requests_out);
    const double start_unix =
        std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count() -
        std::chrono::duration<double>(Clock::now() - start).count();
    out << json({{"start_unix", start_unix}, {"time_scale", time_scale}}).dump() << "\n";
    for (const auto& r : results)
      out << json({{"sent_s", r.sent_s},
                   {"ttft_s", r.ttft_s * time_scale},
                   {"ok", r.ok},
                   {"status", r.status}})
                 .dump()
          << "\n";
  }
  // Whether a replica was starting at any sample in [from, to] (wall), or
  // at the last sample before `from`.
  auto starting_during = [&](double from, double to) {
    auto it = std::lower_bound(samples.begin(), samples.end(), std::make_pair(from, false));
    if (it != samples.begin()) --it;
    for (; it != samples.end() && it->first <= to; ++it)
      if (it->second) return true;
    return false;
  };

  std::vector<double> ttft, cold_ttft, tpot, itl;
  size_t good = 0;                               // within both SLOs
  size_t smooth = 0;                             // within the TTFT SLO, no gap over the ITL SLO
  std::vector<std::pair<double, double>> spans;  // model seconds
  uint64_t tokens = 0, failed = 0, held = 0;
  double last_end = 0;
  std::map<int, int> failures;  // by HTTP status (-1: no response)
  for (const auto& r : results) {
    if (!r.ok) {
      if (failed < 5) fmt::print(stderr, "failed ({}): {}\n", r.status, r.error);
      ++failed;
      ++failures[r.status];
      continue;
    }
    ttft.push_back(r.ttft_s * time_scale);
    const double first_token_s = r.sent_s + r.ttft_s;
    const double per_token =
        r.completion_tokens > 1
            ? (r.end_s - first_token_s) * time_scale / static_cast<double>(r.completion_tokens - 1)
            : 0;
    tpot.push_back(per_token);
    double worst_gap = 0;
    for (double g : r.gaps) {
      itl.push_back(g * time_scale);
      worst_gap = std::max(worst_gap, g * time_scale);
    }
    smooth += r.ttft_s * time_scale <= slo_ttft_s && (slo_itl_s <= 0 || worst_gap <= slo_itl_s);
    good += r.ttft_s * time_scale <= slo_ttft_s && (slo_tpot_s <= 0 || per_token <= slo_tpot_s);
    held += r.held;
    if (r.held || starting_during(r.sent_s, r.sent_s + r.ttft_s))
      cold_ttft.push_back(r.ttft_s * time_scale);
    tokens += r.completion_tokens;
    last_end = std::max(last_end, r.end_s);
    spans.emplace_back(r.sent_s * time_scale, r.end_s * time_scale);
  }
  // The engines' own prefix-cache counters.
  double hits = 0, queries = 0, preemptions = 0, lora_loads = 0, lora_activations = 0;
  json per_replica = json::array();
  auto replicas = loadstar::http::fetch({.port = admin_port, .target = "/api/v1/replicas"});
  if (!replicas.ok()) fmt::print(stderr, "admin API: {}\n", replicas.error().message);
  const json replica_list = replicas.ok() ? json::parse(replicas->body) : json::object();
  if (replica_list.contains("items"))
    for (const auto& r : replica_list["items"]) {
      hits += scrape(r["port"].get<uint16_t>(), "vllm:prefix_cache_hits_total");
      queries += scrape(r["port"].get<uint16_t>(), "vllm:prefix_cache_queries_total");
      preemptions += scrape(r["port"].get<uint16_t>(), "vllm:num_preemptions_total");
      lora_loads += scrape(r["port"].get<uint16_t>(), "loadstar_engine_sim_lora_loads_total");
      lora_activations +=
          scrape(r["port"].get<uint16_t>(), "loadstar_engine_sim_lora_activations_total");
      const uint16_t port = r["port"].get<uint16_t>();
      per_replica.push_back(
          {{"requests", scrape(port, "vllm:request_success_total")},
           {"prompt_tokens", scrape(port, "vllm:prompt_tokens_total")},
           {"cached_tokens", scrape(port, "vllm:prefix_cache_hits_total")},
           {"engine_ttft_mean_s", scrape(port, "vllm:time_to_first_token_seconds_sum") /
                                      scrape(port, "vllm:time_to_first_token_seconds_count")}});
    }
  const double model_span = last_end * time_scale;
  size_t within_slo = 0, cold_within_slo = 0;
  for (double t : ttft) within_slo += t <= slo_ttft_s;
  for (double t : cold_ttft) cold_within_slo += t <= slo_ttft_s;
  const double gpu_seconds =
      time_scale *
      (scrape(gateway_port, "loadstar_scheduler_queue_gpu_seconds_total", "queue=\"default\"") -
       gpu_seconds_before);
  const double cold_starts =
      scrape(gateway_port, "loadstar_cold_start_phase_seconds_count", "phase=\"total\"") -
      cold_starts_before;
  json report = {
      {"label", label},
      {"requests", trace.size()},
      {"skipped_long_prompts", skipped},
      {"failed", failed},
      {"failed_by_status", failures},
      {"rate", rate},
      {"ttft_p50_s", percentile(ttft, 0.5)},
      {"ttft_p90_s", percentile(ttft, 0.9)},
      {"ttft_p99_s", percentile(ttft, 0.99)},
      {"slo_ttft_s", slo_ttft_s},
      {"tpot_p50_s", percentile(tpot, 0.5)},
      {"tpot_p90_s", percentile(tpot, 0.9)},
      {"tpot_p99_s", percentile(tpot, 0.99)},
      {"itl_p50_s", percentile(itl, 0.5)},
      {"itl_p99_s", percentile(itl, 0.99)},
      {"slo_tpot_s", slo_tpot_s},
      {"goodput", trace.empty() ? 0.0 : static_cast<double>(good) / trace.size()},
      {"goodput_per_s", model_span > 0 ? good / model_span : 0},
      {"slo_itl_s", slo_itl_s},
      {"smooth_goodput", trace.empty() ? 0.0 : static_cast<double>(smooth) / trace.size()},
      {"slo_attainment", trace.empty() ? 0.0 : static_cast<double>(within_slo) / trace.size()},
      {"gpu_seconds", gpu_seconds},
      {"cold_starts", cold_starts},
      {"met_cold_start", cold_ttft.size()},
      {"held", held},
      {"met_cold_start_ttft_p50_s", percentile(cold_ttft, 0.5)},
      {"met_cold_start_ttft_p99_s", percentile(cold_ttft, 0.99)},
      {"met_cold_start_slo_attainment",
       cold_ttft.empty() ? 1.0 : static_cast<double>(cold_within_slo) / cold_ttft.size()},
      {"trace_seconds", trace.empty() ? 0.0 : trace.back().at_s - trace.front().at_s},
      {"output_tokens_per_s", model_span > 0 ? tokens / model_span : 0},
      {"prefix_cache_hit_rate", queries > 0 ? hits / queries : 0},
      {"preemptions", preemptions},
      {"replicas", per_replica},
      {"client_ttft_mean_s",
       ttft.empty() ? 0 : std::accumulate(ttft.begin(), ttft.end(), 0.0) / ttft.size()},
      {"gateway_ttft_mean_s",
       time_scale * scrape(gateway_port, "loadstar_gateway_time_to_first_token_seconds_sum") /
           scrape(gateway_port, "loadstar_gateway_time_to_first_token_seconds_count")}};
  if (adapters > 0) {
    report["adapters"] = adapters;
    report["lora_loads"] = lora_loads;
    report["lora_activations"] = lora_activations;
    report["lora_loads_per_minute"] = model_span > 0 ? lora_loads / (model_span / 60) : 0;
  }
  if (replica_capacity > 0) report["demand"] = demand_report(spans, replica_capacity);
  fmt::print("{}\n", report.dump());
  return failed == 0 ? 0 : 3;
}
