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

namespace loadstar::gateway {

namespace {

constexpr std::string_view kMagic = "LSP1";
constexpr size_t kMaxQueued = 4096;

void put_string(std::string& out, std::string_view s) {
  out.push_back(static_cast<char>(std::min<size_t>(s.size(), 255)));
  out.append(s.substr(0, 255));
}

template <typename T>
void put(std::string& out, T value) {
  char bytes[sizeof(T)];
  std::memcpy(bytes, &value, sizeof(T));
  out.append(bytes, sizeof(T));
}

struct Reader {
  std::string_view in;
  bool ok = true;
  std::string string() {
    if (in.empty()) return ok = false, std::string();
    const size_t n = static_cast<unsigned char>(in[0]);
    if (in.size() < 1 + n) return ok = false, std::string();
    std::string s(in.substr(1, n));
    in.remove_prefix(1 + n);
    return s;
  }
  template <typename T>
  T get() {
    T value{};
    if (in.size() < sizeof(T)) return ok = false, value;
    std::memcpy(&value, in.data(), sizeof(T));
    in.remove_prefix(sizeof(T));
    return value;
  }
};

}  // namespace

std::string encode_pick(std::string_view instance, const SharedPick& pick) {
  std::string out(kMagic);
  put_string(out, instance);
  put_string(out, pick.replica);
  put_string(out, pick.address);
  put<uint64_t>(out, pick.session);
  put<uint32_t>(out, static_cast<uint32_t>(pick.blocks.size()));
  for (uint64_t b : pick.blocks) put<uint64_t>(out, b);
  return out;
}

std::optional<DecodedPick> decode_pick(std::string_view message) {
  if (!message.starts_with(kMagic)) return std::nullopt;
  Reader r{message.substr(kMagic.size())};
  DecodedPick out;
  out.instance = r.string();
  out.pick.replica = r.string();
  out.pick.address = r.string();
  out.pick.session = r.get<uint64_t>();
  const uint32_t n = r.get<uint32_t>();
  if (!r.ok || r.in.size() != size_t{n} * sizeof(uint64_t)) return std::nullopt;
  out.pick.blocks.resize(n);
  std::memcpy(out.pick.blocks.data(), r.in.data(), r.in.size());
  return out;
}

struct SharedPrefixes::Impl {
  RedisAddress address;
  std::string instance;
  Apply apply;
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
    const timeval timeout{0, 500'000};
    redisContext* c = redisConnectWithTimeout(address.host.c_str(), address.port, timeout);
    if (!c || c->err) {
      warn(c ? fmt::format("is unreachable ({})", c->errstr) : "is unreachable");
      if (c) redisFree(c);
      return nullptr;
    }
    redisSetTimeout(c, timeout);
    if (!address.password.empty()) {
      auto* reply = static_cast<redisReply*>(redisCommand(c, "AUTH %s", address.password.c_str()));
      const bool ok = reply && reply->type != REDIS_REPLY_ERROR;
      if (reply) freeReplyObject(reply);
      if (!ok) {
        warn("refused the password");
        redisFree(c);
        return nullptr;
      }
    }
    return c;
  }

  // Sleeps up to a second unless stopping; false when stopping.
  bool pause() {
    std::unique_lock lock(mu);
    cv.wait_for(lock, std::chrono::seconds(1), [this] { return stopping; });
    return !stopping;
  }

  void run_publisher() {
    redisContext* c = nullptr;
    std::unique_lock lock(mu);
    while (!stopping) {
      cv.wait(lock, [this] { return stopping || !queue.empty(); });
      if (stopping) break;
      std::deque<std::string> batch;
      batch.swap(queue);
      lock.unlock();
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
        owner->published_ += batch.size();
      } else {
        owner->dropped_ += batch.size();
        if (c) {
          warn(fmt::format("failed ({})", c->err ? c->errstr : "an error reply"));
          redisFree(c);
          c = nullptr;
        }
        lock.lock();
        queue.clear();  // picks are only useful fresh
        cv.wait_for(lock, std::chrono::seconds(1), [this] { return stopping; });
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
          auto decoded = decode_pick(std::string_view(r->element[2]->str, r->element[2]->len));
          if (decoded && decoded->instance != instance) {
            ++owner->received_;
            apply(decoded->pick);
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
                                                       Apply apply) {
  auto impl = std::make_unique<Impl>();
  impl->address = std::move(address);
  impl->instance = std::move(instance);
  impl->apply = std::move(apply);
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
