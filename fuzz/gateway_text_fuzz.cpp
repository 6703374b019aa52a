// libFuzzer: the gateway's other text inputs never crash: a Tenant's
// tokenCost expression (parsed when a file is read, evaluated per request),
// an engine's /metrics page (scraped ten times a second), and a gateway's
// load report (read by the controller; a report it parses survives a
// round trip through its JSON), and the picks and load other gateways
// publish through Redis (a message that decodes encodes back to itself),
// and an engine's KV event batch (msgpack, vLLM's format: one that decodes
// survives a round trip, and the KV-cache index takes it), and an engine's
// /tokenize answer and the client body a /tokenize ask is made from, and
// an engine's chunked response body, an engine's response head, and a
// client's request head (what the server parses from every connection).
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "api/cost_expression.h"
#include "gateway/engine_load.h"
#include "gateway/engine_tokens.h"
#include "gateway/kv_block_index.h"
#include "gateway/load_report.h"
#include "gateway/shared_messages.h"
#include "http/body_decoder.h"
#include "http/message_head.h"
#include "kvevents/kv_events.h"

#include <nlohmann/json.hpp>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto cost = loadstar::api::CostExpression::parse(text);
  if (cost.ok()) {
    const double v = cost->evaluate(1234, 56);
    if (!std::isfinite(v) || v < 0) std::abort();  // a cost is finite and never negative
  }
  (void)loadstar::gateway::parse_engine_load(text);
  if (auto report = loadstar::gateway::parse_load_report(text); report.ok()) {
    auto again = loadstar::gateway::parse_load_report(load_report_json(report->report));
    if (!again.ok() || again->report.endpoints.size() != report->report.endpoints.size() ||
        again->report.tenants.size() != report->report.tenants.size() ||
        again->report.instance != report->report.instance ||
        again->report.turned_away != report->report.turned_away)
      std::abort();
  }
  using namespace loadstar::gateway;
  if (auto pick = decode_pick(text); pick && encode_pick(pick->instance, pick->pick) != text)
    std::abort();
  if (auto load = decode_load(text); load && encode_load(load->instance, load->load) != text)
    std::abort();
  if (auto batch = loadstar::kvevents::decode_batch(text); batch.ok()) {
    auto again = loadstar::kvevents::decode_batch(loadstar::kvevents::encode_batch(*batch));
    if (!again.ok() || again->events.size() != batch->events.size()) std::abort();
    KvBlockIndex index;
    index.apply(1, *batch);
    const uint32_t tokens[64] = {};
    const uint64_t ids[1] = {1};
    uint32_t matched[1] = {};
    index.match(tokens, "", ids, matched);
    if (matched[0] > 64) std::abort();
    index.forget(1);
    if (index.blocks() != 0) std::abort();
  }
  if (auto ids = parse_tokenize_response(text); ids.ok() && ids->size() > size) std::abort();
  // A /tokenize ask is made of the client's own text of its fields: from
  // a valid body, a valid JSON object naming the served model.
  const bool valid = nlohmann::json::accept(text);
  for (const bool chat : {true, false}) {
    TokenizeAsk ask = tokenize_ask(text, chat, "m");
    if (!ask.body.empty() && ask.ids) std::abort();  // one or the other
    if (valid && !ask.body.empty()) {
      const auto body = nlohmann::json::parse(ask.body, nullptr, false);
      if (!body.is_object() || body.value("model", "") != "m") std::abort();
    }
  }
  // An engine's chunked response body decodes the same whole as split at
  // any byte (the relay gets it in reads of any size), and never yields
  // more bytes than it was given.
  {
    using loadstar::http::BodyDecoder;
    BodyDecoder whole = BodyDecoder::chunked();
    std::string all;
    auto used = whole.feed(text, all);
    BodyDecoder split = BodyDecoder::chunked();
    std::string parts;
    const size_t cut = size == 0 ? 0 : data[0] % size;
    auto first = split.feed(text.substr(0, cut), parts);
    loadstar::Result<size_t> second = size_t{0};
    if (first.ok() && !split.done()) second = split.feed(text.substr(cut), parts);
    const bool split_ok = first.ok() && second.ok();
    if (used.ok() != split_ok || all.size() > size) std::abort();
    if (used.ok() && (all != parts || whole.done() != split.done())) std::abort();
  }
  // A response head parses the same from any prefix that holds it (the
  // relay parses after every read), and never past the bytes given.
  if (auto head = loadstar::http::parse_response_head(text); head.ok() && *head) {
    const loadstar::http::ResponseHead& h = **head;
    if (h.size > size || h.status < 100 || h.status > 999) std::abort();
    auto again = loadstar::http::parse_response_head(text.substr(0, h.size));
    if (!again.ok() || !*again || (*again)->size != h.size || (*again)->status != h.status ||
        (*again)->framing != h.framing || (*again)->keep_alive != h.keep_alive)
      std::abort();
    auto shorter = loadstar::http::parse_response_head(text.substr(0, h.size - 1));
    if (!shorter.ok() || *shorter) std::abort();
  }
  // So does a request head (the server parses after every read); what it
  // hands a handler holds no line break, and its body has one framing.
  if (auto head = loadstar::http::parse_request_head(text, 8192); head.ok() && *head) {
    const loadstar::http::RequestHead& h = **head;
    if (h.size > size || h.method.empty() || h.target.empty() ||
        h.target.find_first_of(" \r\n") != std::string::npos || (h.chunked && h.content_length))
      std::abort();
    for (const auto& field : h.headers)
      if (field.name.find_first_of(" \r\n:") != std::string::npos ||
          field.value.find_first_of("\r\n") != std::string::npos)
        std::abort();
    auto again = loadstar::http::parse_request_head(text.substr(0, h.size), 8192);
    if (!again.ok() || !*again || (*again)->size != h.size || (*again)->target != h.target ||
        (*again)->headers.size() != h.headers.size() || (*again)->chunked != h.chunked ||
        (*again)->content_length != h.content_length || (*again)->keep_alive != h.keep_alive)
      std::abort();
    auto shorter = loadstar::http::parse_request_head(text.substr(0, h.size - 1), 8192);
    if (!shorter.ok() || *shorter) std::abort();
  }
  return 0;
}
