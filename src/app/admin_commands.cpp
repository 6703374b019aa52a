// `loadstar get` (what runs: services, replicas, queues, jobs; what is
// declared: models, nodes, tenants, routes; -o table|json|yaml), `describe`,
// `rollout` and `apply -f`:
// clients of a controller's admin API (`loadstar up`'s, or `loadstar
// controller`'s in Kubernetes mode).
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <thread>

#include <fmt/core.h>
#include <fmt/ranges.h>
#include <yaml-cpp/yaml.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "api/resources.h"
#include "app/commands.h"
#include "http/bearer.h"
#include "http/client.h"

namespace loadstar::app {

using nlohmann::json;

namespace {

struct AdminTarget {
  std::string host = "127.0.0.1";
  uint16_t port = 8090;
};

void add_admin_options(CLI::App& app, AdminTarget& target) {
  app.add_option("--admin-host", target.host)->capture_default_str();
  app.add_option("--admin-port", target.port)->capture_default_str();
}

// The answer's body as it is (CSV, say); an error status is an error.
Result<std::string> admin_text(const AdminTarget& t, const std::string& target) {
  std::vector<http::Header> headers;
  auto token = http::BearerToken::from_flag_or_env("");
  if (!token.ok()) return token.error();
  if (*token) headers.push_back((*token)->header());
  auto r = http::fetch(
      {.host = t.host, .port = t.port, .target = target, .headers = headers, .timeout_s = 10});
  if (!r.ok())
    return make_error(ErrorCode::kUnavailable, "cannot reach the admin API at {}:{}: {}", t.host,
                      t.port, r.error().message);
  if (r->status != 200) {
    const json doc = json::parse(r->body, nullptr, false);
    return Error{ErrorCode::kInvalidArgument, doc.is_object() && doc.contains("error")
                                                  ? doc["error"].value("message", r->body)
                                                  : r->body};
  }
  return r->body;
}

Result<json> admin_call(const AdminTarget& t, const std::string& method, const std::string& target,
                        std::string body = {}) {
  std::vector<http::Header> headers = {{"Content-Type", "application/yaml"}};
  auto token = http::BearerToken::from_flag_or_env("");
  if (!token.ok()) return token.error();
  if (*token) headers.push_back((*token)->header());
  auto r = http::fetch({.host = t.host,
                        .port = t.port,
                        .method = method,
                        .target = target,
                        .body = std::move(body),
                        .headers = std::move(headers),
                        .timeout_s = 10});
  if (!r.ok()) {
    return make_error(ErrorCode::kUnavailable, "cannot reach loadstar up's admin API at {}:{}: {}",
                      t.host, t.port, r.error().message);
  }
  json doc = json::parse(r->body, nullptr, false);
  if (r->status != 200) {
    std::string message =
        doc.is_object() && doc.contains("error") ? doc["error"].value("message", r->body) : r->body;
    return Error{ErrorCode::kInvalidArgument, message};
  }
  if (doc.is_discarded())
    return make_error(ErrorCode::kCorrupt, "the admin API answered something that is not JSON");
  return doc;
}

// Events as kubectl shows them: last seen, type, reason, (object,) message.
void print_events(const json& events, bool with_object) {
  for (const auto& e : events) {
    const uint32_t count = e.value("count", 1u);
    fmt::print("  {:<21} {:<8} {:<17} {}{}{}\n", e.value("time", ""), e.value("type", ""),
               e.value("reason", ""),
               with_object ? fmt::format("{}/{}: ", e.value("kind", ""), e.value("name", "")) : "",
               e.value("message", ""), count > 1 ? fmt::format(" (x{})", count) : "");
  }
}

std::string seconds(const json& v) {
  if (!v.is_number()) return "-";
  double s = v.get<double>();
  if (s < 60) return fmt::format("{:.1f}s", s);
  if (s < 3600) return fmt::format("{:.0f}m", s / 60);
  return fmt::format("{:.1f}h", s / 3600);
}

// A YAML document as JSON: plain scalars that read as numbers, booleans or
// null become those; quoted ones stay strings.
json yaml_to_json(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Map: {
      json out = json::object();
      for (const auto& kv : node) out[kv.first.Scalar()] = yaml_to_json(kv.second);
      return out;
    }
    case YAML::NodeType::Sequence: {
      json out = json::array();
      for (const auto& v : node) out.push_back(yaml_to_json(v));
      return out;
    }
    case YAML::NodeType::Scalar: {
      const std::string& text = node.Scalar();
      if (node.Tag() != "!") {
        if (text == "true" || text == "false") return text == "true";
        if (text == "null" || text == "~") return nullptr;
        json number = json::parse(text, nullptr, false);
        if (number.is_number()) return number;
      }
      return text;
    }
    default:
      return nullptr;
  }
}

std::string bytes(uint64_t n) {
  if (n >= (uint64_t{1} << 30)) return fmt::format("{:.1f}Gi", n / double(uint64_t{1} << 30));
  if (n >= (uint64_t{1} << 20)) return fmt::format("{:.0f}Mi", n / double(uint64_t{1} << 20));
  return n ? fmt::format("{}", n) : std::string("-");
}

// One row per declared resource of a kind, kubectl's way.
std::string print_declared(const std::string& kind, const std::vector<api::Resource>& resources) {
  std::string out;
  auto or_dash = [](const std::string& s) { return s.empty() ? std::string("-") : s; };
  if (kind == "models") {
    out += fmt::format("{:<24} {:<12} {:>8} {:<16}  {}\n", "NAME", "FORMAT", "SIZE", "ADAPTER-OF",
                       "SOURCE");
    for (const auto& r : resources)
      if (const auto* m = std::get_if<api::Model>(&r))
        out += fmt::format("{:<24} {:<12} {:>8} {:<16}  {}\n", m->metadata.name, m->spec.format,
                           bytes(m->spec.size_bytes.value_or(0)), or_dash(m->spec.adapter_of),
                           m->spec.source);
  } else if (kind == "nodes") {
    out += fmt::format("{:<20} {:<22} {:>6} {:>9} {:<12} {}\n", "NAME", "GPUS", "CPU", "MEMORY",
                       "SCHEDULABLE", "TOPOLOGY");
    for (const auto& r : resources)
      if (const auto* n = std::get_if<api::Node>(&r)) {
        std::vector<std::string> gpus, topology;
        for (const auto& g : n->spec.gpus) gpus.push_back(fmt::format("{}x {}", g.count, g.model));
        for (const auto& [level, domain] : n->spec.topology)
          topology.push_back(level + "=" + domain);
        out += fmt::format("{:<20} {:<22} {:>6g} {:>9} {:<12} {}\n", n->metadata.name,
                           or_dash(fmt::format("{}", fmt::join(gpus, ","))), n->spec.cpu,
                           bytes(n->spec.memory_bytes), n->spec.schedulable ? "yes" : "no",
                           or_dash(fmt::format("{}", fmt::join(topology, ","))));
      }
  } else if (kind == "tenants") {
    out += fmt::format("{:<20} {:>5} {:>8} {:>10} {:>11} {:>9}  {}\n", "NAME", "KEYS", "REQ/MIN",
                       "TOKENS/MIN", "CONCURRENT", "PRIORITY", "MODELS");
    auto limit = [](const std::optional<uint32_t>& v) {
      return v ? std::to_string(*v) : std::string("-");
    };
    for (const auto& r : resources)
      if (const auto* t = std::get_if<api::Tenant>(&r)) {
        size_t live = 0;
        for (const auto& k : t->spec.api_keys) live += !k.revoked;
        out +=
            fmt::format("{:<20} {:>5} {:>8} {:>10} {:>11} {:>9}  {}\n", t->metadata.name, live,
                        limit(t->spec.requests_per_minute), limit(t->spec.tokens_per_minute),
                        limit(t->spec.max_concurrent_requests), t->spec.priority,
                        t->spec.models.empty() ? std::string("(all)")
                                               : fmt::format("{}", fmt::join(t->spec.models, ",")));
      }
  } else if (kind == "routes") {
    out += fmt::format("{:<20} {:<20}  {}\n", "NAME", "MODEL", "BACKENDS (weight, priority)");
    for (const auto& r : resources)
      if (const auto* route = std::get_if<api::Route>(&r)) {
        std::vector<std::string> backends;
        for (const auto& b : route->spec.backends)
          backends.push_back(fmt::format("{} ({}, {})", b.service.empty() ? b.url : b.service,
                                         b.weight, b.priority));
        out += fmt::format("{:<20} {:<20}  {}\n", route->metadata.name,
                           route->spec.model.empty() ? route->metadata.name : route->spec.model,
                           fmt::join(backends, ", "));
      }
  }
  return out;
}

// What `loadstar get` prints for `what` in `output`, and what of it may
// change between two reads (--watch prints a table again when that does).
struct Rendered {
  std::string text, key;
};

Result<Rendered> render_get(const AdminTarget& target, const std::string& what,
                            const std::string& output) {
  Rendered out;
  std::string plural = what.ends_with("s") ? what : what + "s";
  const bool declared = plural == "models" || plural == "nodes" || plural == "tenants" ||
                        plural == "routes" || output == "yaml";
  if (declared) {
    if (plural == "services") plural = "inferenceservices";
    if (plural == "replicas") {
      return make_error(ErrorCode::kInvalidArgument,
                        "replicas are not declared; -o json shows them");
    }
    auto doc = admin_call(target, "GET", "/api/v1/resources/" + plural);
    if (!doc.ok()) return doc.error();
    std::vector<api::Resource> resources;
    json items = json::array();
    std::string yaml;
    for (const auto& item : (*doc)["items"]) {
      const std::string text = item.value("yaml", "");
      yaml += (yaml.empty() ? "" : "---\n") + text;
      auto decoded = api::decode_resources(text, "the admin API's " + plural);
      if (!decoded.ok()) return decoded.error();
      for (auto& r : *decoded) resources.push_back(std::move(r));
      items.push_back(yaml_to_json(YAML::Load(text)));
    }
    out.key = yaml;
    if (output == "yaml")
      out.text = yaml;
    else if (output == "json")
      out.text = json({{"items", items}}).dump(2) + "\n";
    else
      out.text = print_declared(plural, resources);
    return out;
  }
  const bool services = what.starts_with("service");
  const bool queues = what.starts_with("queue");
  const bool jobs = what.starts_with("job");
  auto doc = admin_call(target, "GET",
                        services ? "/api/v1/services"
                        : queues ? "/api/v1/queues"
                        : jobs   ? "/api/v1/jobs"
                                 : "/api/v1/replicas");
  if (!doc.ok()) return doc.error();
  // What changes: the answer without the clocks that tick every second.
  json stable = *doc;
  for (auto& item : stable["items"])
    for (const char* key : {"age_seconds", "run_seconds", "gpu_seconds", "start_seconds"})
      item.erase(key);
  out.key = stable.dump();
  if (output == "json") {
    out.text = doc->dump(2) + "\n";
    return out;
  }
  if (jobs) {
    out.text +=
        fmt::format("{:<20} {:<12} {:<10} {:>7} {:>8} {:>11} {:>9} {:>6}  {}\n", "NAME", "QUEUE",
                    "PHASE", "WORKERS", "ATTEMPTS", "PREEMPTIONS", "GPU-SEC", "AGE", "MESSAGE");
    for (const auto& j : (*doc)["items"]) {
      out.text += fmt::format(
          "{:<20} {:<12} {:<10} {:>7} {:>8} {:>11} {:>9.0f} {:>6}  {}\n",
          j["name"].get<std::string>(), j["queue"].get<std::string>(),
          j["phase"].get<std::string>(),
          fmt::format("{}/{}", j["running"].get<int>(), j["workers"].get<int>()),
          j["attempts"].get<int>(), j["preemptions"].get<int>(), j["gpu_seconds"].get<double>(),
          seconds(j["age_seconds"]), j["message"].get<std::string>());
      out.text += fmt::format("{:<20} logs: {}\n", "", j["logs"].get<std::string>());
    }
  } else if (queues) {
    // GPUs: in use / deserved (limit), and the fair share right now.
    out.text +=
        fmt::format("{:<16} {:<12} {:>10} {:>9} {:>7} {:>6} {:>8} {:>8} {:>10}\n", "NAME", "PARENT",
                    "GPUS", "DESERVED", "LIMIT", "FAIR", "RUNNING", "PENDING", "GPU-HOURS");
    for (const auto& q : (*doc)["items"])
      out.text += fmt::format(
          "{:<16} {:<12} {:>10} {:>9} {:>7} {:>6} {:>8} {:>8} {:>10.2f}\n",
          q["name"].get<std::string>(),
          q["parent"].get<std::string>().empty() ? "-" : q["parent"].get<std::string>(),
          fmt::format("{:g}", q["allocated"]["gpu"].get<double>()),
          fmt::format("{:g}", q["deserved"]["gpu"].get<double>()),
          q["limit"].is_null() || q["limit"]["gpu"].get<double>() > 1e17
              ? std::string("-")
              : fmt::format("{:g}", q["limit"]["gpu"].get<double>()),
          fmt::format("{:.3g}", q["fair_share"]["gpu"].get<double>()), q["running"].get<int>(),
          q["pending"].get<int>(), q["gpu_seconds"].get<double>() / 3600);
  } else if (services) {
    out.text += fmt::format("{:<24} {:<24} {:>8} {:>6}  {}\n", "NAME", "MODEL", "READY", "WANT",
                            "LAST SCALING DECISION");
    for (const auto& s : (*doc)["items"])
      out.text += fmt::format("{:<24} {:<24} {:>8} {:>6}  {}\n", s["name"].get<std::string>(),
                              s["model"].get<std::string>(),
                              fmt::format("{}/{}", s["ready"].get<int>(), s["current"].get<int>()),
                              s["replicas"].get<int>(),
                              s.value("scale_reason", std::string()).empty()
                                  ? std::string("-")
                                  : s["scale_reason"].get<std::string>());
  } else {
    out.text += fmt::format(
        "{:<24} {:<16} {:<12} {:<12} {:<14} {:>6} {:>7} {:>9} {:>8} {:>6}  {}\n", "NAME", "SERVICE",
        "STATE", "NODE", "DEVICES", "PORT", "PID", "RESTARTS", "STARTUP", "AGE", "MESSAGE");
    auto dash = [](const json& v) {
      const std::string s = v.is_string() ? v.get<std::string>() : "";
      return s.empty() ? std::string("-") : s;
    };
    for (const auto& r : (*doc)["items"])
      out.text += fmt::format(
          "{:<24} {:<16} {:<12} {:<12} {:<14} {:>6} {:>7} {:>9} {:>8} {:>6}  {}\n",
          r["name"].get<std::string>(), r["service"].get<std::string>(),
          r["state"].get<std::string>(), dash(r["node"]), dash(r["devices"]), r["port"].get<int>(),
          r["pid"].get<int>(), r["restarts"].get<int>(), seconds(r["start_seconds"]),
          seconds(r["age_seconds"]), r["message"].get<std::string>());
  }
  return out;
}

}  // namespace

