// `loadstar get`: what runs (services, replicas, queues, jobs) and what is
// declared (models, nodes, tenants, routes), as tables (-o wide: more
// columns), JSON or YAML, once or --watch.
#include <chrono>
#include <cstdio>
#include <memory>
#include <thread>

#include <fmt/core.h>
#include <fmt/ranges.h>
#include <yaml-cpp/yaml.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "api/resources.h"
#include "app/admin_client.h"
#include "app/commands.h"
#include "controller/cold_start.h"

namespace loadstar::app {

using nlohmann::json;

namespace {

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
  const bool wide = output == "wide";
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
    // -o wide: the last minute's traffic as the gateways measured it.
    auto latency = [](const json& v) {
      return v.is_number() ? fmt::format("{:.0f}ms", v.get<double>() * 1000) : std::string("-");
    };
    out.text += fmt::format("{:<24} {:<24} {:>8} {:>6}", "NAME", "MODEL", "READY", "WANT");
    if (wide)
      out.text += fmt::format(" {:>8} {:>8} {:>9} {:>9} {:>9}  {:<28}", "REQ/S", "FAILED/S",
                              "TTFT-P50", "TTFT-P90", "ITL-P90", "ROLLOUT");
    out.text += "  LAST SCALING DECISION\n";
    for (const auto& s : (*doc)["items"]) {
      out.text += fmt::format("{:<24} {:<24} {:>8} {:>6}", s["name"].get<std::string>(),
                              s["model"].get<std::string>(),
                              fmt::format("{}/{}", s["ready"].get<int>(), s["current"].get<int>()),
                              s["replicas"].get<int>());
      if (wide) {
        const json t = s.value("traffic", json::object());
        const std::string rollout = s["rollout"].value("message", std::string());
        out.text += fmt::format(
            " {:>8.2f} {:>8.2f} {:>9} {:>9} {:>9}  {:<28}", t.value("requests_per_second", 0.0),
            t.value("failures_per_second", 0.0), latency(t.value("ttft_p50_seconds", json())),
            latency(t.value("ttft_p90_seconds", json())),
            latency(t.value("itl_p90_seconds", json())),
            rollout.empty() ? std::string("-") : rollout);
      }
      out.text += fmt::format("  {}\n", s.value("scale_reason", std::string()).empty()
                                            ? std::string("-")
                                            : s["scale_reason"].get<std::string>());
    }
  } else if (wide) {
    // Replicas, wide: revision, load now, and the cold start phase by phase.
    out.text += fmt::format("{:<24} {:<16} {:<12} {:<12} {:<14} {:>8} {:>9} {:<10} {:>9}  {}\n",
                            "NAME", "SERVICE", "STATE", "NODE", "DEVICES", "REVISION", "IN-FLIGHT",
                            "QUEUE", "STARTUP", "COLD START (queued->routed)");
    for (const auto& r : (*doc)["items"]) {
      std::vector<std::string> phases;
      double before = 0;
      for (const char* event : controller::kColdStartEvents)
        if (const json at = r["timeline"].value(event, json()); at.is_number()) {
          phases.push_back(fmt::format("{} +{:.1f}s", event, at.get<double>() - before));
          before = at.get<double>();
        }
      out.text +=
          fmt::format("{:<24} {:<16} {:<12} {:<12} {:<14} {:>8} {:>9} {:<10} {:>9}  {}\n",
                      r["name"].get<std::string>(), r["service"].get<std::string>(),
                      r["state"].get<std::string>(), r.value("node", std::string("-")),
                      r.value("devices", std::string()).empty() ? std::string("-")
                                                                : r["devices"].get<std::string>(),
                      r.value("revision", 0), r.value("in_flight", 0),
                      r.value("queue", std::string()).empty() ? std::string("-")
                                                              : r["queue"].get<std::string>(),
                      seconds(r["start_seconds"]), fmt::join(phases, ", "));
    }
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
                 "table; wide (services: the last minute's traffic; replicas: revision, load, "
                 "cold start); json (the admin API's answer, or the declared resources); yaml "
                 "(the declared resources, as applied)")
      ->check(CLI::IsMember({"table", "wide", "json", "yaml"}))
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

}  // namespace loadstar::app
