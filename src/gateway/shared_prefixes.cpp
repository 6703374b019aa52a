#include "gateway/shared_prefixes.h"

#include <hiredis/hiredis.h>
#include <sys/socket.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "gateway/redis_connect.h"

namespace loadstar::gateway {

namespace {

constexpr size_t kMaxQueued = 4096;
// The load is looked at every 5 ms and sent when it changed, and every
// 50 ms regardless (so that a receiver can tell a quiet gateway from a gone
// one).
constexpr auto kLoadLook = std::chrono::milliseconds(5);
constexpr auto kLoadInterval = std::chrono::milliseconds(50);

bool same_load(const std::vector<SharedLoad>& a, const std::vector<SharedLoad>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i].replica != b[i].replica || a[i].address != b[i].address ||
        a[i].in_flight != b[i].in_flight || a[i].pending_prefill != b[i].pending_prefill)
      return false;
  return true;
}

}  // namespace

struct SharedPrefixes::Impl {
  RedisAddress address;
  std::string instance;
  Hooks hooks;
  SharedPrefixes* owner = nullptr;

  std::mutex mu;
  std::condition_variable cv;
  bool stopping = false;
  std::deque<std::string> queue;
  redisContext* subscriber = nullptr;  // while connected; shut down to stop
  std::thread publisher_thread, subscriber_thread;
  std::chrono::steady_clock::time_point last_warning{};

  void warn(const std::string& what) {
    owner->up_ = false;
    std::lock_guard lock(mu);
    const auto now = std::chrono::steady_clock::now();
    if (now - last_warning < std::chrono::seconds(10)) return;
    last_warning = now;
    spdlog::warn(
        "shared prefix index: Redis at {}:{} {}; this gateway routes on its own picks until it "
        "is back",
        address.host, address.port, what);
  }

