// engine-sim's side of prefill/decode disaggregation, speaking vLLM's
// NixlConnector protocol so that whatever drives a real vLLM P/D pair (the
// Loadstar gateway, llm-d's routing sidecar) drives engine-sim the same way:
//
//  - `--kv-transfer-config` is vLLM's JSON: {"kv_connector": "NixlConnector",
//    "kv_role": "kv_producer" | "kv_consumer" | "kv_both", "engine_id", ...}.
//    engine-sim's own knobs go in kv_connector_extra_config: the modelled
//    link ("link": nvlink | rdma | tcp, or "bandwidth_gbytes_per_s" and
//    "latency_us") and "kv_bytes_per_token" (default: the profile's).
//  - A request carrying kv_transfer_params {"do_remote_decode": true} is a
//    prefill: the engine computes the prompt, keeps its blocks, and answers
//    with kv_transfer_params {"do_remote_prefill": true, "remote_block_ids",
//    "remote_engine_id", "remote_request_id", "remote_host", "remote_port",
//    "tp_size"}: what the decode's request then carries.
//  - A request carrying those is a decode: the engine reads the blocks from
//    the producer named there and decodes without computing the prompt.
//
// Where NIXL reads GPU memory over RDMA, engine-sim's consumer asks its
// producer over HTTP (POST /kv_transfer/read on the producer's own port,
// the "side channel"): the producer hands over the blocks' hashes and frees
// them; the consumer checks them against its own prompt (a different prompt,
// model or block size does not match) and its core charges the transfer's
// modelled time (engine/engine_core.h, KvTransferConfig). A read that fails
// or does not match is recomputed locally (kv_load_failure_policy
// "recompute") or fails the request ("fail").
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "engine/engine_core.h"

namespace loadstar::enginesim {

enum class KvRole { kProducer, kConsumer, kBoth };

struct KvTransferSettings {
  KvRole role = KvRole::kBoth;
  std::string engine_id;  // default: random
  std::string link = "rdma";
  engine::KvTransferConfig transfer;  // bytes per token, bandwidth, latency
  bool recompute_on_failure = true;   // kv_load_failure_policy
  bool produces() const { return role != KvRole::kConsumer; }
  bool consumes() const { return role != KvRole::kProducer; }
};

// vLLM's --kv-transfer-config. `bytes_per_token` is the default KV size of a
// token (the profile's); errors name the field.
Result<KvTransferSettings> parse_kv_transfer_config(std::string_view json,
                                                    uint64_t bytes_per_token);

// A request's kv_transfer_params.
struct KvTransferParams {
  bool do_remote_decode = false;   // a prefill: hold the blocks for a decoder
  bool do_remote_prefill = false;  // a decode: read the blocks from a prefiller
  std::string remote_engine_id, remote_request_id, remote_host;
  uint16_t remote_port = 0;
  std::vector<uint32_t> remote_block_ids;
};

// nullopt when the body has none (or null). A decode's params must name the
// producer whole (engine id, request id, host, port, block ids).
Result<std::optional<KvTransferParams>> parse_kv_transfer_params(std::string_view body);

// What a prefill's response carries, as NixlConnector's request_finished.
std::string producer_params_json(const KvTransferSettings& settings, std::string_view request_id,
                                 const std::vector<uint32_t>& block_ids, std::string_view host,
                                 uint16_t port);

// `response` (a completion's JSON object) with "kv_transfer_params": `params`.
std::string with_kv_transfer_params(std::string response, std::string_view params);

// The side channel: the consumer's read and the producer's answer.
struct KvReadRequest {
  std::string engine_id, request_id;
};
std::string kv_read_request_json(const KvReadRequest& request);
Result<KvReadRequest> parse_kv_read_request(std::string_view body);
std::string kv_read_reply_json(const engine::HeldKv& kv);
Result<engine::HeldKv> parse_kv_read_reply(std::string_view body);

// Whether the blocks read are this prompt's: the same chained hashes of its
// full blocks (so the same tokens, block size and adapter root).
// `root` is the first block's parent (an adapter's own, 0 for the base model).
Status check_received_blocks(const engine::HeldKv& received,
                             std::span<const engine::TokenId> prompt, uint32_t block_size,
                             engine::BlockHash root);

}  // namespace loadstar::enginesim
