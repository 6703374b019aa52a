// `loadstar sim`: trace-driven simulations that run the scheduler's own code
// in virtual time.
//   sim schedule  the FGD paper's fill experiment on the openb trace: GPU
//                 allocation ratio against arrived workload, per policy
//   sim queues    three tenants sharing a cluster through queues: each one's
//                 share over time against its fair share, with reclaim
//   sim autoscale services (InferenceService manifests, engine-sim replicas)
//                 under the Azure LLM trace: the autoscaler's and engine-sim's
//                 own cores in virtual time; SLO attainment, GPU-seconds,
//                 cold starts per service (see autoscaler/simulation.h)
//   sim shared    a day of serving and jobs on one cluster shared through the
//                 queues against statically split clusters: utilisation and
//                 the serving SLO (see autoscaler/shared_cluster.h)
#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>

#include <fmt/core.h>
#include <fmt/ranges.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "api/resources.h"
#include "app/commands.h"
#include "app/svg_chart.h"
#include "autoscaler/shared_cluster.h"
#include "autoscaler/simulation.h"
#include "controller/scaler.h"
#include "enginesim/engine_sim.h"
#include "routing/routing_builder.h"
#include "scheduler/placement.h"
#include "scheduler/queue_sim.h"
#include "scheduler/trace.h"

