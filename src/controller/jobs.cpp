#include "controller/jobs.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace loadstar::controller {

const char* job_phase_name(JobPhase phase) {
  switch (phase) {
    case JobPhase::kQueued:
      return "Queued";
    case JobPhase::kRunning:
      return "Running";
    case JobPhase::kStopping:
      return "Stopping";
    case JobPhase::kSucceeded:
      return "Succeeded";
    case JobPhase::kFailed:
      return "Failed";
  }
  return "Unknown";
}

std::string Jobs::worker_name(const std::string& job, uint32_t index) {
  // Not "<job>-<index>": that is a replica's name, and Pods share one namespace.
  return fmt::format("{}-worker-{}", job, index);
}

double Jobs::gpus_per_worker(const api::Job& job) const {
  const api::GpuRequirements& g = job.spec.gpu;
  if (!g.mig.empty()) return 1.0 / 8;  // as the scheduler charges a slice at least
  if (g.fraction) return *g.fraction;
  if (g.memory_bytes) return 1;  // a memory share counts as a card until one is chosen
  return g.count;
}

bool Jobs::take_over(Job& j, const std::string& name, Placement& placement, double now) {
  std::vector<RunningWorker> running = runtime_.running_workers(name);
  const uint32_t n = j.job.spec.workers;
  if (running.empty() || running.size() != n) return false;
  std::sort(running.begin(), running.end(),
            [](const RunningWorker& a, const RunningWorker& b) { return a.index < b.index; });
  for (uint32_t i = 0; i < n; ++i)
    if (running[i].index != i || running[i].attempt != running[0].attempt) return false;
  // Workers whose devices were not recorded (Pods of an older controller)
  // cannot be held in the bookkeeping: the attempt runs again instead.
  if (gpus_per_worker(j.job) > 0)
    for (const RunningWorker& w : running)
      if (w.shares.empty()) return false;
  std::vector<Placed> pods;
  std::string where;
  for (const RunningWorker& w : running) {
    pods.push_back({w.node, w.devices, w.shares});
    j.live.push_back(w.worker);
    where += fmt::format("{}{} {}", where.empty() ? "" : ", ", w.node,
                         w.devices.empty() ? "(no GPU)" : w.devices);
  }
  placement.adopt(name, std::move(pods));
  j.attempts = std::max(1u, running[0].attempt);
  j.exit_codes.assign(n, -1);
  j.phase = JobPhase::kRunning;
  j.started_at = j.counted_to = now;
  j.message = "";
  events_.record("Job", name, "Normal", "TakenOver",
                 fmt::format("attempt {}: {} worker{} running on {}, taken over", j.attempts, n,
                             n == 1 ? "" : "s", where));
  return true;
}

void Jobs::sync(std::vector<api::Job> declared, Placement& placement, double now) {
  std::map<std::string, api::Job> by_name;
  for (api::Job& job : declared) by_name.emplace(job.metadata.name, std::move(job));
  for (auto& [name, j] : jobs_) {
    if (by_name.count(name) || j.deleted) continue;
    j.deleted = true;
    runtime_.forget(name);
    if (!j.live.empty()) stop_workers(j, Stop::kDeleted, "deleted: its workers are stopping", now);
  }
  for (auto& [name, job] : by_name) {
    auto [it, added] = jobs_.try_emplace(name);
    Job& j = it->second;
    if (j.deleted && !j.live.empty()) continue;  // created again: once the old workers end
    if (added || j.deleted) {
      j = Job{};
      j.created_at = j.counted_to = now;
      j.message = "waiting to be placed";
      // Ended before this controller started: not run again.
      if (auto ended = runtime_.ended(name)) {
        j.phase = ended->first == "Succeeded" ? JobPhase::kSucceeded : JobPhase::kFailed;
        j.message = ended->second;
        j.job = std::move(job);
        continue;
      }
      // Its workers run already (a previous controller's): taken over.
      j.job = job;
      if (added && take_over(j, name, placement, now)) continue;
      events_.record("Job", name, "Normal", "Queued",
                     fmt::format("queued in {} with {} worker{}", job.spec.queue, job.spec.workers,
                                 job.spec.workers == 1 ? "" : "s"));
    }
    // A new spec applies from the next attempt on.
    j.job = std::move(job);
  }
}

