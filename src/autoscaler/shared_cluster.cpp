#include "autoscaler/shared_cluster.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <set>

#include <fmt/format.h>

#include "autoscaler/autoscaler.h"
#include "scheduler/scheduler.h"
#include "scheduler/trace.h"

namespace loadstar::autoscaler {

namespace {

using scheduler::Cluster;
using scheduler::PodRequest;
using scheduler::Scheduler;

struct JobShape {
  PodRequest request;               // allowed models left out: interned per cluster
  std::vector<std::string> models;  // gpu_spec
  double lifetime_s = 0;
  bool batch = false;  // best-effort QoS
};

std::vector<std::string_view> lines_of(std::string_view text) {
  std::vector<std::string_view> out;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(start, end - start);
    while (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (!line.empty()) out.push_back(line);
    start = end + 1;
  }
  return out;
}

// The GPU pods of an openb pod list with both creation and deletion times,
// read by the scheduler's own trace parser.
Result<std::vector<JobShape>> job_shapes(std::string_view csv, double day_s) {
  Cluster models;  // interns gpu_spec; each run's cluster interns the names again
  LS_ASSIGN_OR_RETURN(std::vector<scheduler::TraceTask> tasks,
                      scheduler::load_openb_pods(csv, "pods", models));
  std::vector<JobShape> out;
  for (scheduler::TraceTask& t : tasks) {
    if (!t.request.wants_gpu() || !t.deleted_s || *t.deleted_s <= t.created_s) continue;
    JobShape s;
    for (uint32_t id : t.request.allowed_models) s.models.push_back(models.models()[id]);
    s.request = std::move(t.request);
    s.request.allowed_models.clear();
    s.lifetime_s = std::clamp(*t.deleted_s - t.created_s, 60.0, day_s);
    s.batch = t.best_effort;
    out.push_back(std::move(s));
  }
  if (out.empty())
    return make_error(ErrorCode::kInvalidArgument,
                      "pods: no GPU pod with creation_time and deletion_time (a pod list with "
                      "lifetimes: openb_pod_list_*.csv but multigpu20)");
  return out;
}

// Serving's in-flight requests per tick: the trace's arrival rate over
// 5-minute windows of the day, the peak scaled to `peak_in_flight`.
std::vector<double> serving_demand(const std::vector<TraceRequest>& trace,
                                   const SharedClusterOptions& o, double peak_in_flight) {
  const size_t ticks = static_cast<size_t>(o.day_s / o.tick_s);
  std::vector<double> rate(ticks, 0);
  if (trace.empty()) return rate;
  const double span = std::max(trace.back().at_s, 1.0);
  const double to_trace = span / o.day_s;
  const double window = 300 * to_trace;
  std::vector<double> at;
  at.reserve(trace.size());
  for (const auto& r : trace) at.push_back(r.at_s);
  double peak = 0;
  for (size_t i = 0; i < ticks; ++i) {
    const double t = static_cast<double>(i) * o.tick_s * to_trace;
    const auto lo = std::lower_bound(at.begin(), at.end(), t - window);
    const auto hi = std::upper_bound(at.begin(), at.end(), t);
    rate[i] = static_cast<double>(hi - lo) / std::min(window, std::max(t, window * 0.2));
    peak = std::max(peak, rate[i]);
  }
  for (double& r : rate) r = peak > 0 ? r / peak * peak_in_flight : 0;
  return rate;
}

struct NodeLine {
  std::string_view line;
  uint32_t gpus = 0;
};

class Day {
 public:
  Day(const SharedClusterOptions& o, const std::vector<JobShape>& pool,
      const std::vector<double>& demand, uint32_t peak_replicas)
      : o_(o), pool_(pool), demand_(demand), peak_replicas_(peak_replicas) {}

