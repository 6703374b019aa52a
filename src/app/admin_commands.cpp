// `loadstar describe`, `events`, `usage`, `rollout` and `apply -f`:
// clients of a controller's admin API (`loadstar up`'s, or `loadstar
// controller`'s in Kubernetes mode; `get` is get_command.cpp).
#include <cctype>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <thread>

#include <fmt/core.h>
#include <fmt/ranges.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "api/resources.h"
#include "app/admin_client.h"
#include "app/commands.h"

namespace loadstar::app {

using nlohmann::json;

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

namespace {

// The declared document of `plural`/`name` (as applied), or empty.
std::string declared_yaml(const AdminTarget& target, const std::string& plural,
                          const std::string& name) {
  auto doc = admin_call(target, "GET", "/api/v1/resources/" + plural);
  if (!doc.ok()) return "";
  for (const auto& item : (*doc)["items"])
    if (item.value("name", "") == name) return item.value("yaml", "");
  return "";
}

void print_indented(const std::string& text) {
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (line != "---") fmt::print("  {}\n", line);
}

std::string gpus(double milli) {
  return fmt::format("{:g}", milli / 1000);
}

// What is live of a declared resource, as the admin API shows it now.
void describe_live(const AdminTarget& target, const std::string& kind, const std::string& name) {
  if (kind == "node") {
    auto nodes = admin_call(target, "GET", "/api/v1/nodes");
    for (const auto& n : nodes.ok() ? (*nodes)["items"] : json::array()) {
      if (n["name"] != name) continue;
      fmt::print("Weights held: {}\nCards:\n",
                 n["models"].empty() ? std::string("none")
                                     : fmt::format("{}", fmt::join(n["models"], ", ")));
      for (const auto& d : n["devices"]) {
        std::vector<std::string> holders;
        for (const auto& h : d["holders"])
          holders.push_back(fmt::format("{} ({})", h["name"].get<std::string>(),
                                        h["mig_slices"].get<int>() > 0
                                            ? fmt::format("{}g", h["mig_slices"].get<int>())
                                            : gpus(h["milli"].get<double>())));
        fmt::print(
            "  gpu{:<3} {:<12} {:>4} booked  {}\n", d["index"].get<int>(),
            d["model"].get<std::string>(), gpus(d["milli_used"].get<double>()),
            holders.empty() ? std::string("free") : fmt::format("{}", fmt::join(holders, ", ")));
      }
    }
  } else if (kind == "model") {
    std::vector<std::string> held, used;
    if (auto nodes = admin_call(target, "GET", "/api/v1/nodes"); nodes.ok())
      for (const auto& n : (*nodes)["items"])
        for (const auto& m : n["models"])
          if (m == name) held.push_back(n["name"]);
    if (auto services = admin_call(target, "GET", "/api/v1/services"); services.ok())
      for (const auto& s : (*services)["items"])
        if (s["model"] == name)
          used.push_back(
              fmt::format("{} ({} ready)", s["name"].get<std::string>(), s["ready"].get<int>()));
    fmt::print("Held by nodes: {}\nServed by:     {}\n",
               held.empty() ? std::string("none") : fmt::format("{}", fmt::join(held, ", ")),
               used.empty() ? std::string("none") : fmt::format("{}", fmt::join(used, ", ")));
  } else if (kind == "tenant") {
    auto tenants = admin_call(target, "GET", "/api/v1/tenants");
    for (const auto& t : tenants.ok() ? (*tenants)["items"] : json::array())
      if (t["name"] == name)
        fmt::print(
            "Usage (the ledger's hours): {} requests ({} errors), {} prompt and {} completion "
            "tokens, cost {:g}\nGPU-hours:   {:.3f}\n",
            t["requests"].get<uint64_t>(), t["errors"].get<uint64_t>(),
            t["prompt_tokens"].get<uint64_t>(), t["completion_tokens"].get<uint64_t>(),
            t["cost"].get<double>(), t["gpu_seconds"].get<double>() / 3600);
  } else if (kind == "queue") {
    auto queues = admin_call(target, "GET", "/api/v1/queues");
    for (const auto& q : queues.ok() ? (*queues)["items"] : json::array())
      if (q["name"] == name)
        fmt::print(
            "GPUs:        {:g} allocated, {:g} deserved, fair share now {:.3g}\nWorkloads:   {} "
            "running, {} pending\nGPU-hours:   {:.3f}\n",
            q["allocated"]["gpu"].get<double>(), q["deserved"]["gpu"].get<double>(),
            q["fair_share"]["gpu"].get<double>(), q["running"].get<int>(), q["pending"].get<int>(),
            q["gpu_seconds"].get<double>() / 3600);
  }
}

}  // namespace

// A declared Model, Node, Tenant, Route or Queue: its spec as applied, and
// what is live of it.
int describe_declared(const AdminTarget& target, const std::string& kind, const std::string& name) {
  const std::string yaml = declared_yaml(target, kind + "s", name);
  bool implicit = false;  // the queue every workload without one goes to
  if (yaml.empty() && kind == "queue")
    if (auto queues = admin_call(target, "GET", "/api/v1/queues"); queues.ok())
      for (const auto& q : (*queues)["items"]) implicit = implicit || q["name"] == name;
  if (yaml.empty() && !implicit) {
    fmt::print(stderr, "loadstar describe: no {} named '{}' (loadstar get {}s)\n", kind, name,
               kind);
    return 1;
  }
  fmt::print("Name:  {}\nKind:  {}\nDeclared:{}\n", name, kind,
             implicit ? " no (the queue of workloads that name none)" : "");
  print_indented(yaml);
  fmt::print("\n");
  describe_live(target, kind, name);
  return 0;
}

std::function<int()> setup_describe(CLI::App& app) {
  auto target = std::make_shared<AdminTarget>();
  auto kind = std::make_shared<std::string>();
  auto name = std::make_shared<std::string>();
  app.add_option("kind", *kind, "replica, service, job; model, node, tenant, route, queue")
      ->required()
      ->check(CLI::IsMember(
          {"replica", "service", "job", "model", "node", "tenant", "route", "queue"}));
  app.add_option("name", *name, "Its name (loadstar get KIND)")->required();
  add_admin_options(app, *target);
  return [target, kind, name]() -> int {
    if (*kind == "service") return describe_service(*target, *name);
    if (*kind == "job") return describe_job(*target, *name);
    if (*kind != "replica") return describe_declared(*target, *kind, *name);
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
      if (!value->empty()) {
        std::string encoded;  // what a query may carry as it is; the rest %XX
        for (unsigned char c : *value)
          encoded += std::isalnum(c) || c == '-' || c == ':' || c == '.'
                         ? std::string(1, static_cast<char>(c))
                         : fmt::format("%{:02X}", c);
        query += fmt::format("&{}={}", name, encoded);
      }
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
      fmt::print("{:<21} {:<16} {:<20} {:>9} {:>7} {:>13} {:>13} {:>12.2f}\n", r.value("hour", ""),
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