void Jobs::stop_workers(Job& j, Stop why, std::string message, double now) {
  (void)now;
  j.stopping = why;
  j.phase = JobPhase::kStopping;
  j.message = std::move(message);
  for (const std::string& w : j.live) runtime_.stop(w, j.job.spec.termination_grace_s);
}

void Jobs::end(Job& j, JobPhase phase, std::string message, Placement& placement) {
  j.phase = phase;
  j.stopping = Stop::kNone;
  j.message = std::move(message);
  placement.remove(j.job.metadata.name, j.counted_to);
  runtime_.record_end(j.job.metadata.name, job_phase_name(phase), j.message);
  events_.record("Job", j.job.metadata.name, phase == JobPhase::kSucceeded ? "Normal" : "Warning",
                 job_phase_name(phase), j.message);
  spdlog::info("job {}: {}: {}", j.job.metadata.name, job_phase_name(phase), j.message);
}

void Jobs::observe(Placement& placement, double now) {
  for (auto it = jobs_.begin(); it != jobs_.end();) {
    Job& j = it->second;
    const std::string& name = it->first;
    // GPU-seconds: every worker's devices while an attempt runs.
    if (j.phase == JobPhase::kRunning || j.phase == JobPhase::kStopping) {
      const double dt = std::max(0.0, now - j.counted_to);
      if (!j.live.empty()) {
        j.run_s += dt;
        j.gpu_seconds += dt * gpus_per_worker(j.job) * static_cast<double>(j.live.size());
      }
    }
    j.counted_to = now;
    // Workers that ended since the last pass.
    std::string failed;
    for (auto w = j.live.begin(); w != j.live.end();) {
      const WorkerStatus st = runtime_.status(*w);
      if (st.exists) {
        ++w;
        continue;
      }
      const uint32_t index = static_cast<uint32_t>(std::stoul(w->substr(w->rfind('-') + 1)));
      if (index < j.exit_codes.size()) j.exit_codes[index] = st.exited ? st.exit_code : -2;
      if (j.phase == JobPhase::kRunning && (!st.exited || st.exit_code != 0) && failed.empty())
        failed = fmt::format("worker {} {}", index, st.exited ? st.message : "is gone");
      w = j.live.erase(w);
    }
    if (j.phase == JobPhase::kRunning) {
      const bool all_done = j.live.empty() && std::all_of(j.exit_codes.begin(), j.exit_codes.end(),
                                                          [](int code) { return code == 0; });
      if (!failed.empty()) {
        // One worker failed: the gang stops as a whole, like LWS's group restart.
        events_.record("Job", name, "Warning", "WorkerFailed", failed);
        stop_workers(j, Stop::kFailed, failed, now);
      } else if (all_done) {
        end(j, JobPhase::kSucceeded, fmt::format("every worker exited 0 (attempt {})", j.attempts),
            placement);
      } else if (j.job.spec.active_deadline_s &&
                 now - j.started_at > *j.job.spec.active_deadline_s) {
        stop_workers(
            j, Stop::kDeadline,
            fmt::format("ran past activeDeadlineSeconds ({:g}s)", *j.job.spec.active_deadline_s),
            now);
      }
    }
    if (j.phase == JobPhase::kStopping && j.live.empty()) {
      switch (j.stopping) {
        case Stop::kRetry:
          j.phase = JobPhase::kQueued;
          j.stopping = Stop::kNone;
          break;
        case Stop::kPreempted:
          placement.vacated(name, now);
          j.phase = JobPhase::kQueued;
          j.stopping = Stop::kNone;
          break;
        case Stop::kFailed:
          ++j.failures;
          if (j.failures > j.job.spec.backoff_limit) {
            end(j, JobPhase::kFailed,
                fmt::format("{} failed attempt{} (backoffLimit {}); the last: {}", j.failures,
                            j.failures == 1 ? "" : "s", j.job.spec.backoff_limit, j.message),
                placement);
          } else {
            // The next attempt is placed again after a backoff; its GPUs
            // are free meanwhile.
            placement.remove(name, now);
            const double backoff =
                std::min(options_.backoff_max_s, options_.backoff_s * std::pow(2, j.failures - 1));
            j.next_start = now + backoff;
            j.phase = JobPhase::kQueued;
            j.stopping = Stop::kNone;
            j.message = fmt::format("retrying in {:.0f}s after: {}", backoff, j.message);
          }
          break;
        case Stop::kDeadline:
          end(j, JobPhase::kFailed, j.message, placement);
          break;
        case Stop::kDeleted:
        case Stop::kNone:
          break;
      }
    }
    if (j.deleted && j.live.empty()) {
      placement.vacated(name, now);
      placement.remove(name, now);
      it = jobs_.erase(it);
      continue;
    }
    ++it;
  }
}