std::function<int()> setup_get(CLI::App& app) {
  auto target = std::make_shared<AdminTarget>();
  auto what = std::make_shared<std::string>();
  auto output = std::make_shared<std::string>("table");
  app.add_option("resource", *what,
                 "services, replicas, queues, jobs (what runs); models, nodes, tenants, routes "
                 "(what is declared)")
      ->required()
      ->check(CLI::IsMember({"services", "replicas", "queues", "jobs", "models", "nodes", "tenants",
                             "routes", "service", "replica", "queue", "job", "model", "node",
                             "tenant", "route"}));
  app.add_option("-o,--output", *output,
                 "table; json (the admin API's answer, or the declared resources); yaml (the "
                 "declared resources, as applied)")
      ->check(CLI::IsMember({"table", "json", "yaml"}))
      ->capture_default_str();
  auto watch = std::make_shared<bool>(false);
  app.add_flag("-w,--watch", *watch,
               "Print it again whenever it changes (every second; ages and GPU-seconds ticking "
               "are no change), until interrupted");
  add_admin_options(app, *target);
  return [target, what, output, watch]() -> int {
    std::string last;
    for (bool first = true;; first = false) {
      auto r = render_get(*target, *what, *output);
      if (!r.ok() && !*watch) {
        fmt::print(stderr, "loadstar get: {}\n", r.error().message);
        return r.error().code == ErrorCode::kInvalidArgument ? 2 : 1;
      }
      if (!*watch) {
        fmt::print("{}", r->text);
        return 0;
      }
      // Watching: an unreachable admin API is said once and waited out.
      const std::string key = r.ok() ? r->key : "error: " + r.error().message;
      if (key != last) {
        if (r.ok())
          fmt::print("{}{}", first ? "" : "\n", r->text);
        else
          fmt::print(stderr, "loadstar get: {}\n", r.error().message);
        std::fflush(stdout);
        last = key;
      }
      std::this_thread::sleep_for(std::chrono::seconds(1));
    }
  };
}

