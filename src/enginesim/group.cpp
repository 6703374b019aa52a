#include "enginesim/group.h"

#include <atomic>
#include <chrono>
#include <csignal>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "http/client.h"

namespace loadstar::enginesim {

bool GroupMembers::heartbeat(uint32_t rank, double now) {
  if (rank == 0 || rank >= last_seen_.size()) return false;
  last_seen_[rank] = now;
  if (complete()) was_complete_ = true;
  return true;
}

uint32_t GroupMembers::joined() const {
  uint32_t n = 0;
  for (size_t rank = 1; rank < last_seen_.size(); ++rank) n += last_seen_[rank] >= 0;
  return n;
}

std::optional<std::string> GroupMembers::lost(double now) const {
  if (!was_complete_) return std::nullopt;
  for (size_t rank = 1; rank < last_seen_.size(); ++rank)
    if (now - last_seen_[rank] > kLostAfterS)
      return fmt::format(
          "error: node rank {} of {} lost (no heartbeat for {:.1f}s); the engine stops with its "
          "group",
          rank, last_seen_.size(), now - last_seen_[rank]);
  return std::nullopt;
}

namespace {

std::atomic<bool> g_stop{false};
extern "C" void on_stop_signal(int) {
  g_stop = true;
}

}  // namespace

int run_headless_node(const EngineSimOptions& options, double join_timeout_s) {
  if (options.master_addr.empty() || options.master_port == 0) {
    spdlog::error("--headless needs --master-addr and --master-port (the leader's)");
    return 2;
  }
  std::signal(SIGTERM, on_stop_signal);
  std::signal(SIGINT, on_stop_signal);
  using Clock = std::chrono::steady_clock;
  const auto started = Clock::now();
  std::optional<Clock::time_point> last_ok;
  const std::string body = fmt::format(R"({{"rank":{}}})", options.node_rank);
  spdlog::info("engine-sim node rank {} of {}: joining the leader at {}:{}", options.node_rank,
               options.nnodes, options.master_addr, options.master_port);
  while (!g_stop) {
    auto r = http::fetch({.host = options.master_addr,
                          .port = options.master_port,
                          .method = "POST",
                          .target = "/group/heartbeat",
                          .body = body,
                          .headers = {{"Content-Type", "application/json"}},
                          .timeout_s = 0.5});
    const auto now = Clock::now();
    if (r.ok() && r->status == 200) {
      if (!last_ok)
        spdlog::info("joined the leader at {}:{}", options.master_addr, options.master_port);
      last_ok = now;
    } else if (r.ok() && r->status != 200) {
      spdlog::error("error: the leader at {}:{} refused node rank {}: {} {}", options.master_addr,
                    options.master_port, options.node_rank, r->status, r->body);
      return 1;
    } else if (last_ok && now - *last_ok > std::chrono::duration<double>(kLostAfterS)) {
      spdlog::error(
          "error: lost the leader at {}:{} (no answer for {:.1f}s); this node stops "
          "with its group",
          options.master_addr, options.master_port,
          std::chrono::duration<double>(now - *last_ok).count());
      return 1;
    } else if (!last_ok && now - started > std::chrono::duration<double>(join_timeout_s)) {
      spdlog::error("error: the leader at {}:{} never answered in {:.0f}s", options.master_addr,
                    options.master_port, join_timeout_s);
      return 1;
    }
    std::this_thread::sleep_for(std::chrono::duration<double>(kHeartbeatIntervalS));
  }
  spdlog::info("signal: node rank {} stopping", options.node_rank);
  return 0;
}

}  // namespace loadstar::enginesim
