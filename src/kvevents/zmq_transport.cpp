#include "kvevents/zmq_transport.h"

#include <zmq.h>

#include <chrono>

#include <spdlog/spdlog.h>

namespace loadstar::kvevents {

namespace {
constexpr int64_t kMaxMessageBytes = 64ll << 20;  // a lying engine cannot make us buffer more
}

Result<std::unique_ptr<Publisher>> Publisher::bind(const EventsConfig& config) {
  std::unique_ptr<Publisher> p(new Publisher());
  p->topic_ = config.topic;
  p->context_ = zmq_ctx_new();
  if (!p->context_) return make_error(ErrorCode::kInternal, "zmq_ctx_new: {}", zmq_strerror(errno));
  p->socket_ = zmq_socket(p->context_, ZMQ_PUB);
  if (!p->socket_) return make_error(ErrorCode::kInternal, "zmq_socket: {}", zmq_strerror(errno));
  const int hwm = config.hwm, linger = 0;
  zmq_setsockopt(p->socket_, ZMQ_SNDHWM, &hwm, sizeof hwm);
  zmq_setsockopt(p->socket_, ZMQ_LINGER, &linger, sizeof linger);
  if (zmq_bind(p->socket_, config.endpoint.c_str()) != 0)
    return make_error(ErrorCode::kInvalidArgument, "--kv-events-config: cannot bind {}: {}",
                      config.endpoint, zmq_strerror(errno));
  char bound[256] = {};
  size_t size = sizeof bound;
  zmq_getsockopt(p->socket_, ZMQ_LAST_ENDPOINT, bound, &size);
  p->endpoint_ = bound;
  return p;
}

Publisher::~Publisher() {
  if (socket_) zmq_close(socket_);
  if (context_) zmq_ctx_term(context_);
}

void Publisher::publish(const EventBatch& batch) {
  const std::string seq = encode_sequence(seq_++);
  const std::string payload = encode_batch(batch);
  zmq_send(socket_, topic_.data(), topic_.size(), ZMQ_SNDMORE | ZMQ_DONTWAIT);
  zmq_send(socket_, seq.data(), seq.size(), ZMQ_SNDMORE | ZMQ_DONTWAIT);
  zmq_send(socket_, payload.data(), payload.size(), ZMQ_DONTWAIT);
}

struct Subscriber::Connection {
  Source source;
  void* socket = nullptr;
  std::optional<uint64_t> last_seq;
  ~Connection() {
    if (socket) zmq_close(socket);
  }
};

Subscriber::Subscriber(Hooks hooks) : hooks_(std::move(hooks)) {
  context_ = zmq_ctx_new();
  thread_ = std::thread([this] { run(); });
}

Subscriber::~Subscriber() {
  stop_ = true;
  thread_.join();
  zmq_ctx_term(context_);
}

void Subscriber::set_sources(std::vector<Source> sources) {
  std::lock_guard lock(mu_);
  wanted_ = std::move(sources);
  changed_ = true;
}

void Subscriber::reconcile(std::vector<std::unique_ptr<Connection>>& connections) {
  std::vector<Source> wanted;
  {
    std::lock_guard lock(mu_);
    if (!changed_) return;
    changed_ = false;
    wanted = wanted_;
  }
  std::vector<uint64_t> gone;
  std::erase_if(connections, [&](const std::unique_ptr<Connection>& c) {
    for (const Source& s : wanted)
      if (s.id == c->source.id && s.address == c->source.address) return false;
    gone.push_back(c->source.id);
    return true;
  });
  if (hooks_.gone)
    for (uint64_t id : gone) hooks_.gone(id);
  for (Source& s : wanted) {
    bool have = false;
    for (const auto& c : connections)
      have |= c->source.id == s.id && c->source.address == s.address;
    if (have) continue;
    auto c = std::make_unique<Connection>();
    c->source = std::move(s);
    c->socket = zmq_socket(context_, ZMQ_SUB);
    if (!c->socket) continue;
    const int linger = 0, hwm = 100000;
    const int64_t max_bytes = kMaxMessageBytes;
    zmq_setsockopt(c->socket, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(c->socket, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(c->socket, ZMQ_MAXMSGSIZE, &max_bytes, sizeof max_bytes);
    zmq_setsockopt(c->socket, ZMQ_SUBSCRIBE, "", 0);
    if (zmq_connect(c->socket, c->source.address.c_str()) != 0) {
      spdlog::warn("KV events: cannot connect to {}: {}", c->source.address, zmq_strerror(errno));
      continue;
    }
    connections.push_back(std::move(c));
  }
  connected_ = connections.size();
}

void Subscriber::drain(Connection& c) {
  for (int budget = 0; budget < 1024; ++budget) {
    std::string frames[3];
    int count = 0;
    bool more = true;
    while (more) {
      zmq_msg_t msg;
      zmq_msg_init(&msg);
      if (zmq_msg_recv(&msg, c.socket, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&msg);
        if (count == 0) return;  // nothing (more) to read
        break;
      }
      if (count < 3)
        frames[count].assign(static_cast<const char*>(zmq_msg_data(&msg)), zmq_msg_size(&msg));
      ++count;
      more = zmq_msg_more(&msg) != 0;
      zmq_msg_close(&msg);
    }
    const auto seq = count == 3 ? decode_sequence(frames[1]) : std::nullopt;
    auto batch = seq ? decode_batch(frames[2])
                     : Result<EventBatch>(make_error(ErrorCode::kInvalidArgument,
                                                     "a message of {} frames", count));
    if (!batch.ok()) {
      if (malformed_.fetch_add(1) % 1000 == 0)
        spdlog::warn("KV events from {}: {}", c.source.address, batch.error().message);
      ++lost_;
      if (hooks_.lost) hooks_.lost(c.source.id);
      continue;
    }
    if (c.last_seq && *seq != *c.last_seq + 1) {
      ++lost_;
      if (hooks_.lost) hooks_.lost(c.source.id);
    }
    c.last_seq = seq;
    ++batches_;
    if (hooks_.batch) hooks_.batch(c.source.id, *batch);
  }
}

void Subscriber::run() {
  std::vector<std::unique_ptr<Connection>> connections;
  std::vector<zmq_pollitem_t> items;
  while (!stop_) {
    reconcile(connections);
    if (connections.empty()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      continue;
    }
    items.assign(connections.size(), {});
    for (size_t i = 0; i < connections.size(); ++i)
      items[i] = {connections[i]->socket, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(items.data(), static_cast<int>(items.size()), 50) <= 0) continue;
    for (size_t i = 0; i < connections.size(); ++i)
      if (items[i].revents & ZMQ_POLLIN) drain(*connections[i]);
  }
  connections.clear();
  connected_ = 0;
}

}  // namespace loadstar::kvevents