// A service: its replicas against what it wants, and its scaling history.
int describe_service(const AdminTarget& target, const std::string& name) {
  auto doc = admin_call(target, "GET", "/api/v1/services");
  if (!doc.ok()) {
    fmt::print(stderr, "loadstar describe: {}\n", doc.error().message);
    return 1;
  }
  for (const auto& s : (*doc)["items"]) {
    if (s["name"] != name) continue;
    fmt::print("Name:      {}\nModel:     {}\nReplicas:  {} ready of {}, {} wanted\n",
               s["name"].get<std::string>(), s["model"].get<std::string>(), s["ready"].get<int>(),
               s["current"].get<int>(), s["replicas"].get<int>());
    const std::string reason = s.value("scale_reason", std::string());
    fmt::print("Scaling:   {}\n", reason.empty() ? "fixed (no spec.autoscaling)" : reason);
    const json rollout = s.value("rollout", json::object());
    fmt::print("Revision:  {}\nRollout:   {}\n", rollout.value("revision", 0),
               rollout.value("message", std::string("-")));
    const json events = s.value("events", json::array());
    fmt::print("\nEvents ({}):\n", events.empty() ? "none" : "oldest first");
    print_events(events, false);
    return 0;
  }
  fmt::print(stderr, "loadstar describe: no service named '{}'\n", name);
  return 1;
}