namespace loadstar::app {

namespace {

namespace fs = std::filesystem;
using scheduler::Cluster;

Result<std::string> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return make_error(ErrorCode::kNotFound, "{}: cannot open", path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

Status write_file(const fs::path& path, const std::string& text) {
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    if (!out.flush()) return make_error(ErrorCode::kIo, "{}: cannot write", tmp.string());
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) return make_error(ErrorCode::kIo, "{}: {}", path.string(), ec.message());
  return {};
}

struct ScheduleArgs {
  std::string nodes = "../shared/traces/openb_node_list_gpu_node.csv";
  std::string pods = "../shared/traces/openb_pod_list_default.csv";
  std::vector<std::string> policies = scheduler::PlacementPolicy::names();
  std::vector<std::string> weighted;
  double inflate = 1.3;
  double step = 0.01;
  double coverage = 1.0;
  uint32_t synthetic_nodes = 0;
  uint64_t seed = 42;
  // "paper": the FGD paper's simulator's order (scheduler::paper_arrival);
  // "creation": the trace's creation order, then random draws (inflate).
  std::string arrival = "creation";
  uint32_t seeds = 1;  // runs averaged, seeds `seed`.. (the paper: 10, 42..51)
  std::string out = "var/sim/schedule";
};

// The cluster of the node list, or that list repeated to `synthetic_nodes`
// nodes (a larger cluster of the same mix).
Result<Cluster> load_cluster(const ScheduleArgs& a, const std::string& nodes_csv) {
  Cluster cluster;
  LS_RETURN_IF_ERROR(scheduler::load_openb_nodes(nodes_csv, a.nodes, cluster));
  if (a.synthetic_nodes > 0 && cluster.nodes().empty())
    return make_error(ErrorCode::kInvalidArgument, "{}: no nodes to repeat", a.nodes);
  if (a.synthetic_nodes > 0) {
    Cluster big;
    for (const auto& m : cluster.models()) big.intern_model(m);
    const auto& base = cluster.nodes();
    for (uint32_t i = 0; i < a.synthetic_nodes; ++i) {
      scheduler::Node n = base[i % base.size()];
      n.name = fmt::format("synthetic-{:05}", i);
      big.add_node(std::move(n));
    }
    return big;
  }
  return cluster;
}

int run_schedule(const ScheduleArgs& a) {
  if (!(a.step > 0) || !(a.inflate > 0) || !(a.coverage > 0 && a.coverage <= 1) || a.seeds == 0 ||
      (a.arrival != "paper" && a.arrival != "creation")) {
    fmt::print(stderr,
               "loadstar sim schedule: --step, --inflate and --seeds must be above 0, "
               "--coverage in (0, 1], --arrival paper or creation\n");
    return 2;
  }
  auto nodes_csv = read_file(a.nodes);
  auto pods_csv = read_file(a.pods);
  if (!nodes_csv.ok() || !pods_csv.ok()) {
    fmt::print(stderr, "loadstar sim schedule: {}\n",
               (!nodes_csv.ok() ? nodes_csv.error() : pods_csv.error()).message);
    return 1;
  }
  std::vector<scheduler::PlacementPolicy> policies;
  std::vector<std::string> all = a.policies;
  all.insert(all.end(), a.weighted.begin(), a.weighted.end());
  for (const auto& name : all) {
    auto p = scheduler::PlacementPolicy::parse(name);
    if (!p.ok()) {
      fmt::print(stderr, "loadstar sim schedule: --policies: {}\n", p.error().message);
      return 2;
    }
    policies.push_back(*p);
  }
  // One parse for the workload; every policy gets a fresh cluster.
  auto probe = load_cluster(a, *nodes_csv);
  if (!probe.ok()) {
    fmt::print(stderr, "loadstar sim schedule: {}\n", probe.error().message);
    return 1;
  }
  if (probe->gpu_milli_total() == 0) {
    fmt::print(stderr, "loadstar sim schedule: {}: no node has a GPU\n", a.nodes);
    return 1;
  }
  auto trace = scheduler::load_openb_pods(*pods_csv, a.pods, *probe);
  if (!trace.ok()) {
    fmt::print(stderr, "loadstar sim schedule: {}\n", trace.error().message);
    return 1;
  }
  auto arrival = [&](uint64_t seed) {
    return a.arrival == "paper"
               ? scheduler::paper_arrival(*trace, probe->gpu_milli_total(), a.inflate, seed)
               : scheduler::inflate(*trace, probe->gpu_milli_total(), a.inflate, seed);
  };
  const auto tasks = arrival(a.seed);
  std::vector<scheduler::PodRequest> requests;
  for (const auto& t : *trace) requests.push_back(t.request);
  auto fragmentation = std::make_shared<const scheduler::Fragmentation>(
      scheduler::Fragmentation::from_tasks(requests, a.coverage));
  auto typical =
      std::make_shared<const scheduler::Fragmentation>(scheduler::Fragmentation::typical(requests));
  const double total_gpus = probe->gpu_milli_total() / 1000.0;
  fmt::print(
      "cluster: {} nodes, {:.0f} GPUs; workload: {} tasks ({} from the trace), {:.0f}% of "
      "GPU capacity, {} order; FGD target: {} task types covering {:.0f}% ({} typical ones for "
      "fgd-paper); {} seed(s) from {}\n",
      probe->nodes().size(), total_gpus, tasks.size(), trace->size(), a.inflate * 100,
      a.arrival == "paper" ? "the paper's shuffled" : "creation", fragmentation->target().size(),
      a.coverage * 100, typical->target().size(), a.seeds, a.seed);

  std::vector<std::vector<scheduler::FillPoint>> curves;
  std::vector<double> rates;
  std::vector<std::pair<double, double>> leftovers;
  for (const auto& policy : policies) {
    std::vector<std::vector<scheduler::FillPoint>> runs;
    double seconds = 0, placed = 0, partial = 0, idle = 0;
    for (uint32_t k = 0; k < a.seeds; ++k) {
      const uint64_t seed = a.seed + k;
      const auto seed_tasks = k == 0 ? tasks : arrival(seed);
      auto cluster = load_cluster(a, *nodes_csv);
      for (const auto& m : probe->models()) cluster->intern_model(m);  // same ids as the tasks
      scheduler::Placer placer(*cluster, policy, policy.typical_target ? typical : fragmentation,
                               seed);
      const auto start = std::chrono::steady_clock::now();
      runs.push_back(scheduler::fill(*cluster, placer, seed_tasks, a.step));
      seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      placed += static_cast<double>(seed_tasks.size());
      // Where the unallocated GPUs are: leftovers in partly used cards, or
      // idle cards no task could take (their node's CPU or memory is gone).
      for (const auto& n : cluster->nodes())
        for (const auto& d : n.devices) (d.idle() ? idle : partial) += d.free_milli() / 1000.0;
    }
    curves.push_back(scheduler::mean_curve(runs));
    rates.push_back(placed / seconds);
    leftovers.emplace_back(partial / a.seeds, idle / a.seeds);
  }

  // Points at each 10% of arrived workload from 50%, then the end.
  std::string csv = "arrived";
  for (const auto& p : policies) csv += "," + p.name;
  csv += "\n";
  const size_t rows = curves.empty() ? 0 : curves[0].size();
  for (size_t i = 0; i < rows; ++i) {
    csv += fmt::format("{:.4f}", curves[0][i].arrived);
    for (const auto& c : curves) csv += fmt::format(",{:.5f}", i < c.size() ? c[i].allocated : 0);
    csv += "\n";
  }
  fmt::print("\n{:<12}", "arrived");
  for (const auto& p : policies) fmt::print("{:>15}", p.name);
  fmt::print("\n");
  for (double mark = 0.5; mark <= a.inflate + 1e-9; mark += 0.1) {
    fmt::print("{:<12}", fmt::format("{:.0f}%", mark * 100));
    for (const auto& c : curves) {
      auto it =
          std::find_if(c.begin(), c.end(), [&](const auto& p) { return p.arrived >= mark - 1e-9; });
      if (it == c.end()) it = c.end() - 1;
      fmt::print("{:>14.1f}%", it->allocated * 100);
    }
    fmt::print("\n");
  }
  fmt::print("{:<12}", "unallocated");
  for (const auto& c : curves) fmt::print("{:>15.0f}", (1 - c.back().allocated) * total_gpus);
  fmt::print("\n{:<12}", "unplaced");
  for (const auto& c : curves) fmt::print("{:>15}", c.back().unplaced);
  fmt::print("\n{:<12}", "in partial");
  for (const auto& l : leftovers) fmt::print("{:>15.0f}", l.first);
  fmt::print("\n{:<12}", "idle cards");
  for (const auto& l : leftovers) fmt::print("{:>15.0f}", l.second);
  fmt::print("\n{:<12}", "tasks/s");
  for (double r : rates) fmt::print("{:>15.0f}", r);
  fmt::print("\n");
  // Unallocated GPUs at the end, against best-fit's (the paper's headline):
  // ours, and the paper simulator's own.
  for (size_t i = 0; i < policies.size(); ++i) {
    if (policies[i].name != "best-fit" && policies[i].name != "best-fit-paper") continue;
    const double base = 1 - curves[i].back().allocated;
    for (size_t j = 0; j < policies.size(); ++j)
      if (j != i && base > 0 && policies[j].name.find("best-fit") == std::string::npos)
        fmt::print("{}: {:.1f}% fewer unallocated GPUs than {}\n", policies[j].name,
                   100 * (1 - (1 - curves[j].back().allocated) / base), policies[i].name);
  }

  std::error_code ec;
  fs::create_directories(a.out, ec);
  SvgChart chart;
  chart.title =
      fmt::format("GPU allocation ratio, {} ({} nodes, {:.0f} GPUs)",
                  fs::path(a.pods).filename().string(), probe->nodes().size(), total_gpus);
  chart.x_label = "arrived workload (% of GPU capacity)";
  chart.y_label = "GPUs allocated (%)";
  chart.x_min = 0.5;
  chart.x_max = a.inflate;
  chart.y_min = 0.5;
  chart.y_max = 1.0;
  for (size_t i = 0; i < policies.size(); ++i) {
    SvgChart::Series s{policies[i].name, {}};
    for (const auto& p : curves[i]) s.points.emplace_back(p.arrived, p.allocated);
    chart.series.push_back(std::move(s));
  }
  for (auto [file, text] : {std::pair{"fill.csv", csv}, std::pair{"fill.svg", chart.render()}}) {
    if (auto s = write_file(fs::path(a.out) / file, text); !s.ok()) {
      fmt::print(stderr, "loadstar sim schedule: {}\n", s.error().message);
      return 1;
    }
  }
  fmt::print("wrote {}/fill.csv and {}/fill.svg\n", a.out, a.out);
  return 0;
}

struct AutoscaleArgs {
  std::string file;
  std::string trace = "../shared/traces/AzureLLMInferenceTrace_conv.csv";
  size_t requests = 0;  // 0: all
  double skip_s = 0, rate = 1, max_input = 32768, slo_ttft_s = 2;
  double cold_start_s = 1, period_s = 0.1;
  uint32_t baselines = 0;  // the most static replicas searched; 0: no baselines
  double goal = 0.99;
  bool oracles = false;  // search the reactive oracles too (16 more runs)
  std::string json_out, out;
};

// The replicas' engine from an engine-sim service's args, as the engine
// would read them (the model directory does not matter here).
Result<enginesim::EngineSimOptions> engine_sim_options(const api::InferenceService& svc) {
  if (svc.spec.engine.name != "engine-sim")
    return make_error(ErrorCode::kInvalidArgument,
                      "service {}: engine '{}': only engine-sim replicas can be simulated",
                      svc.metadata.name, svc.spec.engine.name);
  enginesim::EngineSimOptions options;
  // spec.engine.maxSequences comes as --max-num-seqs (engines.cpp); args after.
  if (svc.spec.engine.max_sequences) options.max_num_seqs = *svc.spec.engine.max_sequences;
  CLI::App parser;
  add_engine_sim_options(parser, options);
  std::string log_level;  // every loadstar command's; nothing to model
  parser.add_option("--log-level", log_level);
  std::vector<std::string> args(svc.spec.engine.args.rbegin(), svc.spec.engine.args.rend());
  try {
    parser.parse(args);  // CLI11 takes them last first
  } catch (const CLI::ParseError& e) {
    return make_error(ErrorCode::kInvalidArgument, "service {}: engine args: {}", svc.metadata.name,
                      e.what());
  }
  return options;
}

int run_autoscale(const AutoscaleArgs& a) {
  auto fail = [](int code, const std::string& why) {
    fmt::print(stderr, "loadstar sim autoscale: {}\n", why);
    return code;
  };
  if (!(a.rate > 0) || !(a.cold_start_s >= 0) || !(a.period_s > 0) || !(a.slo_ttft_s > 0))
    return fail(2, "--rate, --period and --slo-ttft must be above 0, --cold-start not negative");
  auto resources = api::load_resource_file(a.file);
  if (!resources.ok()) return fail(2, resources.error().message);
  std::vector<api::InferenceService> services;
  for (auto& r : *resources)
    if (auto* svc = std::get_if<api::InferenceService>(&r)) services.push_back(std::move(*svc));
  if (services.empty()) return fail(2, fmt::format("{}: no InferenceService to simulate", a.file));
  auto text = read_file(a.trace);
  if (!text.ok()) return fail(1, text.error().message);
  auto parsed = autoscaler::parse_azure_trace(*text, a.trace);
  if (!parsed.ok()) return fail(1, parsed.error().message);
  std::vector<autoscaler::TraceRequest> trace;
  size_t skipped = 0;
  for (const auto& r : *parsed) {
    if (a.requests && trace.size() >= a.requests) break;
    if (r.at_s < a.skip_s) continue;
    if (r.input_tokens > a.max_input) {
      ++skipped;
      continue;
    }
    trace.push_back({(r.at_s - a.skip_s) / a.rate, r.input_tokens, r.output_tokens});
  }
  if (trace.empty()) return fail(1, fmt::format("{}: no request left to replay", a.trace));

  std::string json_lines, csv = "policy,t_s,replicas,ready,in_flight\n";
  std::vector<SvgChart::Series> series;
  std::optional<double> baseline;
  double run_s = 0;
  std::vector<autoscaler::SimOptions> runs;
  for (const auto& svc : services) {
    auto engine = engine_sim_options(svc);
    if (!engine.ok()) return fail(2, engine.error().message);
    if (!engine->max_model_len)
      fmt::print(stderr,
                 "note: service {}: no --max-model-len in its engine args; simulating 4096 "
                 "tokens (the model's own limit is not read)\n",
                 svc.metadata.name);
    auto config = enginesim::engine_config(*engine, 4096);
    if (!config.ok())
      return fail(2, fmt::format("service {}: {}", svc.metadata.name, config.error().message));
    autoscaler::SimOptions& o = runs.emplace_back();
    o.engine = *config;
    o.time_scale = engine->time_scale;
    o.cold_start_s = a.cold_start_s;
    o.period_s = a.period_s;
    o.slo_ttft_s = a.slo_ttft_s;
    o.replicas = svc.spec.replicas;
    if (svc.spec.autoscaling) o.autoscaling = controller::autoscaler_spec(svc);
    // The gateway's flow control, as the service's routing table gets it.
    const gateway::FlowControl flow = routing::flow_control(svc);
    if (flow.max_waiting || flow.max_kv_usage)
      fmt::print(stderr,
                 "note: service {}: flow control's waiting and KV-cache thresholds are not "
                 "simulated (only maxInFlightPerReplica)\n",
                 svc.metadata.name);
    o.max_in_flight_per_replica = flow.max_in_flight.value_or(0);
    o.max_queued = flow.max_queued;
    o.queue_timeout_s = flow.queue_timeout_s;
    if (svc.spec.autoscaling && svc.spec.autoscaling->slo_ttft_s)
      o.queue_slo_s = *svc.spec.autoscaling->slo_ttft_s * o.time_scale;  // model seconds
  }
  // What the services are judged against, from the first one's replica.
  std::optional<autoscaler::Baselines> base;
  if (a.oracles && !a.baselines) return fail(2, "--oracles needs --baselines MAX");
  if (a.baselines) {
    auto b = autoscaler::baselines(
        trace, runs[0],
        {.attainment = a.goal, .max_replicas = a.baselines, .reactive_oracles = a.oracles});
    if (!b.ok()) return fail(1, b.error().message);
    base = std::move(*b);
    if (base->best_static)
      fmt::print(
          "hindsight-best static: {} replica(s), the fewest of 1-{} with {:g}% within the SLO: "
          "{:.2f}% at {:.0f} GPU-s\n",
          *base->best_static, a.baselines, a.goal * 100,
          100 * base->best_static_report.slo_attainment, base->best_static_report.gpu_seconds);
    else
      fmt::print("hindsight-best static: none of 1-{} replicas meets {:g}% within the SLO\n",
                 a.baselines, a.goal * 100);
    fmt::print(
        "clairvoyant bound: {:.0f} GPU-s (each 10 s window's busiest moment under {} static "
        "replicas, one request per slot, ready at once)\n",
        base->clairvoyant_gpu_seconds, a.baselines);
    fmt::print(
        "oracle with foresight (each moment's need, one request per slot, asked a cold start "
        "ahead): {:.2f}% at {:.0f} GPU-s\n",
        100 * base->foresight.report.slo_attainment, base->foresight.report.gpu_seconds);
    if (a.oracles && base->best_reactive)
      fmt::print(
          "cheapest reactive oracle with {:g}% (need as soon as it comes, headroom {:g}, "
          "memory {:g} s): {:.2f}% at {:.0f} GPU-s\n",
          a.goal * 100, base->best_reactive->headroom, base->best_reactive->memory_s,
          100 * base->best_reactive->report.slo_attainment,
          base->best_reactive->report.gpu_seconds);
    else if (a.oracles)
      fmt::print("no reactive oracle (headroom 0-1, memory 10-1200 s) meets {:g}%\n", a.goal * 100);
  }
  const bool vs_best = base && base->best_static;
  fmt::print("{:<16} {:>8} {:>9} {:>7} {:>5} {:>7} {:>5} {:>9} {:>8} {:>8}\n", "service", "SLO met",
             "GPU-s", vs_best ? "vs best" : "vs 1st", "cold", "changes", "peak", "TTFT p50", "p90",
             "p99");
  for (size_t i = 0; i < services.size(); ++i) {
    const api::InferenceService& svc = services[i];
    const autoscaler::SimOptions& o = runs[i];
    auto report = autoscaler::simulate(trace, o);
    if (!report.ok())
      return fail(1, fmt::format("service {}: {}", svc.metadata.name, report.error().message));
    const auto& r = *report;
    if (!baseline) baseline = vs_best ? base->best_static_report.gpu_seconds : r.gpu_seconds;
    run_s = std::max(run_s, r.run_s);
    fmt::print(
        "{:<16} {:>7.2f}% {:>9.0f} {:>7.2f} {:>5} {:>7} {:>5} {:>8.3f}s {:>7.3f}s {:>7.3f}s\n",
        svc.metadata.name, 100 * r.slo_attainment, r.gpu_seconds,
        *baseline > 0 ? r.gpu_seconds / *baseline : 0, r.cold_starts, r.scale_changes,
        r.peak_replicas, r.ttft_p50_s, r.ttft_p90_s, r.ttft_p99_s);
    if (r.rejected || r.cut_off || r.refused)
      fmt::print(
          "  {} request(s) refused by the engine, {} by the gateway's full or timed-out queue, "
          "{} cut off by a drain timeout\n",
          r.rejected, r.refused, r.cut_off);
    nlohmann::json doc{{"label", svc.metadata.name},
                       {"requests", r.requests},
                       {"slo_ttft_s", a.slo_ttft_s},
                       {"slo_attainment", r.slo_attainment},
                       {"gpu_seconds", r.gpu_seconds},
                       {"cold_starts", r.cold_starts},
                       {"scale_changes", r.scale_changes},
                       {"peak_replicas", r.peak_replicas},
                       {"held", r.held},
                       {"rejected", r.rejected},
                       {"cut_off", r.cut_off},
                       {"refused", r.refused},
                       {"ttft_p50_s", r.ttft_p50_s},
                       {"ttft_p90_s", r.ttft_p90_s},
                       {"ttft_p99_s", r.ttft_p99_s},
                       {"run_s", r.run_s}};
    if (base) {
      doc["clairvoyant_gpu_seconds"] = base->clairvoyant_gpu_seconds;
      doc["foresight_slo_attainment"] = base->foresight.report.slo_attainment;
      doc["foresight_gpu_seconds"] = base->foresight.report.gpu_seconds;
      if (const auto& o = base->best_reactive) {
        doc["reactive_headroom"] = o->headroom;
        doc["reactive_memory_s"] = o->memory_s;
        doc["reactive_slo_attainment"] = o->report.slo_attainment;
        doc["reactive_gpu_seconds"] = o->report.gpu_seconds;
      }
      if (base->best_static) {
        doc["best_static_replicas"] = *base->best_static;
        doc["best_static_gpu_seconds"] = base->best_static_report.gpu_seconds;
        doc["best_static_slo_attainment"] = base->best_static_report.slo_attainment;
      }
    }
    json_lines += doc.dump() + "\n";
    SvgChart::Series line{svc.metadata.name, {}, false};
    for (const auto& p : r.timeline) {
      csv += fmt::format("{},{:.1f},{},{},{}\n", svc.metadata.name, p.at_s, p.replicas, p.ready,
                         p.in_flight);
      line.points.emplace_back(p.at_s, p.replicas);
    }
    series.push_back(std::move(line));
  }
  fmt::print(
      "({} requests over {:.0f} model seconds{}; SLO: TTFT <= {:g} s; a simulation: see "
      "docs/autoscaling.md for what it leaves out)\n",
      trace.size(), trace.back().at_s,
      skipped ? fmt::format(", {} longer than --max-input skipped", skipped) : "", a.slo_ttft_s);
  if (!a.json_out.empty())
    if (auto s = write_file(a.json_out, json_lines); !s.ok()) return fail(1, s.error().message);
  if (!a.out.empty()) {
    SvgChart chart;
    chart.title = "Replicas over the trace, per service";
    chart.x_label = "model time (s)";
    chart.y_label = "replicas (starting, ready and draining)";
    chart.x_max = run_s;
    chart.percent_x = chart.percent_y = false;
    for (const auto& s : series)
      for (const auto& [x, y] : s.points) chart.y_max = std::max(chart.y_max, y + 1);
    chart.series = std::move(series);
    std::error_code ec;
    fs::create_directories(a.out, ec);
    for (auto [file, body] :
         {std::pair{"autoscale.csv", csv}, std::pair{"autoscale.svg", chart.render()}})
      if (auto s = write_file(fs::path(a.out) / file, body); !s.ok())
        return fail(1, s.error().message);
    fmt::print("wrote {}/autoscale.csv and {}/autoscale.svg\n", a.out, a.out);
  }
  return 0;
}

struct SharedArgs {
  std::string nodes = "../shared/traces/openb_node_list_gpu_node.csv";
  std::string pods = "../shared/traces/openb_pod_list_default.csv";
  std::string trace = "../shared/traces/AzureLLMInferenceTrace_conv.csv";
  std::string out = "var/sim/shared";
  autoscaler::SharedClusterOptions options;
};

int run_shared(const SharedArgs& a) {
  auto fail = [](int code, const std::string& why) {
    fmt::print(stderr, "loadstar sim shared: {}\n", why);
    return code;
  };
  auto nodes = read_file(a.nodes);
  auto pods = read_file(a.pods);
  auto text = read_file(a.trace);
  if (!nodes.ok()) return fail(1, nodes.error().message);
  if (!pods.ok()) return fail(1, pods.error().message);
  if (!text.ok()) return fail(1, text.error().message);
  auto trace = autoscaler::parse_azure_trace(*text, a.trace);
  if (!trace.ok()) return fail(1, trace.error().message);
  auto report = autoscaler::run_shared_cluster(*nodes, *pods, *trace, a.options);
  if (!report.ok()) return fail(2, report.error().message);
  fmt::print("{}", report->table);
  std::error_code ec;
  fs::create_directories(a.out, ec);
  if (auto s = write_file(fs::path(a.out) / "shared.csv", report->csv); !s.ok())
    return fail(1, s.error().message);
  fmt::print("wrote {}/shared.csv\n", a.out);
  return 0;
}

}  // namespace

std::function<int()> setup_sim(CLI::App& app) {
  app.require_subcommand(1);
  auto schedule_args = std::make_shared<ScheduleArgs>();
  CLI::App* schedule =
      app.add_subcommand("schedule", "Replay the openb GPU trace (FGD paper's fill experiment)");
  schedule->add_option("--nodes", schedule_args->nodes, "openb node list CSV")
      ->capture_default_str();
  schedule->add_option("--pods", schedule_args->pods, "openb pod list CSV")->capture_default_str();
  schedule->add_option("--policies", schedule_args->policies, "Placement policies to compare")
      ->delimiter(',')
      ->capture_default_str();
  schedule->add_option("--weights", schedule_args->weighted,
                       "Also compare a policy given as scorer weights, e.g. "
                       "fragmentation=1,bestFit=0.05 (repeatable)");
  schedule
      ->add_option("--inflate", schedule_args->inflate,
                   "Arrived GPU demand to reach, as a share of capacity")
      ->capture_default_str();
  schedule->add_option("--step", schedule_args->step, "CSV resolution (share of capacity)")
      ->capture_default_str();
  schedule
      ->add_option("--coverage", schedule_args->coverage,
                   "FGD target workload: most popular task types covering this share")
      ->capture_default_str();
  schedule->add_option("--synthetic-nodes", schedule_args->synthetic_nodes,
                       "Repeat the node list to this many nodes (throughput runs)");
  schedule->add_option("--seed", schedule_args->seed)->capture_default_str();
  schedule
      ->add_option("--arrival", schedule_args->arrival,
                   "Task order: paper (the FGD paper's simulator: shuffled, then drawn with "
                   "replacement up to --inflate) or creation (creation order, then drawn)")
      ->check(CLI::IsMember({"paper", "creation"}))
      ->capture_default_str();
  schedule
      ->add_option("--seeds", schedule_args->seeds,
                   "Runs averaged, with seeds --seed, --seed+1, ... (the paper averages 10)")
      ->check(CLI::Range(1u, 1000u))
      ->capture_default_str();
  schedule->add_option("-o,--out", schedule_args->out, "Directory for fill.csv and fill.svg")
      ->capture_default_str();

  auto queue_args = std::make_shared<scheduler::QueueSimOptions>();
  auto queue_out = std::make_shared<std::string>("var/sim/queues");
  CLI::App* queues =
      app.add_subcommand("queues", "Three teams share a cluster: shares, fair shares, reclaim");
  queues->add_option("--nodes", queue_args->nodes, "8-GPU nodes")->capture_default_str();
  queues->add_option("--duration", queue_args->duration_s, "Simulated seconds")
      ->capture_default_str();
  queues->add_option("--seed", queue_args->seed)->capture_default_str();
  queues->add_option("-o,--out", *queue_out, "Directory for queues.csv and queues.svg")
      ->capture_default_str();

  auto autoscale_args = std::make_shared<AutoscaleArgs>();
  CLI::App* autoscale = app.add_subcommand(
      "autoscale", "Replay the Azure LLM trace against services' autoscaling in virtual time");
  autoscale
      ->add_option("-f,--file", autoscale_args->file,
                   "InferenceService manifests (engine-sim), each simulated on its own")
      ->required();
  autoscale->add_option("--trace", autoscale_args->trace, "Azure LLM inference trace CSV")
      ->capture_default_str();
  autoscale->add_option("--requests", autoscale_args->requests, "Replay the first N (0: all)")
      ->capture_default_str();
  autoscale->add_option("--skip-seconds", autoscale_args->skip_s, "Start this far into the trace")
      ->capture_default_str();
  autoscale->add_option("--rate", autoscale_args->rate, "Multiple of the trace's arrival rate")
      ->capture_default_str();
  autoscale->add_option("--max-input", autoscale_args->max_input, "Skip longer prompts (tokens)")
      ->capture_default_str();
  autoscale->add_option("--slo-ttft", autoscale_args->slo_ttft_s, "TTFT SLO (model seconds)")
      ->capture_default_str();
  autoscale
      ->add_option("--cold-start", autoscale_args->cold_start_s,
                   "A new replica's creation to ready (wall seconds of the modelled run)")
      ->capture_default_str();
  autoscale
      ->add_option("--period", autoscale_args->period_s,
                   "Between controller passes (wall seconds of the modelled run)")
      ->capture_default_str();
  autoscale
      ->add_option("--baselines", autoscale_args->baselines,
                   "Also find the hindsight-best static count (1 to N replicas of the first "
                   "service's engine) and the clairvoyant bound")
      ->capture_default_str();
  autoscale
      ->add_option("--goal", autoscale_args->goal,
                   "Share of requests within the SLO a static count must meet")
      ->check(CLI::Range(0.5, 1.0))
      ->capture_default_str();
  autoscale->add_flag("--oracles", autoscale_args->oracles,
                      "With --baselines: also the cheapest reactive oracle that meets --goal (it "
                      "knows each moment's need as it comes; headroom and memory searched, 16 "
                      "more runs)");
  autoscale->add_option("--json", autoscale_args->json_out, "Write one JSON line per service");
  autoscale->add_option("-o,--out", autoscale_args->out,
                        "Directory for autoscale.csv and autoscale.svg (replicas over time)");

  auto shared_args = std::make_shared<SharedArgs>();
  CLI::App* shared = app.add_subcommand(
      "shared", "A day of serving and jobs on one shared cluster against statically split ones");
  shared->add_option("--nodes", shared_args->nodes, "openb node list CSV")->capture_default_str();
  shared->add_option("--pods", shared_args->pods, "openb pod list CSV (with lifetimes)")
      ->capture_default_str();
  shared
      ->add_option("--trace", shared_args->trace, "Azure LLM inference trace CSV (serving's shape)")
      ->capture_default_str();
  auto& so = shared_args->options;
  shared
      ->add_option("--serving-peak-share", so.serving_peak_share,
                   "Serving's peak GPUs over the cluster's")
      ->capture_default_str();
  shared->add_option("--replica-gpus", so.replica_gpus)->capture_default_str();
  shared->add_option("--backlog", so.backlog, "Jobs each job queue keeps waiting")
      ->capture_default_str();
  shared->add_option("--tick", so.tick_s, "Seconds between scheduler passes")
      ->capture_default_str();
  shared->add_option("--day", so.day_s, "Simulated seconds")->capture_default_str();
  shared->add_option("--grace", so.grace_s, "A preempted job's checkpoint window (s)")
      ->capture_default_str();
  shared
      ->add_option("--scale-down", so.scale_down,
                   "Which replica goes on scale-down: emptiest-node (the controller's) or newest")
      ->check(CLI::IsMember({"newest", "emptiest-node"}))
      ->capture_default_str();
  shared->add_option("--split-step", so.split_step, "Step of the static splits swept")
      ->capture_default_str();
  shared
      ->add_option("--slo-pending", so.slo_pending,
                   "Serving SLO: wanted replica-seconds without a place, at most this share")
      ->capture_default_str();
  shared->add_option("--policy", so.policy, "Placement policy")->capture_default_str();
  shared->add_option("--seed", so.seed)->capture_default_str();
  shared->add_option("-o,--out", shared_args->out, "Directory for shared.csv")
      ->capture_default_str();

  return [=]() -> int {
    if (schedule->parsed()) return run_schedule(*schedule_args);
    if (shared->parsed()) return run_shared(*shared_args);
    if (autoscale->parsed()) return run_autoscale(*autoscale_args);
    if (queues->parsed()) {
      if (queue_args->nodes == 0 || !(queue_args->duration_s > 0)) {
        fmt::print(stderr, "loadstar sim queues: --nodes and --duration must be above 0\n");
        return 2;
      }
      const auto result = scheduler::run_queue_sim(*queue_args);
      fmt::print("{}", result.summary);
      SvgChart chart;
      chart.title = "GPU share per queue (dashed: its fair share)";
      chart.x_label = "time (s)";
      chart.y_label = "share of the cluster's GPUs";
      chart.x_max = queue_args->duration_s;
      chart.percent_x = false;
      for (const auto& s : result.series) chart.series.push_back({s.name, s.points, s.dashed});
      std::error_code ec;
      fs::create_directories(*queue_out, ec);
      for (auto [file, text] :
           {std::pair{"queues.csv", result.csv}, std::pair{"queues.svg", chart.render()}}) {
        if (auto s = write_file(fs::path(*queue_out) / file, text); !s.ok()) {
          fmt::print(stderr, "loadstar sim queues: {}\n", s.error().message);
          return 1;
        }
      }
      fmt::print("wrote {}/queues.csv and {}/queues.svg\n", *queue_out, *queue_out);
      return 0;
    }
    return 2;
  };
}

}  // namespace loadstar::app