  // One cluster (`jobs_csv` empty) or two. Returns the run.
  // Stops early, the SLO missed, once serving's pending replica-seconds
  // pass `pending_budget_s`.
  Result<SharedClusterRun> run(const std::string& name, double share, const std::string& serve_csv,
                               const std::string& jobs_csv, double pending_budget_s) {
    SharedClusterRun out;
    out.name = name;
    out.serving_share = share;
    const bool shared = jobs_csv.empty();
    serve_cluster_ = std::make_unique<Cluster>();
    LS_RETURN_IF_ERROR(scheduler::load_openb_nodes(serve_csv, "nodes", *serve_cluster_));
    if (!shared) {
      jobs_cluster_ = std::make_unique<Cluster>();
      LS_RETURN_IF_ERROR(scheduler::load_openb_nodes(jobs_csv, "nodes", *jobs_cluster_));
    }
    Cluster& jc = shared ? *serve_cluster_ : *jobs_cluster_;
    LS_ASSIGN_OR_RETURN(auto policy, scheduler::PlacementPolicy::named(o_.policy));
    serve_ = std::make_unique<Scheduler>(*serve_cluster_, policy, target(*serve_cluster_));
    if (!shared) jobs_ = std::make_unique<Scheduler>(jc, policy, target(jc));
    Scheduler& js = shared ? *serve_ : *jobs_;
    const double peak_gpus = peak_replicas_ * o_.replica_gpus;
    const double serve_gpus = serve_cluster_->gpu_milli_total() / 1000.0;
    const double job_gpus = jc.gpu_milli_total() / 1000.0;
    if (shared) {
      LS_RETURN_IF_ERROR(serve_->set_queues(
          {{"serving", "", {peak_gpus, 0, 0}, std::nullopt, 1},
           {"training", "", {std::max(0.0, serve_gpus - peak_gpus), 0, 0}, std::nullopt, 1},
           {"batch", "", {}, std::nullopt, 1}}));
    } else {
      LS_RETURN_IF_ERROR(
          serve_->set_queues({{"serving", "", {serve_gpus, 0, 0}, std::nullopt, 1}}));
      LS_RETURN_IF_ERROR(jobs_->set_queues({{"training", "", {job_gpus, 0, 0}, std::nullopt, 1},
                                            {"batch", "", {}, std::nullopt, 1}}));
    }
    Spec spec;
    spec.min_replicas = 1;
    spec.max_replicas = std::max<uint32_t>(2, peak_replicas_ * 2);
    spec.in_flight_per_replica = o_.in_flight_per_replica;
    spec.stable_window_s = 60;
    spec.panic_window_s = 6;
    spec.scale_down_stabilization_s = 300;
    Autoscaler autoscaler(spec);
    std::mt19937_64 rng(o_.seed);
    std::vector<size_t> training, batch;
    for (size_t i = 0; i < pool_.size(); ++i) (pool_[i].batch ? batch : training).push_back(i);

    struct Job {
      size_t shape = 0;
      double remaining = 0;
      bool running = false;
    };
    std::map<std::string, Job> jobs;
    std::map<std::string, uint32_t> waiting = {{"training", 0}, {"batch", 0}};
    struct Replica {
      std::string name;
      bool placed = false;
      double ready_at = 0, blocked_until = 0;
    };
    std::vector<Replica> replicas;
    uint64_t next_job = 0, next_replica = 0;
    double used_gpu_s = 0, wanted_s = 0, pending_s = 0, job_gpu_s = 0;
    const double total_gpus = serve_gpus + (shared ? 0 : job_gpus);
    auto job_scheduler = [&](const std::string&) -> Scheduler& { return js; };

    for (size_t tick = 0; tick < demand_.size(); ++tick) {
      const double now = static_cast<double>(tick) * o_.tick_s;
      // Jobs that ran through the last tick progress; done ones leave.
      for (auto it = jobs.begin(); it != jobs.end();) {
        Job& j = it->second;
        if (j.running) {
          j.remaining -= o_.tick_s;
          job_gpu_s += o_.tick_s * pool_[j.shape].request.gpu_milli_request() / 1000.0;
          if (j.remaining <= 0) {
            job_scheduler(it->first).remove(it->first, now);
            ++out.jobs_finished;
            it = jobs.erase(it);
            continue;
          }
        }
        ++it;
      }
      // Serving: the autoscaler's decision on this tick's load.
      Sample sample;
      sample.now = now;
      for (const Replica& r : replicas) sample.ready += r.placed && r.ready_at <= now;
      sample.in_flight = demand_[tick];
      sample.requests_total = tick + 1;  // never idle
      autoscaler.observe(sample);
      const uint32_t desired =
          autoscaler.decide(now, static_cast<uint32_t>(replicas.size())).desired;
      while (replicas.size() < desired) {
        Replica r{fmt::format("r{}", next_replica++)};
        scheduler::Workload w;
        w.name = r.name;
        w.queue = "serving";
        w.priority = 100;
        w.preemptible = false;
        PodRequest pod;
        pod.cpu_milli = 4000;
        pod.memory_mib = 16384;
        pod.gpu_count = o_.replica_gpus;
        w.pods = {pod};
        LS_RETURN_IF_ERROR(serve_->submit(std::move(w), now));
        replicas.push_back(std::move(r));
      }
      while (replicas.size() > desired) {
        // The one on the node with the most free GPU (the controller's rule:
        // scale-down empties nodes), or the newest (highest index first).
        size_t drop = replicas.size() - 1;
        if (o_.scale_down == "emptiest-node") {
          uint64_t most_free = 0;
          for (size_t i = 0; i < replicas.size(); ++i) {
            const scheduler::WorkloadStatus* st = serve_->status(replicas[i].name);
            if (!st || st->allocations.empty()) {
              drop = i;  // unplaced: nothing to free
              break;
            }
            const uint64_t free = serve_cluster_->nodes()[st->allocations[0].node].gpu_milli_free();
            if (free >= most_free) most_free = free, drop = i;
          }
        }
        serve_->remove(replicas[drop].name, now);
        replicas.erase(replicas.begin() + static_cast<std::ptrdiff_t>(drop));
      }
      // Passes until the job queues' backlogs stop draining: demand never
      // runs out, whatever the pass's length.
      std::set<std::string> waits_for_grace;
      for (int pass = 0; pass < 4; ++pass) {
        // Each job queue keeps its backlog.
        for (auto& [queue, count] : waiting) {
          const std::vector<size_t>& from = queue == "batch" ? batch : training;
          if (from.empty()) continue;
          std::uniform_int_distribution<size_t> pick(0, from.size() - 1);
          for (; count < o_.backlog; ++count) {
            const size_t shape = from[pick(rng)];
            const std::string name = fmt::format("j{}", next_job++);
            scheduler::Workload w;
            w.name = name;
            w.queue = queue;
            w.priority = queue == "batch" ? 0 : 10;
            w.preemptible = true;
            PodRequest pod = pool_[shape].request;
            for (const auto& m : pool_[shape].models)
              pod.allowed_models.push_back(jc.intern_model(m));
            w.pods = {pod};
            LS_RETURN_IF_ERROR(js.submit(std::move(w), now));
            jobs[name] = {shape, pool_[shape].lifetime_s, false};
          }
        }
        std::vector<scheduler::CycleReport> reports = {serve_->schedule(now)};
        if (!shared) reports.push_back(jobs_->schedule(now));
        size_t jobs_started = 0;
        for (const auto& report : reports) {
          for (const auto& name : report.preempted) {
            auto it = jobs.find(name);
            if (it == jobs.end()) continue;
            it->second.running = false;  // pending again, its work kept (checkpointed)
            ++waiting[pool_[it->second.shape].batch ? "batch" : "training"];
            ++out.preemptions;
          }
          waits_for_grace.insert(report.started_by_preemption.begin(),
                                 report.started_by_preemption.end());
          for (const auto& name : report.started) {
            auto it = jobs.find(name);
            if (it == jobs.end()) continue;
            it->second.running = true;
            --waiting[pool_[it->second.shape].batch ? "batch" : "training"];
            ++jobs_started;
          }
        }
        if (jobs_started == 0) break;
      }
      for (Replica& r : replicas) {
        const scheduler::WorkloadStatus* st = serve_->status(r.name);
        const bool placed = st && st->state == scheduler::WorkloadState::kRunning;
        if (placed && !r.placed) {
          // Its place was a preempted job's: it waits for the checkpoint.
          r.blocked_until = now + (waits_for_grace.count(r.name) ? o_.grace_s : 0);
          r.ready_at = r.blocked_until + o_.replica_start_s;
        }
        r.placed = placed;
        if (!placed || r.blocked_until > now) pending_s += o_.tick_s;
      }
      wanted_s += desired * o_.tick_s;
      used_gpu_s +=
          (serve_cluster_->gpu_milli_used() + (shared ? 0 : jobs_cluster_->gpu_milli_used())) /
          1000.0 * o_.tick_s;
      out.simulated_s = now + o_.tick_s;
      if (pending_s > pending_budget_s) {
        out.stopped_early = true;
        break;
      }
    }
    out.utilisation = used_gpu_s / (total_gpus * out.simulated_s);
    out.serving_pending = wanted_s > 0 ? pending_s / wanted_s : 0;
    out.wanted_replica_hours = wanted_s / 3600;
    out.job_gpu_hours = job_gpu_s / 3600;
    out.slo_kept = !out.stopped_early && out.serving_pending <= o_.slo_pending;
    return out;
  }