// A job: its attempts, where its workers run, where its logs are, and what
// happened to it (its events: placed, preempted, failed attempts).
int describe_job(const AdminTarget& target, const std::string& name) {
  auto doc = admin_call(target, "GET", "/api/v1/jobs");
  if (!doc.ok()) {
    fmt::print(stderr, "loadstar describe: {}\n", doc.error().message);
    return 1;
  }
  for (const auto& j : (*doc)["items"]) {
    if (j["name"] != name) continue;
    fmt::print("Name:         {}\nQueue:        {}\nPhase:        {}\n", name,
               j["queue"].get<std::string>(), j["phase"].get<std::string>());
    fmt::print("Workers:      {} running of {}\n", j["running"].get<int>(),
               j["workers"].get<int>());
    fmt::print("Attempts:     {} ({} failed, {} preempted)\n", j["attempts"].get<int>(),
               j["failures"].get<int>(), j["preemptions"].get<int>());
    fmt::print("Age:          {}\nRunning for:  {}\nGPU-seconds:  {:.0f}\n",
               seconds(j["age_seconds"]), seconds(j["run_seconds"]),
               j["gpu_seconds"].get<double>());
    const json nodes = j.value("nodes", json::array());
    fmt::print("Nodes:        {}\n", nodes.empty() ? std::string("-") : "");
    for (size_t i = 0; i < nodes.size(); ++i)
      fmt::print("  worker {}: {}\n", i, nodes[i].get<std::string>());
    fmt::print("Message:      {}\nLogs:         {}\n", j["message"].get<std::string>(),
               j["logs"].get<std::string>());
    json events = json::array();
    if (auto all = admin_call(target, "GET", "/api/v1/events"); all.ok())
      for (const auto& e : (*all)["items"])
        if (e.value("kind", "") == "Job" && e.value("name", "") == name) events.push_back(e);
    fmt::print("\nEvents ({}):\n", events.empty() ? "none" : "oldest first");
    print_events(events, false);
    return 0;
  }
  fmt::print(stderr, "loadstar describe: no job named '{}' (loadstar get jobs)\n", name);
  return 1;
}