std::vector<PlacementReplica> Jobs::placement_units(double now) const {
  std::vector<PlacementReplica> out;
  for (const auto& [name, j] : jobs_) {
    if (j.phase == JobPhase::kSucceeded || j.phase == JobPhase::kFailed) continue;
    if (j.phase == JobPhase::kQueued && now < j.next_start && !j.deleted) continue;
    const bool launched = !j.live.empty();
    out.push_back({name, "", &j.job, j.deleted, launched, launched});
  }
  return out;
}

void Jobs::displaced(const std::string& name, const std::string& why, double now) {
  auto it = jobs_.find(name);
  if (it == jobs_.end()) return;
  Job& j = it->second;
  if (j.live.empty() || j.phase != JobPhase::kRunning) {
    // Placed but not started (or already stopping for another reason): nothing to checkpoint.
    if (j.stopping == Stop::kNone) j.message = "preempted before it started: " + why;
    return;
  }
  ++j.preemptions;
  events_.record("Job", name, "Warning", "Preempted",
                 fmt::format("{}; its workers have {:g}s to checkpoint, then it is queued again",
                             why, j.job.spec.termination_grace_s));
  stop_workers(j, Stop::kPreempted, "preempted: " + why, now);
}

void Jobs::waiting(const std::string& name, std::string why) {
  auto it = jobs_.find(name);
  if (it != jobs_.end() && it->second.phase == JobPhase::kQueued && it->second.next_start == 0)
    it->second.message = std::move(why);
}

