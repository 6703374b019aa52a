// libFuzzer: the gateway's other text inputs never crash: a Tenant's
// tokenCost expression (parsed when a file is read, evaluated per request),
// an engine's /metrics page (scraped ten times a second), and a gateway's
// load report (read by the controller; a report it parses survives a
// round trip through its JSON), and the picks and load other gateways
// publish through Redis (a message that decodes encodes back to itself).
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "api/cost_expression.h"
#include "gateway/engine_load.h"
#include "gateway/load_report.h"
#include "gateway/shared_messages.h"

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
    if (!again.ok() || again->report.endpoints.size() != report->report.endpoints.size())
      std::abort();
  }
  using namespace loadstar::gateway;
  if (auto pick = decode_pick(text); pick && encode_pick(pick->instance, pick->pick) != text)
    std::abort();
  if (auto load = decode_load(text); load && encode_load(load->instance, load->load) != text)
    std::abort();
  return 0;
}