std::function<int()> setup_describe(CLI::App& app) {
  auto target = std::make_shared<AdminTarget>();
  auto kind = std::make_shared<std::string>();
  auto name = std::make_shared<std::string>();
  app.add_option("kind", *kind, "replica, service or job")
      ->required()
      ->check(CLI::IsMember({"replica", "service", "job"}));
  app.add_option("name", *name, "Its name (loadstar get replicas|services|jobs)")->required();
  add_admin_options(app, *target);
  return [target, kind, name]() -> int {
    if (*kind == "service") return describe_service(*target, *name);
    if (*kind == "job") return describe_job(*target, *name);
    auto doc = admin_call(*target, "GET", "/api/v1/replicas");
    if (!doc.ok()) {
      fmt::print(stderr, "loadstar describe: {}\n", doc.error().message);
      return 1;
    }
    const json* found = nullptr;
    for (const auto& r : (*doc)["items"])
      if (r["name"] == *name) found = &r;
    if (!found) {
      fmt::print(stderr, "loadstar describe: no replica named '{}'\n", *name);
      return 1;
    }
    const json& r = *found;
    auto text = [](const json& v) {
      return v.is_string() && !v.get<std::string>().empty() ? v.get<std::string>()
                                                            : std::string("-");
    };
    fmt::print("Name:      {}\nService:   {}\nModel:     {}\nQueue:     {}\nState:     {}\n",
               text(r["name"]), text(r["service"]), text(r["model"]), text(r["queue"]),
               text(r["state"]));
    fmt::print("Node:      {}\nDevices:   {}\nPort:      {}\nPID:       {}\nRestarts:  {}\n",
               text(r["node"]), text(r["devices"]), r["port"].get<int>(), r["pid"].get<int>(),
               r["restarts"].get<int>());
    if (!text(r["message"]).empty() && text(r["message"]) != "-")
      fmt::print("Message:   {}\n", text(r["message"]));
    // The timeline of the current start: each event after queued, the phase
    // that ended there, and the slowest phase.
    const json& t = r["timeline"];
    fmt::print("\nCold start {} (seconds since queued):\n", r.value("starts", 1));
    static constexpr const char* kEvents[] = {"queued",  "placed", "staged",
                                              "started", "ready",  "routed"};
    static constexpr const char* kPhases[] = {"scheduling", "staging", "launching", "loading",
                                              "routing"};
    double previous = 0, slowest_s = -1;
    std::string slowest, waiting_for;
    for (int i = 0; i < 6; ++i) {
      const json& at = t.contains(kEvents[i]) ? t[kEvents[i]] : json(nullptr);
      if (!at.is_number()) {
        if (waiting_for.empty()) waiting_for = kEvents[i];
        fmt::print("  {:<8} -\n", kEvents[i]);
        continue;
      }
      const double s = at.get<double>();
      if (i == 0) {
        fmt::print("  {:<8} {:>9.3f}\n", kEvents[i], s);
      } else {
        fmt::print("  {:<8} {:>9.3f}   {:<10} {:>8.3f}s\n", kEvents[i], s, kPhases[i - 1],
                   s - previous);
        if (s - previous > slowest_s) slowest_s = s - previous, slowest = kPhases[i - 1];
      }
      previous = s;
    }
    if (waiting_for.empty()) {
      fmt::print("  total {:.3f}s; slowest phase: {} ({:.3f}s)\n", previous, slowest, slowest_s);
    } else {
      fmt::print("  {:.3f}s so far; waiting to be {}\n", previous, waiting_for);
    }
    return 0;
  };
}

