#include "scheduler/queue_sim.h"

#include <cmath>
#include <map>
#include <random>

#include <fmt/format.h>

#include "scheduler/scheduler.h"

namespace loadstar::scheduler {

namespace {

struct Team {
  const char* name;
  double deserved;  // share of the cluster's GPUs
  double weight;
  double arrive_s, leave_s;  // submits work in this window
  uint32_t gpus_per_job;
  double mean_job_s;
};

// Phases: team-a alone borrows the whole cluster; team-b arrives and
// reclaims; team-c arrives; team-a leaves and its quota is shared by weight.
constexpr Team kTeams[] = {
    {"team-a", 0.50, 1, 0, 2400, 1, 400},
    {"team-b", 0.30, 2, 600, 3600, 2, 300},
    {"team-c", 0.20, 1, 1200, 3600, 1, 200},
};

}  // namespace

QueueSimResult run_queue_sim(const QueueSimOptions& o) {
  Cluster cluster;
  const uint32_t h100 = cluster.intern_model("H100-80GB");
  for (uint32_t i = 0; i < o.nodes; ++i) {
    Node n;
    n.name = fmt::format("node-{:02}", i);
    n.cpu_milli = 128000;
    n.memory_mib = 1024 * 1024;
    n.devices.assign(8, Device{h100, 81920, 7});
    n.topology["rack"] = fmt::format("rack-{}", i / 4);
    cluster.add_node(std::move(n));
  }
  const double total_gpus = cluster.gpu_milli_total() / 1000.0;
  Scheduler scheduler(cluster, *PlacementPolicy::named("best-fit"), nullptr, o.seed);
  std::vector<QueueSpec> specs;
  for (const Team& t : kTeams)
    specs.push_back({t.name, "", {t.deserved * total_gpus, 1e9, 1e9}, std::nullopt, t.weight});
  (void)scheduler.set_queues(specs);

  std::mt19937_64 rng(o.seed);
  std::map<std::string, double> ends;  // running job -> when it finishes
  std::map<std::string, uint32_t> waiting;
  uint64_t jobs = 0;
  QueueSimResult result;
  for (const Team& t : kTeams) {
    result.series.push_back({t.name, {}, false});
    result.series.push_back({std::string(t.name) + " fair", {}, true});
  }
  result.csv = "time";
  for (const Team& t : kTeams) result.csv += fmt::format(",{0}_share,{0}_fair", t.name);
  result.csv += "\n";
  struct Gap {
    double sum = 0;
    int n = 0;
  };
  std::map<std::pair<int, std::string>, Gap> gaps;  // (phase, team)
  for (double now = 0; now <= o.duration_s + 1e-9; now += o.tick_s) {
    for (auto it = ends.begin(); it != ends.end();) {
      if (it->second <= now) {
        scheduler.remove(it->first, now);
        it = ends.erase(it);
      } else {
        ++it;
      }
    }
    // Each active team keeps a backlog of work waiting.
    for (const Team& t : kTeams) {
      uint32_t& backlog = waiting[t.name];
      backlog = 0;
      for (const auto& q : scheduler.queues())
        if (q.name == t.name) backlog = q.waiting;
      if (now < t.arrive_s || now >= t.leave_s) continue;
      for (; backlog < 40; ++backlog) {
        Workload w;
        w.name = fmt::format("{}-job-{}", t.name, jobs++);
        w.queue = t.name;
        PodRequest pod;
        pod.gpu_count = t.gpus_per_job;
        pod.cpu_milli = 8000 * t.gpus_per_job;
        pod.memory_mib = 65536 * t.gpus_per_job;
        w.pods = {pod};
        (void)scheduler.submit(std::move(w), now);
      }
    }
    CycleReport report = scheduler.schedule(now);
    for (const auto& name : report.preempted) ends.erase(name);
    for (const auto& name : report.started) {
      const Team* team = nullptr;
      for (const Team& t : kTeams)
        if (name.starts_with(t.name)) team = &t;
      ends[name] = now + std::exponential_distribution<double>(1 / team->mean_job_s)(rng);
    }
    // A team's jobs left after it stops submitting still run out.
    const int phase = now < 600 ? 0 : now < 1200 ? 1 : now < 2400 ? 2 : 3;
    const double phase_start = phase == 0 ? 0 : phase == 1 ? 600 : phase == 2 ? 1200 : 2400;
    result.csv += fmt::format("{:.0f}", now);
    const auto queues = scheduler.queues();
    for (size_t i = 0; i < std::size(kTeams); ++i) {
      const QueueStatus& q = queues[i];
      const double share = q.allocated.gpu / total_gpus, fair = q.fair_share.gpu / total_gpus;
      result.series[2 * i].points.emplace_back(now, share);
      result.series[2 * i + 1].points.emplace_back(now, fair);
      result.csv += fmt::format(",{:.4f},{:.4f}", share, fair);
      // Steady state: two minutes into a phase while the team has a backlog.
      if (now >= phase_start + 120 && q.waiting > 0) {
        Gap& g = gaps[{phase, q.name}];
        g.sum += std::abs(share - fair);
        ++g.n;
      }
    }
    result.csv += "\n";
  }
  result.preemptions = scheduler.preemptions();
  const char* phases[] = {"0-600 s (team-a alone)", "600-1200 s (team-b arrives)",
                          "1200-2400 s (all three)", "2400-3600 s (team-a left)"};
  result.summary = fmt::format(
      "cluster: {} nodes, {:.0f} GPUs; queues team-a/b/c deserve 50/30/20%, over-quota "
      "weights 1/2/1\n",
      o.nodes, total_gpus);
  for (int p = 0; p < 4; ++p) {
    result.summary += fmt::format("{:<28}", phases[p]);
    for (const Team& t : kTeams) {
      auto it = gaps.find({p, t.name});
      if (it == gaps.end() || it->second.n == 0) {
        result.summary += fmt::format("  {}: idle          ", t.name);
        continue;
      }
      const double gap = it->second.sum / it->second.n;
      result.worst_steady_gap = std::max(result.worst_steady_gap, gap);
      result.summary += fmt::format("  {}: |share-fair| {:4.1f}%", t.name, gap * 100);
    }
    result.summary += "\n";
  }
  std::map<std::string, double> seconds = scheduler.tenant_gpu_seconds();
  result.summary += fmt::format("preemptions (reclaim): {}; GPU-hours:", result.preemptions);
  for (const Team& t : kTeams)
    result.summary += fmt::format(" {} {:.1f}", t.name, seconds[t.name] / 3600);
  result.summary += "\n";
  return result;
}

}  // namespace loadstar::scheduler
