// The messages gateways exchange through Redis (shared_prefixes.h): a pick
// (where a prompt went) and a load report (requests and prefill per
// replica). A small binary format, versioned by its 4-byte magic; a message
// of another version or truncated does not decode.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace loadstar::gateway {

// One pick as it travels: the replica's name and address (a restarted
// replica at a new address is another engine), the session hash (0: none),
// the prompt bytes it will prefill there (its load until the sender's next
// report counts it) and the prompt's block hashes (empty: not recorded).
struct SharedPick {
  std::string replica;
  std::string address;
  uint64_t session = 0;
  int64_t prefill = 0;
  std::vector<uint64_t> blocks;
};
// The message and its parse (nullopt: not one, e.g. another version's).
std::string encode_pick(std::string_view instance, const SharedPick& pick);
struct DecodedPick {
  std::string instance;
  SharedPick pick;
};
std::optional<DecodedPick> decode_pick(std::string_view message);

// One gateway's load on one replica, as it travels.
struct SharedLoad {
  std::string replica;
  std::string address;
  int64_t in_flight = 0;
  int64_t pending_prefill = 0;
};
std::string encode_load(std::string_view instance, const std::vector<SharedLoad>& load);
struct DecodedLoad {
  std::string instance;
  std::vector<SharedLoad> load;
};
std::optional<DecodedLoad> decode_load(std::string_view message);

}  // namespace loadstar::gateway