namespace {

void print_revisions(const json& items) {
  fmt::print("{:<9} {:<11} {:<21} {:>8} {:>6}  {:<32} {}\n", "REVISION", "HASH", "CREATED",
             "REPLICAS", "READY", "MODEL", "ENGINE");
  for (const auto& r : items)
    fmt::print("{:<9} {:<11} {:<21} {:>8} {:>6}  {:<32} {}\n",
               fmt::format("{}{}", r.value("revision", 0), r.value("current", false) ? "*" : ""),
               r.value("hash", ""), r.value("created", ""), r.value("replicas", 0),
               r.value("ready", 0), r.value("model", ""), r.value("engine", ""));
}

// The service's rollout, or nothing when there is no such service.
Result<json> service_rollout(const AdminTarget& target, const std::string& name) {
  LS_ASSIGN_OR_RETURN(json doc, admin_call(target, "GET", "/api/v1/services"));
  for (const auto& s : doc["items"])
    if (s["name"] == name) return s.value("rollout", json::object());
  return make_error(ErrorCode::kNotFound, "no service named '{}'", name);
}

}  // namespace

// `loadstar events [SERVICE]`: what the controller decided and saw, oldest first.
std::function<int()> setup_events(CLI::App& app) {
  auto target = std::make_shared<AdminTarget>();
  auto service = std::make_shared<std::string>();
  app.add_option("service", *service, "Only this InferenceService's");
  add_admin_options(app, *target);
  return [target, service]() -> int {
    auto doc = admin_call(*target, "GET", "/api/v1/events");
    if (!doc.ok()) {
      fmt::print(stderr, "loadstar events: {}\n", doc.error().message);
      return 1;
    }
    json items = json::array();
    for (const auto& e : (*doc)["items"])
      if (service->empty() || e.value("name", "") == *service) items.push_back(e);
    fmt::print("  {:<21} {:<8} {:<17} {}\n", "LAST SEEN", "TYPE", "REASON", "OBJECT: MESSAGE");
    print_events(items, true);
    return 0;
  };
}

