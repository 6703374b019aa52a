// The load a service's arrivals offer its replicas, in requests running at
// once, whatever the replicas did with them: by Little's law, the arrival
// rate times how long a request runs. It follows the request mix (longer
// outputs or prompts run longer: the same rate is more load) and does not
// grow with a queue. In-flight requests, the autoscaler's usual load, count
// neither requests held at the gateway (none ready: at zero, or before the
// first replica is up) nor requests yet to come; the offered load sizes a
// service in that state. Pure: no I/O, no clock (every call takes the time
// in seconds).
//
// - The arrival rate: requests that arrived (sent to a replica, turned away
//   at the gateway, or waiting there now: held, or in its flow-control
//   queue) over the shortest span back of at least `window_s` that holds
//   `min_arrivals` (so a slow service's rate is not a handful of requests),
//   `max_window_s` at the most.
// - The run time: running requests (in flight, less those the engines
//   queue) integrated over time, over the requests that finished in that
//   time, both decayed with a half-life (`memory_s`) so a changed mix is
//   followed. Decay leaves the ratio unchanged while nothing runs, so a
//   service back from zero is sized by what its requests took before.
#pragma once

#include <cstdint>
#include <deque>
#include <optional>

namespace loadstar::autoscaler {

struct OfferedLoadOptions {
  double window_s = 6;       // the arrival rate's, at the least
  double max_window_s = 60;  // at the most
  double min_arrivals = 40;
  double memory_s = 300;     // the run time's half-life
  double min_finished = 20;  // finished requests before the run time is known
};

class OfferedLoad {
 public:
  explicit OfferedLoad(OfferedLoadOptions options) : o_(options) {}

  struct Counts {
    uint64_t sent_total = 0;   // requests ever sent to a replica (a counter)
    double arrived_total = 0;  // ever arrived: sent, turned away, or at the gateway now
    double in_flight = 0;      // at the engines now: sent, not finished
    double engine_queued = 0;  // of those, queued in the engines
  };
  // One observation at `now`.
  void observe(double now, const Counts& counts);

  struct Reading {
    double load = 0;          // arrival_rate * run_time_s
    double arrival_rate = 0;  // per second
    double run_time_s = 0;
  };
  // Nullopt until `min_finished` requests have finished.
  std::optional<Reading> reading() const;

 private:
  struct Point {
    double now = 0;
    double arrived = 0;  // Counts::arrived_total
    double sent = 0, in_flight = 0, running = 0;
  };
  OfferedLoadOptions o_;
  std::deque<Point> points_;  // max_window_s of them, and one before
  double rate_ = 0;
  double running_s_ = 0, finished_ = 0;  // decayed
  double finished_total_ = 0;
};

}  // namespace loadstar::autoscaler
