// Leader election on a coordination.k8s.io/v1 Lease, as client-go does it:
// a candidate takes the Lease when nobody holds it or the holder has not
// renewed it within leaseDurationSeconds; the leader renews it every few
// seconds; every write is a PUT against the resourceVersion read, so two
// candidates never both win (the loser gets 409 and reads again). Expiry is
// judged on the candidate's own monotonic clock, from when it last saw the
// record change, never by comparing its clock with the holder's renewTime,
// so skewed clocks cannot hand the lease over early. A leader that cannot
// renew within two thirds of the lease, or sees another holder, stops
// leading (the caller exits, and its Pod restarts as a candidate).
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <string>
#include <thread>

#include "kube/client.h"

namespace loadstar::kube {

struct LeaseRecord {
  std::string holder;
  double lease_duration_s = 0;
  std::optional<std::chrono::system_clock::time_point> renew_time;
  uint32_t transitions = 0;
};

LeaseRecord lease_record(const json& lease);
// Whether two reads of the lease show the same record (no renewal between).
bool same_record(const LeaseRecord& a, const LeaseRecord& b);
// Whether `identity` may take (or keep) the lease at `now`, the record
// having been unchanged since `observed_at` (both on this candidate's clock).
bool may_acquire(const LeaseRecord& record, const std::string& identity,
                 std::chrono::steady_clock::time_point observed_at,
                 std::chrono::steady_clock::time_point now);
// RFC 3339 with microseconds, as Kubernetes' MicroTime.
std::string micro_time(std::chrono::system_clock::time_point t);
std::optional<std::chrono::system_clock::time_point> parse_micro_time(const std::string& text);

struct LeaderOptions {
  std::string namespace_name;
  std::string lease_name = "loadstar-controller";
  std::string identity;  // unique per candidate (the Pod's name)
  double lease_duration_s = 15;
  double renew_interval_s = 5;
  double retry_interval_s = 2;
};

class LeaderElector {
 public:
  LeaderElector(const Client& client, LeaderOptions options)
      : client_(client), options_(std::move(options)) {}
  ~LeaderElector();

  // Blocks until this candidate leads (true) or `stop` is set (false).
  bool acquire(const std::atomic<bool>& stop);
  // Renews in the background; `on_lost` runs once if the lease is lost.
  void keep_renewing(std::function<void()> on_lost);
  // Gives the lease up (renewTime cleared) so the next candidate need not
  // wait out the lease.
  void release();

 private:
  // One attempt to take or renew; true while we lead.
  bool try_acquire_or_renew();

  const Client& client_;
  LeaderOptions options_;
  LeaseRecord observed_;  // the record as last read, and when it last changed
  std::chrono::steady_clock::time_point observed_at_{};
  std::atomic<bool> stopping_{false};
  std::thread renewer_;
};

}  // namespace loadstar::kube