 private:
  // FGD's target workload: the jobs' shapes and the serving replica's.
  std::shared_ptr<const scheduler::Fragmentation> target(Cluster& cluster) const {
    std::vector<PodRequest> tasks;
    for (const JobShape& s : pool_) {
      PodRequest r = s.request;
      for (const auto& m : s.models) r.allowed_models.push_back(cluster.intern_model(m));
      tasks.push_back(std::move(r));
    }
    PodRequest replica;
    replica.gpu_count = o_.replica_gpus;
    tasks.insert(tasks.end(), pool_.size() / 2, replica);
    return std::make_shared<const scheduler::Fragmentation>(
        scheduler::Fragmentation::from_tasks(tasks, 0.9));
  }

  const SharedClusterOptions& o_;
  const std::vector<JobShape>& pool_;
  const std::vector<double>& demand_;
  const uint32_t peak_replicas_;
  std::unique_ptr<Cluster> serve_cluster_, jobs_cluster_;
  std::unique_ptr<Scheduler> serve_, jobs_;
};

}  // namespace

Result<SharedClusterReport> run_shared_cluster(std::string_view nodes_csv,
                                               std::string_view pods_csv,
                                               const std::vector<TraceRequest>& trace,
                                               const SharedClusterOptions& o) {
  if (!(o.tick_s > 0) || !(o.day_s >= o.tick_s) || !(o.split_step > 0 && o.split_step < 1) ||
      !(o.serving_peak_share > 0 && o.serving_peak_share < 1) || o.replica_gpus == 0)
    return make_error(ErrorCode::kInvalidArgument,
                      "tick, day, split step (0..1), serving peak share (0..1) and replica GPUs "
                      "must be positive");
  LS_ASSIGN_OR_RETURN(std::vector<JobShape> pool, job_shapes(pods_csv, o.day_s));
  // Checked and counted by the scheduler's parser; the lines themselves are
  // dealt out to the splits (one node per non-empty line after the header).
  Cluster whole;
  LS_RETURN_IF_ERROR(scheduler::load_openb_nodes(nodes_csv, "nodes", whole));
  const auto lines = lines_of(nodes_csv);
  if (whole.nodes().empty() || lines.size() != whole.nodes().size() + 1)
    return make_error(ErrorCode::kInvalidArgument, "nodes: no node");
  const std::string header(lines[0]);
  std::vector<NodeLine> nodes;
  double gpus = 0;
  for (size_t i = 1; i < lines.size(); ++i) {
    const auto g = static_cast<uint32_t>(whole.nodes()[i - 1].devices.size());
    nodes.push_back({lines[i], g});
    gpus += g;
  }
  SharedClusterReport report;
  report.nodes = static_cast<uint32_t>(nodes.size());
  report.gpus = gpus;
  report.peak_replicas =
      std::max<uint32_t>(1, static_cast<uint32_t>(o.serving_peak_share * gpus / o.replica_gpus));
  const std::vector<double> demand =
      serving_demand(trace, o, report.peak_replicas * o.in_flight_per_replica);
  Day day(o, pool, demand, report.peak_replicas);

  std::string all = header + "\n";
  for (const auto& n : nodes) all += std::string(n.line) + "\n";
  LS_ASSIGN_OR_RETURN(report.shared,
                      day.run("shared", 1, all, "", std::numeric_limits<double>::infinity()));
  // The same demand asks for about the same replica-seconds on any split: a
  // split past 1.2 times the SLO's allowance of the shared run's misses it.
  const double budget = 1.2 * o.slo_pending * report.shared.wanted_replica_hours * 3600;
  // Upwards from the smallest share: those that miss the SLO stop early.
  // Once splits keep it, more for serving leaves less for jobs: the sweep
  // ends after two kept splits in a row fall a point or more below the best.
  int worse = 0;
  for (double share = o.split_step; share < 1 - 1e-9 && worse < 2; share += o.split_step) {
    // Nodes along the list to serving while it has less than its share of
    // what was handed out: both sides get the list's mix of node kinds.
    std::string serve = header + "\n", jobs = header + "\n";
    double given = 0, to_serving = 0;
    for (const auto& n : nodes) {
      given += n.gpus;
      if (to_serving < share * given) {
        serve += std::string(n.line) + "\n";
        to_serving += n.gpus;
      } else {
        jobs += std::string(n.line) + "\n";
      }
    }
    LS_ASSIGN_OR_RETURN(SharedClusterRun run, day.run(fmt::format("split {:.0f}%", share * 100),
                                                      to_serving / gpus, serve, jobs, budget));
    report.splits.push_back(std::move(run));
    const SharedClusterRun& last = report.splits.back();
    if (!last.slo_kept) continue;
    const int i = static_cast<int>(report.splits.size()) - 1;
    if (report.best_split < 0 || last.utilisation > report.splits[report.best_split].utilisation) {
      report.best_split = i;
      worse = 0;
    } else if (last.utilisation < report.splits[report.best_split].utilisation - 0.01) {
      ++worse;
    }
  }

  report.csv =
      "run,serving_share,utilisation,serving_pending,slo_kept,job_gpu_hours,jobs_finished,"
      "preemptions\n";
  report.table = fmt::format(
      "{} nodes, {:.0f} GPUs; serving peaks at {} replicas of {} GPU ({:.0f}% of the GPUs)\n"
      "{:<12} {:>8} {:>12} {:>16} {:>6} {:>10} {:>8} {:>11}\n",
      report.nodes, gpus, report.peak_replicas, o.replica_gpus, o.serving_peak_share * 100, "run",
      "serving", "utilisation", "serving pending", "SLO", "job GPU-h", "jobs", "preemptions");
  auto add = [&](const SharedClusterRun& r) {
    report.csv += fmt::format("{},{:.4f},{:.4f},{:.5f},{},{:.1f},{},{}\n", r.name, r.serving_share,
                              r.utilisation, r.serving_pending, r.slo_kept ? 1 : 0, r.job_gpu_hours,
                              r.jobs_finished, r.preemptions);
    if (r.stopped_early) {
      report.table +=
          fmt::format("{:<12} {:>7.1f}% {:>12} {:>16} {:>6}  (stopped at {:.1f} h)\n", r.name,
                      r.serving_share * 100, "-", "over the SLO", "missed", r.simulated_s / 3600);
      return;
    }
    report.table += fmt::format(
        "{:<12} {:>7.1f}% {:>11.1f}% {:>15.2f}% {:>6} {:>10.0f} {:>8} {:>11}\n", r.name,
        r.serving_share * 100, r.utilisation * 100, r.serving_pending * 100,
        r.slo_kept ? "kept" : "missed", r.job_gpu_hours, r.jobs_finished, r.preemptions);
  };
  for (const auto& r : report.splits) add(r);
  add(report.shared);
  if (report.best_split >= 0) {
    const auto& best = report.splits[report.best_split];
    report.table += fmt::format(
        "best split keeping the serving SLO: {} ({:.1f}% utilisation); shared: {:.1f}% ({:+.1f} "
        "points), serving SLO {}\n",
        best.name, best.utilisation * 100, report.shared.utilisation * 100,
        (report.shared.utilisation - best.utilisation) * 100,
        report.shared.slo_kept ? "kept" : "missed");
  } else {
    report.table += "no split kept the serving SLO\n";
  }
  return report;
}

}  // namespace loadstar::autoscaler
