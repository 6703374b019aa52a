#include "enginesim/engine_loop.h"

#include <spdlog/spdlog.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace loadstar::enginesim {

namespace asio = boost::asio;

RequestChannel::RequestChannel(asio::any_io_executor executor)
    : timer_(std::move(executor), asio::steady_timer::time_point::max()) {}

asio::awaitable<bool> RequestChannel::next(std::vector<engine::RequestOutput>& out) {
  out.clear();
  while (pending_.empty() && !closed_) {
    auto [ec] = co_await timer_.async_wait(asio::as_tuple(asio::use_awaitable));
    (void)ec;  // cancelled by push() or close()
  }
  out.swap(pending_);
  co_return !out.empty();
}

void RequestChannel::push(const engine::RequestOutput& output) {
  pending_.push_back(output);
  timer_.cancel();
}

void RequestChannel::fail(Error error) {
  error_ = std::move(error);
  close();
}

void RequestChannel::close() {
  closed_ = true;
  timer_.cancel();
}

EngineLoop::EngineLoop(engine::EngineConfig config, double time_scale, EngineMetrics* metrics)
    : core_(std::move(config)),
      time_scale_(time_scale),
      metrics_(metrics),
      wall_origin_(std::chrono::steady_clock::now()) {}

EngineLoop::~EngineLoop() {
  stop();
}

void EngineLoop::start(kvevents::Publisher* events) {
  events_ = events;
  thread_ = std::thread([this] { run(); });
}

void EngineLoop::stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::chrono::steady_clock::time_point EngineLoop::wall_at(double model_s) const {
  return wall_origin_ + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                            std::chrono::duration<double>(model_s / time_scale_));
}

double EngineLoop::model_now() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - wall_origin_).count() *
         time_scale_;
}

void EngineLoop::submit(engine::NewRequest request, std::shared_ptr<RequestChannel> channel) {
  ++in_flight_;
  {
    std::lock_guard lock(mu_);
    inbox_.push_back({std::move(request), std::move(channel), model_now()});
  }
  wake_.notify_one();
}

void EngineLoop::abort(engine::RequestId id) {
  {
    std::lock_guard lock(mu_);
    aborts_.push_back(id);
  }
  wake_.notify_one();
}

void EngineLoop::control(std::function<Status(engine::EngineCore&)> fn,
                         asio::any_io_executor executor, std::function<void(Status)> done) {
  {
    std::lock_guard lock(mu_);
    controls_.push_back({std::move(fn), std::move(executor), std::move(done)});
  }
  wake_.notify_one();
}

void EngineLoop::run() {
  // Past this much wall-clock lag the loop gives up on catching up.
  const double max_lag_model = 0.005 * time_scale_;
  double prev_end = 0;
  bool busy = false;
  std::vector<Submission> inbox;
  std::vector<engine::RequestId> aborts;
  std::vector<Control> controls;
  const bool lora = core_.config().lora.enabled;
  for (;;) {
    {
      std::unique_lock lock(mu_);
      auto woken = [&] {
        return stopping_ || !inbox_.empty() || !aborts_.empty() || !controls_.empty();
      };
      // Idle but for timed events (KV landing, held KV expiring): until the
      // first, or until a request comes.
      if (!busy) {
        if (const auto kv_at = core_.next_timed_event())
          wake_.wait_until(lock, wall_at(*kv_at), woken);
        else
          wake_.wait(lock, woken);
      }
      if (stopping_) break;
      inbox.swap(inbox_);
      aborts.swap(aborts_);
      controls.swap(controls_);
    }
    for (Control& c : controls) {
      Status s = c.fn(core_);
      asio::post(c.executor, [done = std::move(c.done), s = std::move(s)]() mutable { done(s); });
    }
    if (!controls.empty() && metrics_) {
      metrics_->record_counters(core_.stats());  // e.g. held KV read and freed
      if (lora) metrics_->record_lora(core_.lora_usage(), core_.config().lora.max_loras);
    }
    controls.clear();
    for (engine::RequestId id : aborts) {
      core_.abort_request(id);
      if (channels_.erase(id)) --in_flight_;
    }
    aborts.clear();
    const double now = model_now();
    double start = busy ? prev_end : now;
    double lag = 0;
    if (now - start > max_lag_model) {
      lag = (now - start) / time_scale_;
      start = now;
    }
    for (Submission& s : inbox) {
      const engine::RequestId id = s.request.id;
      // Never let a request arrive after the step that may schedule it starts.
      Status added = core_.add_request(std::move(s.request), std::min(s.arrival, start));
      if (!added.ok()) {
        --in_flight_;
        asio::post(s.channel->executor(),
                   [channel = s.channel, error = std::move(added).error()]() mutable {
                     channel->fail(std::move(error));
                   });
        continue;
      }
      channels_.emplace(id, std::move(s.channel));
    }
    inbox.clear();
    if (!core_.has_work()) {
      // Aborts may have emptied the engine: the gauges must say so now, not
      // at the next step.
      if (metrics_ && busy) metrics_->record_gauges(core_.stats());
      if (metrics_ && busy && lora)
        metrics_->record_lora(core_.lora_usage(), core_.config().lora.max_loras);
      busy = false;
      continue;
    }
    engine::StepResult step = core_.step(start);
    if (step.empty() && step.outputs.empty()) {
      busy = false;  // nothing to compute yet: KV in transfer
      continue;
    }
    prev_end = start + step.duration;
    busy = true;
    const auto deadline = wall_at(prev_end);
    std::this_thread::sleep_until(deadline);
    const double late =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - deadline).count();
    if (metrics_) metrics_->record_step(step, core_.stats(), std::max(lag, late));
    if (metrics_ && lora) metrics_->record_lora(core_.lora_usage(), core_.config().lora.max_loras);
    if (events_) {
      kvevents::EventBatch batch;
      batch.events = core_.take_kv_events();
      if (!batch.events.empty()) {
        batch.ts =
            std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch())
                .count();
        events_->publish(batch);
      }
    }
    for (const engine::RequestOutput& out : step.outputs) {
      auto it = channels_.find(out.id);
      if (it == channels_.end()) continue;
      const bool finished = out.finish != engine::FinishReason::kNone;
      auto channel = finished ? std::move(it->second) : it->second;
      asio::post(channel->executor(), [channel, out, finished] {
        channel->push(out);
        if (finished) channel->close();
      });
      if (finished) {
        channels_.erase(it);
        --in_flight_;
      }
    }
  }
  for (auto& [id, channel] : channels_)
    asio::post(channel->executor(), [channel = channel] {
      channel->fail(Error{ErrorCode::kUnavailable, "the engine is shutting down"});
    });
  channels_.clear();
  std::lock_guard lock(mu_);
  for (Control& c : controls_)
    asio::post(c.executor, [done = std::move(c.done)] {
      done(Error{ErrorCode::kUnavailable, "the engine is shutting down"});
    });
  controls_.clear();
}

}  // namespace loadstar::enginesim