void Jobs::launch(Placement& placement, double now) {
  for (auto& [name, j] : jobs_) {
    if (j.phase != JobPhase::kQueued || j.deleted || !j.live.empty()) continue;
    const std::vector<Placed>& members = placement.members(name);
    if (members.size() != j.job.spec.workers) continue;  // not placed (message says why)
    if (now < j.next_start) continue;
    if (const std::string blocker = placement.blocker(name); !blocker.empty()) {
      j.message =
          fmt::format("placed; waiting for preempted job {} to checkpoint and stop", blocker);
      continue;
    }
    ++j.attempts;
    j.exit_codes.assign(j.job.spec.workers, -1);
    std::string failed;
    bool not_yet = false;
    for (uint32_t i = 0; i < j.job.spec.workers && failed.empty(); ++i) {
      WorkerLaunch launch;
      launch.worker = worker_name(name, i);
      launch.job = &j.job;
      launch.index = i;
      launch.attempt = j.attempts;
      launch.node = members[i].node;
      launch.devices = members[i].devices;
      launch.shares = members[i].shares;
      if (Status s = runtime_.start(launch); !s.ok()) {
        failed = fmt::format("worker {} could not start: {}", i, s.error().message);
        not_yet = s.error().code == ErrorCode::kUnavailable;
      } else {
        j.live.push_back(launch.worker);
      }
    }
    j.started_at = j.counted_to = now;
    j.next_start = 0;
    j.phase = JobPhase::kRunning;
    if (not_yet) {
      // Not yet: the gang's started workers stop and it starts again later.
      --j.attempts;
      stop_workers(j, Stop::kRetry, failed, now);
      continue;
    }
    if (!failed.empty()) {
      // All or none: the gang's started workers stop, and the attempt failed.
      events_.record("Job", name, "Warning", "FailedStart", failed);
      stop_workers(j, Stop::kFailed, failed, now);
      continue;
    }
    j.message = "";
    std::string where;
    for (const Placed& p : members)
      where += fmt::format("{}{} {}", where.empty() ? "" : ", ", p.node,
                           p.devices.empty() ? "(no GPU)" : p.devices);
    events_.record("Job", name, "Normal", "Started",
                   fmt::format("attempt {}: {} worker{} on {}", j.attempts, j.job.spec.workers,
                               j.job.spec.workers == 1 ? "" : "s", where));
  }
}

void Jobs::stop_all() {
  for (auto& [name, j] : jobs_)
    for (const std::string& w : j.live) runtime_.stop(w, j.job.spec.termination_grace_s);
}

bool Jobs::any_running() const {
  for (const auto& [name, j] : jobs_)
    if (!j.live.empty()) return true;
  return false;
}

std::vector<JobStatus> Jobs::statuses(const Placement& placement, double now) const {
  std::vector<JobStatus> out;
  for (const auto& [name, j] : jobs_) {
    if (j.deleted) continue;
    JobStatus st;
    st.name = name;
    st.queue = j.job.spec.queue;
    st.phase = j.phase;
    st.workers = j.job.spec.workers;
    st.running = static_cast<uint32_t>(j.live.size());
    st.attempts = j.attempts;
    st.failures = j.failures;
    st.preemptions = j.preemptions;
    st.age_s = now - j.created_at;
    st.run_s = j.run_s;
    st.gpu_seconds = j.gpu_seconds;
    for (const Placed& p : placement.members(name))
      st.nodes.push_back(p.devices.empty() ? p.node : p.node + " " + p.devices);
    st.message = j.message;
    st.logs = runtime_.logs_of(name);
    out.push_back(std::move(st));
  }
  return out;
}

void Jobs::render(MetricsText& text) const {
  std::map<std::pair<std::string, std::string>, int> by_phase;
  for (const auto& [name, j] : jobs_)
    if (!j.deleted) ++by_phase[{j.job.spec.queue, job_phase_name(j.phase)}];
  auto& jobs = text.gauge("loadstar_jobs", "Jobs per queue and phase");
  for (const auto& [key, n] : by_phase) jobs.add(n, {{"queue", key.first}, {"phase", key.second}});
  auto& attempts = text.counter("loadstar_job_attempts_total", "Attempts started, per job");
  auto& failures = text.counter("loadstar_job_failures_total", "Attempts that failed, per job");
  auto& preemptions =
      text.counter("loadstar_job_preemptions_total", "Times the job was preempted (requeued)");
  auto& gpu_seconds = text.counter("loadstar_job_gpu_seconds_total",
                                   "GPU-seconds of the job's workers, all attempts");
  for (const auto& [name, j] : jobs_) {
    if (j.deleted) continue;
    const MetricsText::Labels labels = {{"job", name}, {"queue", j.job.spec.queue}};
    attempts.add(j.attempts, labels);
    failures.add(j.failures, labels);
    preemptions.add(j.preemptions, labels);
    gpu_seconds.add(j.gpu_seconds, labels);
  }
}

}  // namespace loadstar::controller
