#include "enginesim/kv_transfer.h"

#include <algorithm>
#include <span>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/strings.h"

namespace loadstar::enginesim {

using nlohmann::json;

namespace {

// Links as hardware sheets give them, at the share of peak a bulk transfer
// achieves: NVLink 4 (H100, 450 GB/s a direction), a 400 Gb/s RDMA NIC
// (ConnectX-7, 50 GB/s), 25 Gb/s Ethernet with TCP.
struct Link {
  const char* name;
  double bytes_per_s;
  double latency_s;
};
constexpr Link kLinks[] = {
    {"nvlink", 300e9, 5e-6},
    {"rdma", 45e9, 20e-6},
    {"tcp", 2.5e9, 100e-6},
};

Result<double> positive_number(const json& v, std::string_view field) {
  if (!v.is_number() || !(v.get<double>() > 0))
    return make_error(ErrorCode::kInvalidArgument,
                      "--kv-transfer-config: {} must be a positive number", field);
  return v.get<double>();
}

}  // namespace

Result<KvTransferSettings> parse_kv_transfer_config(std::string_view text,
                                                    uint64_t bytes_per_token) {
  const json doc = json::parse(text, nullptr, false);
  if (!doc.is_object())
    return make_error(ErrorCode::kInvalidArgument, "--kv-transfer-config: not a JSON object");
  KvTransferSettings s;
  s.transfer.bytes_per_token = bytes_per_token;
  bool has_connector = false, has_role = false;
  for (const auto& [key, v] : doc.items()) {
    if (key == "kv_connector") {
      if (!v.is_string() || v.get<std::string>() != "NixlConnector")
        return make_error(ErrorCode::kInvalidArgument,
                          "--kv-transfer-config: kv_connector {}: engine-sim simulates "
                          "NixlConnector only",
                          v.dump());
      has_connector = true;
    } else if (key == "kv_role") {
      const std::string role = v.is_string() ? v.get<std::string>() : "";
      if (role == "kv_producer")
        s.role = KvRole::kProducer;
      else if (role == "kv_consumer")
        s.role = KvRole::kConsumer;
      else if (role == "kv_both")
        s.role = KvRole::kBoth;
      else
        return make_error(ErrorCode::kInvalidArgument,
                          "--kv-transfer-config: kv_role {}: expected kv_producer, kv_consumer or "
                          "kv_both",
                          v.dump());
      has_role = true;
    } else if (key == "engine_id") {
      if (!v.is_string() || v.get<std::string>().empty())
        return make_error(ErrorCode::kInvalidArgument,
                          "--kv-transfer-config: engine_id must be a non-empty string");
      s.engine_id = v.get<std::string>();
    } else if (key == "kv_load_failure_policy") {
      const std::string policy = v.is_string() ? v.get<std::string>() : "";
      if (policy != "recompute" && policy != "fail")
        return make_error(ErrorCode::kInvalidArgument,
                          "--kv-transfer-config: kv_load_failure_policy {}: expected recompute or "
                          "fail",
                          v.dump());
      s.recompute_on_failure = policy == "recompute";
    } else if (key == "kv_connector_extra_config") {
      if (!v.is_object())
        return make_error(ErrorCode::kInvalidArgument,
                          "--kv-transfer-config: kv_connector_extra_config must be an object");
      std::optional<double> bandwidth, latency_us;
      for (const auto& [k, x] : v.items()) {
        const std::string field = "kv_connector_extra_config." + k;
        if (k == "link") {
          const std::string name = x.is_string() ? x.get<std::string>() : "";
          auto it = std::find_if(std::begin(kLinks), std::end(kLinks),
                                 [&](const Link& l) { return name == l.name; });
          if (it == std::end(kLinks))
            return make_error(ErrorCode::kInvalidArgument,
                              "--kv-transfer-config: {} {}: expected nvlink, rdma or tcp", field,
                              x.dump());
          s.link = it->name;
        } else if (k == "bandwidth_gbytes_per_s") {
          LS_ASSIGN_OR_RETURN(double gb, positive_number(x, field));
          bandwidth = gb * 1e9;
        } else if (k == "latency_us") {
          if (!x.is_number() || x.get<double>() < 0)
            return make_error(ErrorCode::kInvalidArgument,
                              "--kv-transfer-config: {} must be a number >= 0", field);
          latency_us = x.get<double>();
        } else if (k == "kv_bytes_per_token") {
          LS_ASSIGN_OR_RETURN(double b, positive_number(x, field));
          if (b < 1 || b > 1e9)
            return make_error(ErrorCode::kInvalidArgument,
                              "--kv-transfer-config: {} must be 1 to 1e9 bytes", field);
          s.transfer.bytes_per_token = static_cast<uint64_t>(b);
        } else if (k != "backends" && k != "num_threads") {  // NIXL's own, accepted
          return make_error(ErrorCode::kInvalidArgument, "--kv-transfer-config: unknown field {}",
                            field);
        }
      }
      const Link& link = *std::find_if(std::begin(kLinks), std::end(kLinks),
                                       [&](const Link& l) { return s.link == l.name; });
      s.transfer.bandwidth_bytes_per_s = bandwidth.value_or(link.bytes_per_s);
      s.transfer.latency_s = latency_us ? *latency_us * 1e-6 : link.latency_s;
      if (bandwidth || latency_us) s.link = "custom";
    } else if (key != "kv_buffer_device" && key != "kv_buffer_size" && key != "kv_rank" &&
               key != "kv_parallel_size" && key != "kv_ip" && key != "kv_port" &&
               key != "kv_connector_module_path" && key != "enable_permute_local_kv") {
      return make_error(ErrorCode::kInvalidArgument, "--kv-transfer-config: unknown field {}", key);
    }
  }
  if (!has_connector)
    return make_error(ErrorCode::kInvalidArgument,
                      "--kv-transfer-config: kv_connector is required (NixlConnector)");
  if (!has_role)
    return make_error(ErrorCode::kInvalidArgument,
                      "--kv-transfer-config: kv_role is required with kv_connector");
  if (!doc.contains("kv_connector_extra_config")) {
    s.transfer.bandwidth_bytes_per_s = kLinks[1].bytes_per_s;
    s.transfer.latency_s = kLinks[1].latency_s;
  }
  if (s.engine_id.empty()) s.engine_id = random_uuid();  // as vLLM's default engine_id
  return s;
}

Result<std::optional<KvTransferParams>> parse_kv_transfer_params(std::string_view body) {
  // Most requests carry none: skip the second parse.
  if (body.find("kv_transfer_params") == std::string_view::npos)
    return std::optional<KvTransferParams>();
  const json doc = json::parse(body, nullptr, false);
  if (!doc.is_object() || !doc.contains("kv_transfer_params") ||
      doc["kv_transfer_params"].is_null())
    return std::optional<KvTransferParams>();
  const json& p = doc["kv_transfer_params"];
  if (!p.is_object())
    return make_error(ErrorCode::kInvalidArgument, "kv_transfer_params must be an object");
  KvTransferParams out;
  auto flag = [&](const char* key, bool& to) -> Status {
    if (!p.contains(key) || p[key].is_null()) return ok_status();
    if (!p[key].is_boolean())
      return make_error(ErrorCode::kInvalidArgument, "kv_transfer_params.{} must be a boolean",
                        key);
    to = p[key].get<bool>();
    return ok_status();
  };
  LS_RETURN_IF_ERROR(flag("do_remote_decode", out.do_remote_decode));
  LS_RETURN_IF_ERROR(flag("do_remote_prefill", out.do_remote_prefill));
  if (!out.do_remote_prefill) return std::optional<KvTransferParams>(std::move(out));
  auto text = [&](const char* key, std::string& to) -> Status {
    if (!p.contains(key) || !p[key].is_string() || p[key].get<std::string>().empty())
      return make_error(ErrorCode::kInvalidArgument,
                        "kv_transfer_params.{} must name the prefill (a non-empty string)", key);
    to = p[key].get<std::string>();
    return ok_status();
  };
  LS_RETURN_IF_ERROR(text("remote_engine_id", out.remote_engine_id));
  LS_RETURN_IF_ERROR(text("remote_request_id", out.remote_request_id));
  LS_RETURN_IF_ERROR(text("remote_host", out.remote_host));
  if (!p.contains("remote_port") || !p["remote_port"].is_number_unsigned() ||
      p["remote_port"].get<uint64_t>() == 0 || p["remote_port"].get<uint64_t>() > 65535)
    return make_error(ErrorCode::kInvalidArgument,
                      "kv_transfer_params.remote_port must be a port number");
  out.remote_port = static_cast<uint16_t>(p["remote_port"].get<uint64_t>());
  if (!p.contains("remote_block_ids") || !p["remote_block_ids"].is_array())
    return make_error(ErrorCode::kInvalidArgument,
                      "kv_transfer_params.remote_block_ids must be a list of block ids");
  for (const json& id : p["remote_block_ids"]) {
    if (!id.is_number_unsigned() || id.get<uint64_t>() > UINT32_MAX)
      return make_error(ErrorCode::kInvalidArgument,
                        "kv_transfer_params.remote_block_ids must be a list of block ids");
    out.remote_block_ids.push_back(static_cast<uint32_t>(id.get<uint64_t>()));
  }
  return std::optional<KvTransferParams>(std::move(out));
}

std::string producer_params_json(const KvTransferSettings& settings, std::string_view request_id,
                                 const std::vector<uint32_t>& block_ids, std::string_view host,
                                 uint16_t port) {
  return json{{"do_remote_prefill", true},
              {"do_remote_decode", false},
              {"remote_block_ids", block_ids},
              {"remote_engine_id", settings.engine_id},
              {"remote_request_id", request_id},
              {"remote_host", host},
              {"remote_port", port},
              {"tp_size", 1}}
      .dump();
}

std::string with_kv_transfer_params(std::string response, std::string_view params) {
  const size_t end = response.rfind('}');
  if (end == std::string::npos) return response;
  response.insert(end, fmt::format(",\"kv_transfer_params\":{}", params));
  return response;
}

std::string kv_read_request_json(const KvReadRequest& request) {
  return json{{"engine_id", request.engine_id}, {"request_id", request.request_id}}.dump();
}

Result<KvReadRequest> parse_kv_read_request(std::string_view body) {
  const json doc = json::parse(body, nullptr, false);
  if (!doc.is_object() || !doc.contains("engine_id") || !doc["engine_id"].is_string() ||
      !doc.contains("request_id") || !doc["request_id"].is_string())
    return make_error(ErrorCode::kInvalidArgument,
                      "expected {{\"engine_id\": string, \"request_id\": string}}");
  return KvReadRequest{doc["engine_id"].get<std::string>(), doc["request_id"].get<std::string>()};
}

std::string kv_read_reply_json(const engine::HeldKv& kv) {
  return json{{"prompt_tokens", kv.prompt_tokens},
              {"blocks", kv.blocks.size()},
              {"block_hashes", kv.block_hashes}}
      .dump();
}

Result<engine::HeldKv> parse_kv_read_reply(std::string_view body) {
  const json doc = json::parse(body, nullptr, false);
  if (!doc.is_object() || !doc.contains("prompt_tokens") ||
      !doc["prompt_tokens"].is_number_unsigned() || !doc.contains("block_hashes") ||
      !doc["block_hashes"].is_array())
    return make_error(ErrorCode::kCorrupt, "the prefill's KV read reply is malformed");
  engine::HeldKv kv;
  kv.prompt_tokens = doc["prompt_tokens"].get<uint32_t>();
  for (const json& h : doc["block_hashes"]) {
    if (!h.is_number_unsigned())
      return make_error(ErrorCode::kCorrupt, "the prefill's KV read reply is malformed");
    kv.block_hashes.push_back(h.get<uint64_t>());
  }
  return kv;
}

Status check_received_blocks(const engine::HeldKv& received,
                             std::span<const engine::TokenId> prompt, uint32_t block_size,
                             engine::BlockHash root) {
  if (received.prompt_tokens != prompt.size())
    return make_error(ErrorCode::kCorrupt,
                      "the prefill computed {} prompt tokens, this request has {}",
                      received.prompt_tokens, prompt.size());
  const size_t full = prompt.size() / block_size;
  if (received.block_hashes.size() != full)
    return make_error(ErrorCode::kCorrupt,
                      "the prefill sent {} full blocks where {} of {} tokens were expected (block "
                      "sizes differ?)",
                      received.block_hashes.size(), full, block_size);
  engine::BlockHash parent = root;
  for (size_t i = 0; i < full; ++i) {
    parent = engine::hash_block(parent, prompt.subspan(i * block_size, block_size));
    if (parent != received.block_hashes[i])
      return make_error(ErrorCode::kCorrupt,
                        "block {} the prefill sent holds other tokens than this prompt's", i);
  }
  return ok_status();
}

}  // namespace loadstar::enginesim
