#include "app/admin_api.h"

#include <cctype>
#include <cstdint>
#include <ctime>
#include <map>
#include <optional>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "agent/agent.h"
#include "agent/agent_api.h"
#include "api/resources.h"
#include "openai/protocol.h"

namespace loadstar::app {

using nlohmann::json;

// Models first, so a service never names a model the store lacks.
Status apply_all(store::ResourceStore& store, const std::vector<api::Resource>& resources) {
  for (int pass = 0; pass < 2; ++pass)
    for (const auto& r : resources)
      if ((pass == 0) == std::holds_alternative<api::Model>(r)) LS_RETURN_IF_ERROR(store.apply(r));
  return ok_status();
}

namespace {

// Seconds from queued to each cold-start event; null for those not reached.
json timeline_json(const controller::ReplicaStatus& r) {
  json t = json::object();
  for (int i = 0; i < controller::kColdStartEventCount; ++i)
    t[controller::kColdStartEvents[i]] = r.timeline[i] ? json(*r.timeline[i]) : json(nullptr);
  return t;
}

json revision_json(const controller::RevisionStatus& r) {
  return {{"revision", r.number}, {"hash", r.hash},      {"created", r.created},
          {"model", r.model},     {"engine", r.engine},  {"replicas", r.replicas},
          {"ready", r.ready},     {"current", r.current}};
}

json events_json(const std::vector<store::Event>& events) {
  json items = json::array();
  for (const store::Event& e : events)
    items.push_back({{"time", e.time},
                     {"kind", e.kind},
                     {"name", e.name},
                     {"type", e.type},
                     {"reason", e.reason},
                     {"message", e.message},
                     {"count", e.count}});
  return items;
}

json optional_json(const std::optional<double>& v) {
  return v ? json(*v) : json(nullptr);
}

json traffic_json(const controller::TrafficSummary& t) {
  return {{"window_seconds", t.window_s},
          {"requests_per_second", t.requests_per_s},
          {"failures_per_second", t.failures_per_s},
          {"ttft_p50_seconds", optional_json(t.ttft_p50_s)},
          {"ttft_p90_seconds", optional_json(t.ttft_p90_s)},
          {"ttft_p99_seconds", optional_json(t.ttft_p99_s)},
          {"itl_p50_seconds", optional_json(t.itl_p50_s)},
          {"itl_p90_seconds", optional_json(t.itl_p90_s)}};
}

json nodes_json(const std::vector<controller::NodeStatus>& nodes) {
  json items = json::array();
  for (const auto& n : nodes) {
    json devices = json::array();
    for (const auto& d : n.devices) {
      json holders = json::array();
      for (const auto& h : d.holders)
        holders.push_back({{"name", h.name}, {"milli", h.milli}, {"mig_slices", h.mig_slices}});
      devices.push_back({{"index", d.index},
                         {"model", d.model},
                         {"memory_mib", d.memory_mib},
                         {"milli_used", d.milli_used},
                         {"mig_slices", d.mig_slices},
                         {"mig_used", d.mig_used},
                         {"holders", holders}});
    }
    items.push_back({{"name", n.name},
                     {"schedulable", n.schedulable},
                     {"devices", devices},
                     {"models", n.models},
                     {"topology", n.topology}});
  }
  return items;
}

http::Response error_response(const Error& error) {
  openai::ApiError e = openai::to_api_error(error);
  return {e.status, "application/json", openai::error_body(e)};
}

// The query string's parameters ("a=1&b=2"), percent-decoded.
std::map<std::string, std::string> query_params(std::string_view target) {
  std::map<std::string, std::string> out;
  const size_t q = target.find('?');
  if (q == std::string_view::npos) return out;
  auto decode = [](std::string_view in) {
    std::string s;
    for (size_t i = 0; i < in.size(); ++i) {
      if (in[i] == '+') {
        s += ' ';
      } else if (in[i] == '%' && i + 2 < in.size() &&
                 std::isxdigit(static_cast<unsigned char>(in[i + 1])) &&
                 std::isxdigit(static_cast<unsigned char>(in[i + 2]))) {
        s += static_cast<char>(std::stoi(std::string(in.substr(i + 1, 2)), nullptr, 16));
        i += 2;
      } else {
        s += in[i];
      }
    }
    return s;
  };
  std::string_view rest = target.substr(q + 1);
  while (!rest.empty()) {
    const size_t amp = rest.find('&');
    const std::string_view pair = rest.substr(0, amp);
    const size_t eq = pair.find('=');
    out[decode(pair.substr(0, eq))] =
        eq == std::string_view::npos ? std::string() : decode(pair.substr(eq + 1));
    rest = amp == std::string_view::npos ? std::string_view() : rest.substr(amp + 1);
  }
  return out;
}

// Unix seconds, a date (2026-12-01, midnight UTC) or a UTC time
// (2026-12-01T10:00:00Z).
Result<int64_t> parse_time(const std::string& field, const std::string& text) {
  if (!text.empty() && text.find_first_not_of("0123456789") == std::string::npos &&
      text.size() < 12)
    return static_cast<int64_t>(std::stoll(text));
  std::tm tm{};
  const char* end = strptime(text.c_str(), "%Y-%m-%dT%H:%M:%SZ", &tm);
  if (!end || *end) {
    tm = {};
    end = strptime(text.c_str(), "%Y-%m-%d", &tm);
  }
  // timegm() would roll 2026-02-31 over into March: such a date is no date.
  const std::tm asked = tm;
  const std::time_t t = end && !*end ? timegm(&tm) : -1;
  if (!end || *end || asked.tm_mday != tm.tm_mday || asked.tm_mon != tm.tm_mon)
    return make_error(ErrorCode::kInvalidArgument,
                      "{}: '{}' is not a time (Unix seconds, 2026-12-01 or 2026-12-01T10:00:00Z)",
                      field, text);
  return static_cast<int64_t>(t);
}

json usage_fields(const controller::Usage& u) {
  return {{"requests", u.requests},
          {"errors", u.errors},
          {"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"cost", u.cost}};
}

json tenants_json(const std::vector<controller::TenantStatus>& tenants) {
  json items = json::array();
  auto limit = [](const std::optional<uint32_t>& v) { return v ? json(*v) : json(nullptr); };
  for (const auto& t : tenants) {
    json item = usage_fields(t.usage);
    item.update({{"name", t.name},
                 {"declared", t.declared},
                 {"requests_per_minute", limit(t.requests_per_minute)},
                 {"tokens_per_minute", limit(t.tokens_per_minute)},
                 {"max_concurrent_requests", limit(t.max_concurrent_requests)},
                 {"priority", t.priority},
                 {"gpu_seconds", t.gpu_seconds}});
    items.push_back(std::move(item));
  }
  return items;
}

// GET /api/v1/usage?from=&to=&format=json|csv: the ledger's hours.
http::Response usage_response(const controller::Controller& ctl, const http::Request& req) {
  auto params = query_params(req.target);
  int64_t range[2] = {0, INT64_MAX};
  const char* names[2] = {"from", "to"};
  for (int i = 0; i < 2; ++i)
    if (auto it = params.find(names[i]); it != params.end()) {
      auto t = parse_time(names[i], it->second);
      if (!t.ok()) return error_response(t.error());
      range[i] = *t;
    }
  const std::string format = params.count("format") ? params["format"] : "json";
  if (format != "json" && format != "csv")
    return error_response(Error{ErrorCode::kInvalidArgument, "format: must be json or csv"});
  const auto rows = ctl.usage(range[0], range[1]);
  if (format == "csv") return {200, "text/csv; charset=utf-8", controller::usage_csv(rows)};
  return {200, "application/json", controller::usage_json(rows)};
}

json rollout_json(const controller::RolloutStatus& r) {
  json revisions = json::array();
  for (const auto& rev : r.revisions) {
    revisions.push_back(revision_json(rev));
    revisions.back()["traffic"] = traffic_json(rev.traffic);
  }
  return {{"revision", r.revision},
          {"rolling", r.rolling},
          {"aborted", r.aborted},
          {"message", r.message},
          {"revisions", revisions}};
}

// /api/v1/services/NAME/revisions (GET), /undo (POST {"toRevision": N}),
// and a canary's /pause, /resume, /promote, /abort (POST).
std::optional<http::Response> rollout_route(controller::Controller& ctl, const http::Request& req,
                                            std::string_view path) {
  constexpr std::string_view kPrefix = "/api/v1/services/";
  if (!path.starts_with(kPrefix)) return std::nullopt;
  const std::string_view rest = path.substr(kPrefix.size());
  const size_t slash = rest.find('/');
  if (slash == std::string_view::npos) return std::nullopt;
  const std::string service(rest.substr(0, slash));
  const std::string_view action = rest.substr(slash + 1);
  if (req.method == "GET" && action == "revisions") {
    auto history = ctl.history(service);
    if (!history.ok()) return error_response(history.error());
    json items = json::array();
    for (const auto& r : *history) items.push_back(revision_json(r));
    return http::Response{200, "application/json", json({{"items", items}}).dump()};
  }
  if (req.method == "POST" &&
      (action == "pause" || action == "resume" || action == "promote" || action == "abort")) {
    auto done = ctl.control_canary(service, std::string(action));
    if (!done.ok()) return error_response(done.error());
    return http::Response{200, "application/json", json({{"message", *done}}).dump()};
  }
  if (req.method == "POST" && action == "undo") {
    const json body = req.body.empty() ? json::object() : json::parse(req.body, nullptr, false);
    const json to = body.is_object() ? body.value("toRevision", json(0)) : json();
    if (!to.is_number_integer() || to.get<int64_t>() < 0 || to.get<int64_t>() > UINT32_MAX)
      return error_response(Error{ErrorCode::kInvalidArgument,
                                  "the body must be {\"toRevision\": N} (0: the previous one)"});
    auto undone = ctl.undo(service, to.get<uint32_t>());
    if (!undone.ok()) return error_response(undone.error());
    return http::Response{200, "application/json", json({{"message", *undone}}).dump()};
  }
  return std::nullopt;
}

// The embedded agent's API under /agent; `loadstar stage NAME` without a
// source stages the Model resource's.
http::Response agent_route(agent::Agent& agent, store::ResourceStore& store,
                           const http::Request& req, std::string_view path) {
  if (req.method == "POST" && path == "/v1/stage") {
    json body = json::parse(req.body, nullptr, false);
    if (body.is_object() && body.contains("model") && body["model"].is_string() &&
        !body.contains("source")) {
      auto model = store.get("Model", body["model"].get<std::string>());
      if (!model) {
        openai::ApiError e{404, fmt::format("no Model '{}'", body["model"].get<std::string>()), {}};
        return {404, "application/json", openai::error_body(e)};
      }
      body["source"] = std::get<api::Model>(*model).spec.source;
      http::Request filled = req;
      filled.body = body.dump();
      return agent::handle_agent_api(agent, filled, path);
    }
  }
  return agent::handle_agent_api(agent, req, path);
}

}  // namespace

http::Response admin_response(const http::Request& req, controller::Controller* ctl,
                              store::ResourceStore* store, agent::Agent* agent) {
  const std::string_view path = req.path();
  http::Response response;
  if (req.method == "GET" && (path == "/healthz" || path == "/health")) {
    response = {200, "text/plain", "ok\n"};
  } else if (req.method == "GET" && path == "/metrics") {
    response = {200, "text/plain; version=0.0.4", ctl->scheduler_metrics()};
  } else if (agent && path.starts_with("/agent/")) {
    response = agent_route(*agent, *store, req, path.substr(6));
  } else if (req.method == "GET" && path == "/api/v1/replicas") {
    json items = json::array();
    for (const auto& r : ctl->replicas()) {
      items.push_back({{"name", r.name},
                       {"service", r.service},
                       {"model", r.model},
                       {"state", controller::replica_state_name(r.state)},
                       {"pid", r.pid},
                       {"port", r.port},
                       {"restarts", r.restarts},
                       {"age_seconds", r.age_s},
                       {"start_seconds", r.start_s ? json(*r.start_s) : json(nullptr)},
                       {"in_flight", r.in_flight},
                       {"queue", r.queue},
                       {"node", r.node},
                       {"devices", r.devices},
                       {"starts", r.starts},
                       {"revision", r.revision},
                       {"timeline", timeline_json(r)},
                       {"message", r.message}});
    }
    response = {200, "application/json", json({{"items", items}}).dump()};
  } else if (req.method == "GET" && path == "/api/v1/jobs") {
    json items = json::array();
    for (const auto& j : ctl->jobs())
      items.push_back({{"name", j.name},
                       {"queue", j.queue},
                       {"phase", controller::job_phase_name(j.phase)},
                       {"workers", j.workers},
                       {"running", j.running},
                       {"attempts", j.attempts},
                       {"failures", j.failures},
                       {"preemptions", j.preemptions},
                       {"age_seconds", j.age_s},
                       {"run_seconds", j.run_s},
                       {"gpu_seconds", j.gpu_seconds},
                       {"nodes", j.nodes},
                       {"message", j.message},
                       {"logs", j.logs}});
    response = {200, "application/json", json({{"items", items}}).dump()};
  } else if (auto rollout = rollout_route(*ctl, req, path)) {
    response = std::move(*rollout);
  } else if (req.method == "GET" && path.starts_with("/api/v1/resources/") && store) {
    // Declared resources of one kind, each as its YAML document (`loadstar
    // get models|nodes|tenants|routes`, `-o yaml|json`).
    const std::string_view plural = path.substr(std::string_view("/api/v1/resources/").size());
    static const std::map<std::string_view, std::string_view> kKinds = {
        {"models", "Model"},   {"inferenceservices", "InferenceService"},
        {"tenants", "Tenant"}, {"routes", "Route"},
        {"nodes", "Node"},     {"queues", "Queue"},
        {"jobs", "Job"}};
    auto kind = kKinds.find(plural);
    if (kind == kKinds.end()) {
      openai::ApiError e{404,
                         fmt::format("no kind '{}' (models, inferenceservices, tenants, "
                                     "routes, nodes, queues, jobs)",
                                     plural),
                         {}};
      response = {404, "application/json", openai::error_body(e)};
    } else {
      json items = json::array();
      for (const api::Resource& r : store->list())
        if (api::kind_of(r) == kind->second)
          items.push_back({{"kind", kind->second},
                           {"name", api::metadata_of(r).name},
                           {"yaml", api::encode_resource(r)}});
      response = {200, "application/json", json({{"items", items}}).dump()};
    }
  } else if (req.method == "GET" && path == "/api/v1/events") {
    response = {200, "application/json", json({{"items", events_json(ctl->events(""))}}).dump()};
  } else if (req.method == "GET" && path == "/api/v1/services") {
    json items = json::array();
    for (const auto& s : ctl->services())
      items.push_back({{"name", s.name},
                       {"model", s.model},
                       {"replicas", s.desired},
                       {"scale_reason", s.scale_reason},
                       {"events", events_json(s.events)},
                       {"ready", s.ready},
                       {"current", s.total},
                       {"rollout", rollout_json(s.rollout)},
                       {"traffic", traffic_json(s.traffic)}});
    response = {200, "application/json", json({{"items", items}}).dump()};
  } else if (req.method == "GET" && path == "/api/v1/usage") {
    response = usage_response(*ctl, req);
  } else if (req.method == "GET" && path == "/api/v1/tenants") {
    response = {200, "application/json", json({{"items", tenants_json(ctl->tenants(0))}}).dump()};
  } else if (req.method == "GET" && path == "/api/v1/nodes") {
    response = {200, "application/json", json({{"items", nodes_json(ctl->nodes())}}).dump()};
  } else if (req.method == "GET" && path == "/api/v1/queues") {
    json items = json::array();
    auto quota = [](const scheduler::Resources& r) {
      return json{{"gpu", r.gpu}, {"cpu", r.cpu}, {"memory_gib", r.memory}};
    };
    for (const auto& q : ctl->queues())
      items.push_back({{"name", q.name},
                       {"parent", q.parent},
                       {"deserved", quota(q.deserved)},
                       {"limit", q.limit ? quota(*q.limit) : json(nullptr)},
                       {"allocated", quota(q.allocated)},
                       {"fair_share", quota(q.fair_share)},
                       {"running", q.running},
                       {"pending", q.waiting},
                       {"gpu_seconds", q.gpu_seconds}});
    response = {200, "application/json", json({{"items", items}}).dump()};
  } else if (req.method == "POST" && path == "/api/v1/apply") {
    auto decoded = api::decode_resources(req.body, "request");
    Status status = decoded.ok() ? ok_status() : Status(decoded.error());
    if (status.ok()) {
      std::vector<api::Resource> all = *decoded;
      for (auto& r : store->list()) all.push_back(std::move(r));
      // The request's own resources win over stored ones of the same name.
      std::set<std::pair<std::string, std::string>> seen;
      std::vector<api::Resource> unique;
      for (auto& r : all)
        if (seen.insert({std::string(api::kind_of(r)), api::metadata_of(r).name}).second)
          unique.push_back(r);
      status = api::check_references(unique);
    }
    if (status.ok()) status = apply_all(*store, *decoded);
    if (!status.ok()) {
      openai::ApiError e = openai::to_api_error(status.error());
      response = {e.status, "application/json", openai::error_body(e)};
    } else {
      json applied = json::array();
      for (const auto& r : *decoded)
        applied.push_back(fmt::format("{}/{}", api::kind_of(r), api::metadata_of(r).name));
      response = {200, "application/json", json({{"applied", applied}}).dump()};
    }
  } else {
    openai::ApiError e{404, fmt::format("no route for {} {}", req.method, path), {}};
    response = {404, "application/json", openai::error_body(e)};
  }
  return response;
}

}  // namespace loadstar::app