// `loadstar usage [--from T] [--to T] [-o table|csv|json]`: the usage
// ledger's hours, per tenant and model.
std::function<int()> setup_usage(CLI::App& app) {
  struct Options {
    AdminTarget target;
    std::string from, to, output = "table";
  };
  auto o = std::make_shared<Options>();
  app.add_option("--from", o->from,
                 "From this hour on: Unix seconds, 2026-12-01 or 2026-12-01T10:00:00Z");
  app.add_option("--to", o->to, "Before this hour (the same forms)");
  app.add_option("-o,--output", o->output, "table, csv or json")
      ->check(CLI::IsMember({"table", "csv", "json"}))
      ->capture_default_str();
  add_admin_options(app, o->target);
  return [o]() -> int {
    std::string query = o->output == "csv" ? "format=csv" : "format=json";
    for (auto [name, value] : {std::pair{"from", &o->from}, {"to", &o->to}})
      if (!value->empty()) query += fmt::format("&{}={}", name, *value);
    auto text = admin_text(o->target, "/api/v1/usage?" + query);
    if (!text.ok()) {
      fmt::print(stderr, "loadstar usage: {}\n", text.error().message);
      return 1;
    }
    if (o->output != "table") {
      fmt::print("{}", *text);
      if (o->output == "json") fmt::print("\n");
      return 0;
    }
    const json doc = json::parse(*text, nullptr, false);
    if (!doc.is_object() || !doc.value("items", json()).is_array()) {
      fmt::print(stderr, "loadstar usage: the admin API answered something that is not a list\n");
      return 1;
    }
    fmt::print("{:<21} {:<16} {:<20} {:>9} {:>7} {:>13} {:>13} {:>12}\n", "HOUR", "TENANT", "MODEL",
               "REQUESTS", "ERRORS", "PROMPT TOK", "COMPL TOK", "COST");
    for (const json& r : doc["items"])
      fmt::print("{:<21} {:<16} {:<20} {:>9} {:>7} {:>13} {:>13} {:>12.0f}\n", r.value("hour", ""),
                 r.value("tenant", ""), r.value("model", ""), r.value("requests", 0),
                 r.value("errors", 0), r.value("prompt_tokens", 0), r.value("completion_tokens", 0),
                 r.value("cost", 0.0));
    return 0;
  };
}

