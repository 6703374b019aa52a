// Runs an EngineCore on its own thread in (scaled) real time, the way vLLM's
// EngineCore process runs beside its API server: requests come in through a
// small locked inbox, each step's outputs go back to each request's
// RequestChannel on that request's executor.
//
// Time: model time = wall time x time_scale. A step of d model seconds ends
// d / time_scale wall seconds after it began; while busy, steps run back to
// back in model time, so sleeping late does not accumulate drift. If the loop
// falls more than a little behind the wall clock (the host cannot keep up at
// this time scale) it resynchronises and the lag shows in the metrics.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>

#include "engine/engine_core.h"
#include "enginesim/metrics.h"
#include "kvevents/zmq_transport.h"

namespace loadstar::enginesim {

// The outputs of one request, consumed by the coroutine serving it. Lives on
// one executor: push() and close() are posted there, next() runs there.
class RequestChannel {
 public:
  explicit RequestChannel(boost::asio::any_io_executor executor);
  boost::asio::any_io_executor executor() { return timer_.get_executor(); }

  // Waits until outputs are available and moves them into `out` (which it
  // clears first). Returns false when the channel is closed and drained.
  boost::asio::awaitable<bool> next(std::vector<engine::RequestOutput>& out);
  void push(const engine::RequestOutput& output);
  // An error instead of outputs (e.g. the waiting queue was full).
  void fail(Error error);
  void close();
  const std::optional<Error>& error() const { return error_; }

 private:
  std::vector<engine::RequestOutput> pending_;
  boost::asio::steady_timer timer_;
  bool closed_ = false;
  std::optional<Error> error_;
};

class EngineLoop {
 public:
  EngineLoop(engine::EngineConfig config, double time_scale, EngineMetrics* metrics);
  ~EngineLoop();
  EngineLoop(const EngineLoop&) = delete;
  EngineLoop& operator=(const EngineLoop&) = delete;

  // `events` (optional, outliving the loop) gets each step's KV events.
  void start(kvevents::Publisher* events = nullptr);
  void stop();

  const engine::EngineCore& core() const { return core_; }
  engine::RequestId next_id() { return next_id_.fetch_add(1); }
  // Queues `request`; its outputs (or an error) arrive on `channel`.
  void submit(engine::NewRequest request, std::shared_ptr<RequestChannel> channel);
  void abort(engine::RequestId id);
  // Runs `fn` on the engine thread between steps (adapters are added and
  // removed this way); `done` gets its Status, posted to `executor`.
  void control(std::function<Status(engine::EngineCore&)> fn, boost::asio::any_io_executor executor,
               std::function<void(Status)> done);
  // Requests submitted and not yet finished or aborted.
  size_t in_flight() const { return in_flight_.load(); }

 private:
  void run();
  double model_now() const;
  std::chrono::steady_clock::time_point wall_at(double model_s) const;

  engine::EngineCore core_;
  kvevents::Publisher* events_ = nullptr;
  const double time_scale_;
  EngineMetrics* metrics_;
  std::chrono::steady_clock::time_point wall_origin_;
  std::atomic<uint64_t> next_id_{1};
  std::atomic<size_t> in_flight_{0};

  struct Submission {
    engine::NewRequest request;
    std::shared_ptr<RequestChannel> channel;
    double arrival;  // model time of submission
  };
  std::mutex mu_;
  std::condition_variable wake_;
  std::vector<Submission> inbox_;
  std::vector<engine::RequestId> aborts_;
  struct Control {
    std::function<Status(engine::EngineCore&)> fn;
    boost::asio::any_io_executor executor;
    std::function<void(Status)> done;
  };
  std::vector<Control> controls_;
  bool stopping_ = false;

  // Engine thread only.
  std::unordered_map<engine::RequestId, std::shared_ptr<RequestChannel>> channels_;
  std::thread thread_;
};

}  // namespace loadstar::enginesim