  redisContext* connect() {
    auto c = connect_redis(address, timeval{0, 500'000});
    if (!c.ok()) warn(c.error().message);
    return c.ok() ? *c : nullptr;
  }

  // Sleeps up to a second unless stopping; false when stopping.
  bool pause() {
    std::unique_lock lock(mu);
    cv.wait_for(lock, std::chrono::seconds(1), [this] { return stopping; });
    return !stopping;
  }

  void run_publisher() {
    redisContext* c = nullptr;
    auto next_look = std::chrono::steady_clock::now();
    auto last_sent = next_look - kLoadInterval;
    std::vector<SharedLoad> sent_load;
    std::unique_lock lock(mu);
    while (!stopping) {
      cv.wait_until(lock, next_look, [this] { return stopping || !queue.empty(); });
      if (stopping) break;
      // The load is read with the queue held, before taking its picks: a
      // report then counts exactly the picks sent before it (a receiver
      // counts later ones itself until the next report).
      const auto now = std::chrono::steady_clock::now();
      std::optional<std::vector<SharedLoad>> load;
      if (hooks.snapshot && now >= next_look) {
        next_look = now + kLoadLook;
        load = hooks.snapshot();
      }
      std::deque<std::string> batch;
      batch.swap(queue);
      lock.unlock();
      const size_t picks = batch.size();  // a load report may follow them
      if (load && (now - last_sent >= kLoadInterval || !same_load(*load, sent_load))) {
        batch.push_back(encode_load(instance, *load));
        sent_load = std::move(*load);
        last_sent = now;
      }
      if (batch.empty()) {
        lock.lock();
        continue;
      }
      if (!c) c = connect();
      bool sent = c != nullptr;
      for (const auto& m : batch)
        if (sent)
          sent = redisAppendCommand(c, "PUBLISH %s %b", kPrefixChannel, m.data(), m.size()) ==
                 REDIS_OK;
      for (size_t i = 0; sent && i < batch.size(); ++i) {
        void* reply = nullptr;
        sent = redisGetReply(c, &reply) == REDIS_OK && reply &&
               static_cast<redisReply*>(reply)->type != REDIS_REPLY_ERROR;
        if (reply) freeReplyObject(reply);
      }
      if (sent) {
        owner->published_ += picks;
      } else {
        owner->dropped_ += picks;
        if (c) {
          warn(fmt::format("failed ({})", c->err ? c->errstr : "an error reply"));
          redisFree(c);
          c = nullptr;
        }
        lock.lock();
        queue.clear();  // picks are only useful fresh
        cv.wait_for(lock, std::chrono::seconds(1), [this] { return stopping; });
        next_look = std::chrono::steady_clock::now();
        continue;
      }
      lock.lock();
    }
    lock.unlock();
    if (c) redisFree(c);
  }

  void run_subscriber() {
    while (true) {
      redisContext* c = connect();
      if (!c) {
        if (!pause()) return;
        continue;
      }
      auto* reply = static_cast<redisReply*>(redisCommand(c, "SUBSCRIBE %s", kPrefixChannel));
      const bool ok = reply && reply->type != REDIS_REPLY_ERROR;
      if (reply) freeReplyObject(reply);
      if (!ok) {
        warn("refused SUBSCRIBE");
        redisFree(c);
        if (!pause()) return;
        continue;
      }
      redisSetTimeout(c, timeval{0, 0});  // wait for messages as long as it takes
      {
        std::lock_guard lock(mu);
        if (stopping) {
          redisFree(c);
          return;
        }
        subscriber = c;
      }
      if (!owner->up_.exchange(true))
        spdlog::info("shared prefix index: Redis at {}:{} is up", address.host, address.port);
      for (;;) {
        void* raw = nullptr;
        if (redisGetReply(c, &raw) != REDIS_OK || !raw) break;
        auto* r = static_cast<redisReply*>(raw);
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 3 &&
            r->element[2]->type == REDIS_REPLY_STRING) {
          const std::string_view message(r->element[2]->str, r->element[2]->len);
          if (auto pick = decode_pick(message); pick && pick->instance != instance) {
            ++owner->received_;
            if (hooks.pick) hooks.pick(*pick);
          } else if (auto load = decode_load(message); load && load->instance != instance) {
            if (hooks.load) hooks.load(*load);
          }
        }
        freeReplyObject(r);
      }
      {
        std::lock_guard lock(mu);
        subscriber = nullptr;
        if (stopping) {
          redisFree(c);
          return;
        }
      }
      warn(fmt::format("dropped the subscription ({})", c->errstr));
      redisFree(c);
      if (!pause()) return;
    }
  }
};

std::unique_ptr<SharedPrefixes> SharedPrefixes::create(RedisAddress address, std::string instance,
                                                       Hooks hooks) {
  auto impl = std::make_unique<Impl>();
  impl->address = std::move(address);
  impl->instance = std::move(instance);
  impl->hooks = std::move(hooks);
  Impl* raw = impl.get();
  std::unique_ptr<SharedPrefixes> out(new SharedPrefixes(std::move(impl)));
  raw->owner = out.get();
  raw->publisher_thread = std::thread([raw] { raw->run_publisher(); });
  raw->subscriber_thread = std::thread([raw] { raw->run_subscriber(); });
  return out;
}

SharedPrefixes::SharedPrefixes(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

SharedPrefixes::~SharedPrefixes() {
  {
    std::lock_guard lock(impl_->mu);
    impl_->stopping = true;
    if (impl_->subscriber) ::shutdown(impl_->subscriber->fd, SHUT_RDWR);
  }
  impl_->cv.notify_all();
  impl_->publisher_thread.join();
  impl_->subscriber_thread.join();
}

void SharedPrefixes::publish(SharedPick pick) {
  std::string message = encode_pick(impl_->instance, pick);
  {
    std::lock_guard lock(impl_->mu);
    if (impl_->queue.size() >= kMaxQueued) {
      impl_->queue.pop_front();
      ++dropped_;
    }
    impl_->queue.push_back(std::move(message));
  }
  impl_->cv.notify_one();
}

}  // namespace loadstar::gateway