// `loadstar rollout status|history|undo SERVICE`, as kubectl's for Deployments.
std::function<int()> setup_rollout(CLI::App& app) {
  struct Options {
    AdminTarget target;
    std::string action, service;
    uint32_t to_revision = 0;
    bool watch = false;
    double timeout_s = 600;
  };
  auto o = std::make_shared<Options>();
  app.add_option("action", o->action,
                 "status, history, undo; a canary's pause, resume, promote, abort")
      ->required()
      ->check(CLI::IsMember({"status", "history", "undo", "pause", "resume", "promote", "abort"}));
  app.add_option("service", o->service, "The InferenceService")->required();
  app.add_option("--to-revision", o->to_revision,
                 "undo: this revision (default: the previous one)");
  app.add_flag("-w,--watch", o->watch,
               "status: wait until the rollout is done (exit 1 at --timeout or a rollback)");
  app.add_option("--timeout", o->timeout_s, "status --watch: give up after this many seconds")
      ->capture_default_str();
  add_admin_options(app, o->target);
  return [o]() -> int {
    if (o->action == "history") {
      auto doc =
          admin_call(o->target, "GET", fmt::format("/api/v1/services/{}/revisions", o->service));
      if (!doc.ok()) {
        fmt::print(stderr, "loadstar rollout history: {}\n", doc.error().message);
        return 1;
      }
      print_revisions((*doc)["items"]);
      return 0;
    }
    if (o->action != "status") {
      auto doc = admin_call(
          o->target, "POST", fmt::format("/api/v1/services/{}/{}", o->service, o->action),
          o->action == "undo" ? json({{"toRevision", o->to_revision}}).dump() : "{}");
      if (!doc.ok()) {
        fmt::print(stderr, "loadstar rollout {}: {}\n", o->action, doc.error().message);
        return 1;
      }
      fmt::print("{}\n", (*doc)["message"].get<std::string>());
      return 0;
    }
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::duration<double>(o->timeout_s);
    std::string said;
    for (;;) {
      auto rollout = service_rollout(o->target, o->service);
      if (!rollout.ok()) {
        fmt::print(stderr, "loadstar rollout status: {}\n", rollout.error().message);
        return 1;
      }
      const std::string message = rollout->value("message", std::string());
      const bool rolling = rollout->value("rolling", false);
      const bool aborted = rollout->value("aborted", false);
      if (!o->watch) {
        fmt::print("{}\n\n", message);
        print_revisions(rollout->value("revisions", json::array()));
        return 0;
      }
      if (message != said) fmt::print("{}\n", message);
      said = message;
      if (!rolling) return aborted ? 1 : 0;  // a canary rolled back is no success
      if (std::chrono::steady_clock::now() > deadline) {
        fmt::print(stderr, "loadstar rollout status: not done after {:g}s\n", o->timeout_s);
        return 1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
    }
  };
}

std::function<int()> setup_apply(CLI::App& app) {
  auto target = std::make_shared<AdminTarget>();
  auto files = std::make_shared<std::vector<std::string>>();
  app.add_option("-f,--filename", *files, "Resource files")->required();
  add_admin_options(app, *target);
  return [target, files]() -> int {
    std::string body;
    for (const auto& f : *files) {
      std::ifstream in(f);
      if (!in) {
        fmt::print(stderr, "loadstar apply: cannot read {}\n", f);
        return 1;
      }
      std::stringstream s;
      s << in.rdbuf();
      body += s.str() + "\n---\n";
    }
    auto doc = admin_call(*target, "POST", "/api/v1/apply", body);
    if (!doc.ok()) {
      fmt::print(stderr, "loadstar apply: {}\n", doc.error().message);
      return 1;
    }
    for (const auto& a : (*doc)["applied"]) fmt::print("{} configured\n", a.get<std::string>());
    return 0;
  };
}

}  // namespace loadstar::app
