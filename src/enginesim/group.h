// engine-sim as a multi-node engine (one model over several nodes, each a
// pod of a LeaderWorkerSet-shaped replica), with vLLM's native multi-node
// flags: --nnodes N --node-rank R; the others --master-addr/--master-port
// (the leader's HTTP port) and --headless. The leader (rank 0) serves; it
// answers /health 503 until every other node has joined, and once they
// have, it exits with an error when one goes quiet (no heartbeat for
// kLostAfterS), as vLLM does when a Ray or torch worker dies — the group is
// then restarted as a whole. A headless node heartbeats the leader
// (POST /group/heartbeat {"rank": R}, on the leader's port: whoever reaches
// that port can join or keep a node counted) and exits when it loses it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "enginesim/engine_sim.h"

namespace loadstar::enginesim {

inline constexpr double kHeartbeatIntervalS = 0.2;
inline constexpr double kLostAfterS = 2.0;

// The leader's view of its group. Pure: times (seconds) come from the caller.
class GroupMembers {
 public:
  explicit GroupMembers(uint32_t nnodes) : last_seen_(nnodes, -1) {}

  // False for a rank that is not a headless node of this group.
  bool heartbeat(uint32_t rank, double now);
  uint32_t joined() const;
  bool complete() const { return joined() + 1 == last_seen_.size(); }
  // Once complete: the first node silent past kLostAfterS, as an error line.
  std::optional<std::string> lost(double now) const;

 private:
  std::vector<double> last_seen_;  // by rank; -1: never (rank 0 is the leader)
  bool was_complete_ = false;
};

// A headless node: heartbeats its leader until SIGTERM (0) or until the
// leader is lost (1); gives up when the leader never answers within
// `join_timeout_s`.
int run_headless_node(const EngineSimOptions& options, double join_timeout_s = 600);

}  // namespace loadstar::enginesim
