// KV-cache events as vLLM publishes them (vllm.distributed.kv_events), so
// that a router can know which prompt blocks each engine holds from the
// engine itself rather than guess it from its own picks.
//
// Wire format: a ZeroMQ PUB socket sends three-frame messages
// [topic, sequence number (8 bytes, big-endian), payload], the payload a
// msgpack array made by msgspec with array_like=True and tag=True:
//   batch:            [ts, [event...], data_parallel_rank?]
//   BlockStored:      ["BlockStored", [hash...], parent_hash|nil, [token...],
//                      block_size, lora_id|nil, medium?, lora_name?, ...]
//   BlockRemoved:     ["BlockRemoved", [hash...], medium?, ...]
//   AllBlocksCleared: ["AllBlocksCleared"]
// Trailing fields newer vLLM versions add are skipped. Newer engines encode
// each event (and possibly the batch) as a map instead: msgspec without
// array_like, the tag first under "type", fields by name (SGLang adds
// cache_salt and the like, and names the rank attn_dp_rank); both
// encodings are read, fields not known here skipped. SGLang publishes the
// same events with the same flag. A block hash is an
// integer (vLLM's builtin/sha256 64-bit hashes) or bytes (sha256); bytes are
// folded to 64 bits here: the router keeps only an engine hash's identity,
// and names blocks by its own hash of their tokens.
//
// engine-sim publishes the same (its flag is vLLM's --kv-events-config).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "common/result.h"

namespace loadstar::kvevents {

struct BlockStored {
  std::vector<uint64_t> block_hashes;
  std::optional<uint64_t> parent_block_hash;  // none: the first block of a prompt
  std::vector<uint32_t> token_ids;            // block_hashes.size() * block_size of them
  uint32_t block_size = 0;
  std::optional<int64_t> lora_id;
  std::string medium;     // "GPU", "CPU", ... (empty when not given)
  std::string lora_name;  // empty: the base model
};

struct BlockRemoved {
  std::vector<uint64_t> block_hashes;
  std::string medium;
};

struct AllBlocksCleared {};

using Event = std::variant<BlockStored, BlockRemoved, AllBlocksCleared>;

struct EventBatch {
  double ts = 0;  // seconds since the epoch
  std::vector<Event> events;
  std::optional<int64_t> data_parallel_rank;
};

// The msgpack payload of one message.
std::string encode_batch(const EventBatch& batch);
// kInvalidArgument naming what is wrong (truncated msgpack, an unknown event
// tag, a BlockStored whose token count is not blocks x block_size, ...).
Result<EventBatch> decode_batch(std::string_view payload);

// The 8-byte big-endian sequence frame.
std::string encode_sequence(uint64_t seq);
std::optional<uint64_t> decode_sequence(std::string_view frame);

// vLLM's --kv-events-config (KVEventsConfig as JSON).
struct EventsConfig {
  bool enabled = false;            // enable_kv_cache_events
  std::string publisher = "null";  // "zmq" or "null"; "zmq" by default when enabled
  std::string endpoint = "tcp://*:5557";
  std::string topic;
  int hwm = 100000;
};
// kInvalidArgument naming the field; a replay_endpoint is refused (not
// supported by engine-sim).
Result<EventsConfig> parse_events_config(std::string_view json);
// The flag's value for an engine publishing on `endpoint` with `topic`.
// `enable_field`: with vLLM's enable_kv_cache_events (SGLang's config has
// no such field: the flag's presence turns publishing on).
std::string events_config_json(std::string_view endpoint, std::string_view topic,
                               bool enable_field = true);

}  // namespace loadstar::kvevents
