// The gateway deciding where requests go, end to end through `loadstar up`:
// tenants and their limits, route splits and fallback, prefix and session
// affinity, and requests held while a service scales up from zero.
#include <gtest/gtest.h>

#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>

#include <nlohmann/json.hpp>

#include "common/digest.h"
#include "support.h"

namespace loadstar::testing {
namespace {

using nlohmann::json;

constexpr const char* kModel = R"(apiVersion: loadstar.dev/v1alpha1
kind: Model
metadata: {name: tiny}
spec: {source: "synth://tiny", size: 8Mi}
)";

std::string service(const std::string& name, int replicas, const std::string& extra = "") {
  return fmt::format(R"(---
apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {{name: {}}}
spec:
  model: tiny
  replicas: {}
  engine: {{name: engine-sim, args: ["--time-scale", "20"]}}
{})",
                     name, replicas, extra);
}

std::string completion(const std::string& model, const std::string& prompt, int max_tokens = 4,
                       bool stream = false) {
  json body = {
      {"model", model}, {"prompt", prompt}, {"max_tokens", max_tokens}, {"ignore_eos", true}};
  if (stream) body["stream"] = true;
  return body.dump();
}

http::Header bearer(const std::string& key) {
  return {"Authorization", "Bearer " + key};
}

TEST(Routing, ATenantsKeyReachesOnlyItsModels) {
  const std::string rest = fmt::format(R"(---
apiVersion: loadstar.dev/v1alpha1
kind: Route
metadata: {{name: partner}}
spec:
  backends: [{{service: chat}}]
---
apiVersion: loadstar.dev/v1alpha1
kind: Tenant
metadata: {{name: team-a}}
spec:
  apiKeys: [{{name: a, sha256: {}}}]
  models: [chat]
---
apiVersion: loadstar.dev/v1alpha1
kind: Tenant
metadata: {{name: team-b}}
spec:
  apiKeys: [{{name: b, sha256: {}}}]
  models: [partner]
---
apiVersion: loadstar.dev/v1alpha1
kind: Tenant
metadata: {{name: ops}}
spec:
  apiKeys: [{{name: o, sha256: {}}}]
)",
                                       sha256_hex("sk-a"), sha256_hex("sk-b"), sha256_hex("sk-o"));
  auto up = Up::start(std::string(kModel) + service("chat", 1) + rest);
  up->wait_ready("chat", 1);
  auto call = [&](const std::string& key, const std::string& model) {
    return up->post("/v1/completions", completion(model, "hi", 2), {bearer(key)});
  };
  EXPECT_EQ(call("sk-a", "chat").status, 200);
  EXPECT_EQ(call("sk-b", "partner").status, 200);
  // Another tenant's model answers exactly as a model that does not exist.
  auto other = call("sk-a", "partner");
  auto absent = call("sk-a", "no-such-model");
  EXPECT_EQ(other.status, 404);
  EXPECT_EQ(absent.status, 404);
  EXPECT_EQ(json::parse(other.body)["error"]["message"],
            "The model `partner` does not exist or you do not have access to it.");
  EXPECT_EQ(call("sk-b", "chat").status, 404);
  // Streaming asks the same question first.
  auto streamed = up->post("/v1/completions", completion("chat", "hi", 2, true), {bearer("sk-b")});
  EXPECT_EQ(streamed.status, 404);
  // /v1/models lists what the key may call; a tenant without a list sees all.
  auto ids = [&](const std::string& key) {
    auto r = http::fetch({.port = up->port(), .target = "/v1/models", .headers = {bearer(key)}});
    std::vector<std::string> out;
    EXPECT_TRUE(r.ok() && r->status == 200) << (r.ok() ? r->body : r.error().message);
    const json listing = r.ok() ? json::parse(r->body) : json::object();
    for (const auto& m : listing.value("data", json::array())) out.push_back(m["id"]);
    return out;
  };
  EXPECT_EQ(ids("sk-a"), std::vector<std::string>{"chat"});
  EXPECT_EQ(ids("sk-b"), std::vector<std::string>{"partner"});
  EXPECT_EQ(ids("sk-o"), (std::vector<std::string>{"chat", "partner"}));
  EXPECT_EQ(settled_metric(up->port(), "loadstar_gateway_tenant_requests_total",
                           "code=\"404\",model=\"chat\",tenant=\"team-b\"", 2),
            2);
}

TEST(Routing, TenantsNeedAKeyAndAreHeldToTheirLimits) {
  const std::string tenants =
      fmt::format(R"(---
apiVersion: loadstar.dev/v1alpha1
kind: Tenant
metadata: {{name: team-a}}
spec:
  apiKeys:
    - {{name: ci, sha256: {}}}
    - {{name: old, sha256: {}, revoked: true}}
  limits: {{requestsPerMinute: 4}}
---
apiVersion: loadstar.dev/v1alpha1
kind: Tenant
metadata: {{name: team-b}}
spec:
  apiKeys: [{{name: laptop, sha256: {}}}]
  limits: {{tokensPerMinute: 100000}}
  tokenCost: "input_tokens / 2 + output_tokens * 3"
)",
                  sha256_hex("sk-a"), sha256_hex("sk-a-old"), sha256_hex("sk-b"));
  auto up = Up::start(std::string(kModel) + service("chat", 1) + tenants);
  up->wait_ready("chat", 1);
  const std::string body = completion("chat", "hello there", 5);
  auto missing = up->post("/v1/completions", body);
  EXPECT_EQ(missing.status, 401);
  EXPECT_NE(missing.body.find("didn't provide an API key"), std::string::npos);
  EXPECT_EQ(up->post("/v1/completions", body, {bearer("sk-nope")}).status, 401);
  auto revoked = up->post("/v1/completions", body, {bearer("sk-a-old")});
  EXPECT_EQ(revoked.status, 401);
  EXPECT_NE(revoked.body.find("revoked"), std::string::npos);

  // Four requests a minute: the fifth is refused, in OpenAI's shape.
  for (int i = 0; i < 4; ++i) {
    auto ok = up->post("/v1/completions", body, {bearer("sk-a")});
    ASSERT_EQ(ok.status, 200) << ok.body;
    EXPECT_EQ(ok.header("x-ratelimit-limit-requests"), "4");
    EXPECT_EQ(ok.header("x-ratelimit-remaining-requests"), std::to_string(3 - i));
  }
  auto limited = up->post("/v1/completions", body, {bearer("sk-a")});
  EXPECT_EQ(limited.status, 429);
  EXPECT_EQ(limited.header("Retry-After"), "15");  // one request every 15 s
  EXPECT_EQ(limited.header("x-ratelimit-remaining-requests"), "0");
  EXPECT_NE(
      json::parse(limited.body)["error"]["message"].get<std::string>().find("requests per minute"),
      std::string::npos);
  // Another tenant is not affected; its usage is charged by its own cost.
  auto b = up->post("/v1/completions", body, {bearer("sk-b")});
  ASSERT_EQ(b.status, 200);
  const auto usage = json::parse(b.body)["usage"];
  const double expected_cost =
      usage["prompt_tokens"].get<double>() / 2 + usage["completion_tokens"].get<double>() * 3;
  EXPECT_EQ(settled_metric(up->port(), "loadstar_gateway_tenant_cost_total", "tenant=\"team-b\"",
                           expected_cost),
            expected_cost);
  EXPECT_EQ(scrape_metric(up->port(), "loadstar_gateway_tenant_completion_tokens_total",
                          "tenant=\"team-a\""),
            20);
  EXPECT_EQ(scrape_metric(up->port(), "loadstar_gateway_tenant_requests_total",
                          "code=\"429\",model=\"chat\",tenant=\"team-a\""),
            1);
  EXPECT_EQ(scrape_metric(up->port(), "loadstar_gateway_auth_failures_total", "reason=\"revoked\""),
            1);
  // Listing models needs a key as well.
  auto models = http::fetch({.port = up->port(), .target = "/v1/models"});
  ASSERT_TRUE(models.ok());
  EXPECT_EQ(models->status, 401);
  auto listed =
      http::fetch({.port = up->port(), .target = "/v1/models", .headers = {bearer("sk-b")}});
  ASSERT_TRUE(listed.ok());
  EXPECT_EQ(listed->status, 200);
  // The key never reaches the log.
  EXPECT_EQ(up->log().find("sk-a"), std::string::npos);
}

TEST(Routing, StreamsAreChargedTheirTrueUsageAndConcurrencyHolds) {
  const std::string tenants = fmt::format(R"(---
apiVersion: loadstar.dev/v1alpha1
kind: Tenant
metadata: {{name: t}}
spec:
  apiKeys: [{{name: k, sha256: {}}}]
  limits: {{tokensPerMinute: 1000, maxConcurrentRequests: 100}}
  tokenCost: output_tokens
)",
                                          sha256_hex("sk-t"));
  auto up = Up::start(std::string(kModel) + service("chat", 1) + tenants);
  up->wait_ready("chat", 1);
  // A stream that did not ask for usage: the gateway forces it upstream,
  // charges it, and does not pass the usage event on.
  auto stream = up->post("/v1/completions", completion("chat", "hi", 30, true), {bearer("sk-t")});
  ASSERT_EQ(stream.status, 200);
  EXPECT_EQ(stream.body.find("\"usage\":{"), std::string::npos);
  // Charged once the gateway has finished with the request, which may be
  // just after the client read the stream's end (CI saw no charge yet).
  EXPECT_EQ(settled_metric(up->port(), "loadstar_gateway_tenant_cost_total", "", 30), 30);
  // 40 requests at once, each estimated at 100 tokens (max_tokens) but using
  // 10: admission stops when the balance (970) is spent on estimates, so at
  // most 10 are admitted, never more.
  std::atomic<int> ok{0}, limited{0};
  std::vector<std::thread> clients;
  for (int i = 0; i < 40; ++i)
    clients.emplace_back([&] {
      json body = {{"model", "chat"}, {"prompt", "x"}, {"max_tokens", 100}};
      auto r = http::fetch({.port = up->port(),
                            .method = "POST",
                            .target = "/v1/completions",
                            .body = body.dump(),
                            .headers = {bearer("sk-t")},
                            .timeout_s = 30});
      if (r.ok() && r->status == 200) ++ok;
      if (r.ok() && r->status == 429) ++limited;
    });
  for (auto& c : clients) c.join();
  EXPECT_GE(ok.load(), 1);
  EXPECT_LE(ok.load(), 10 + 10);  // admitted on estimates; refunds may let a few more in
  EXPECT_EQ(ok + limited, 40);
}

TEST(Routing, SplitsFollowWeightsAndFallbackSkipsADeadBackend) {
  auto up = Up::start(std::string(kModel) + service("blue", 1) + service("green", 1) + R"(---
apiVersion: loadstar.dev/v1alpha1
kind: Route
metadata: {name: chat}
spec:
  backends:
    - {service: blue, weight: 80}
    - {service: green, weight: 20}
---
apiVersion: loadstar.dev/v1alpha1
kind: Route
metadata: {name: resilient}
spec:
  backends:
    - {url: "http://127.0.0.1:1", model: nothing-listens-here}
    - {service: green, priority: 1}
)");
  up->wait_ready("blue", 1);
  up->wait_ready("green", 1);
  int blue = 0, green = 0;
  for (int i = 0; i < 200; ++i) {
    auto r = up->post("/v1/completions", completion("chat", "x", 1));
    ASSERT_EQ(r.status, 200) << r.body;
    const std::string served = json::parse(r.body)["model"];
    blue += served == "blue";
    green += served == "green";
  }
  EXPECT_EQ(blue + green, 200);
  // Binomial(200, 0.8): mean 160, standard deviation 5.7; 5 sigma either way.
  EXPECT_GT(blue, 131);
  EXPECT_LT(blue, 189);
  EXPECT_EQ(scrape_metric(up->port(), "loadstar_gateway_backend_requests_total",
                          "backend=\"blue\",model=\"chat\""),
            blue);

  // The first backend refuses connections: every request falls back to
  // green, and after 5 failures the dead one is ejected and not tried again.
  for (int i = 0; i < 8; ++i) {
    auto r = up->post("/v1/completions", completion("resilient", "x", 1));
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(json::parse(r.body)["model"], "green");
  }
  EXPECT_EQ(scrape_metric(up->port(), "loadstar_gateway_fallbacks_total", "model=\"resilient\""),
            8);
  EXPECT_EQ(scrape_metric(up->port(), "loadstar_gateway_backend_requests_total",
                          "backend=\"127.0.0.1:1\",model=\"resilient\""),
            5);
  EXPECT_EQ(scrape_metric(up->port(), "loadstar_gateway_outlier_ejections_total"), 1);
}

TEST(Routing, PrefixAndSessionAffinity) {
  auto up = Up::start(std::string(kModel) + service("chat", 3));
  up->wait_ready("chat", 3);
  std::string document;
  for (int i = 0; i < 300; ++i) document += " word" + std::to_string(i);
  // The same long document with different questions goes to one replica.
  std::set<std::string> endpoints;
  for (int i = 0; i < 6; ++i) {
    auto r = up->post("/v1/completions",
                      completion("chat", document + " question " + std::to_string(i)));
    ASSERT_EQ(r.status, 200);
    endpoints.insert(std::string(r.header("x-loadstar-endpoint")));
  }
  EXPECT_EQ(endpoints.size(), 1u);
  const std::string holder = *endpoints.begin();
  // ... whose engine served the shared blocks from its prefix cache.
  auto replicas = json::parse(up->replicas_json())["items"];
  for (const auto& r : replicas) {
    const double hits = scrape_metric(r["port"].get<uint16_t>(), "vllm:prefix_cache_hits_total");
    if (r["name"] == holder)
      EXPECT_GT(hits, 5 * 250);
    else
      EXPECT_EQ(hits, 0);
  }
  // Unrelated short prompts spread over the replicas.
  endpoints.clear();
  for (int i = 0; i < 6; ++i)
    endpoints.insert(
        std::string(up->post("/v1/completions", completion("chat", "q" + std::to_string(i)))
                        .header("x-loadstar-endpoint")));
  EXPECT_EQ(endpoints.size(), 3u);
  // A session header sticks unrelated prompts to one replica.
  endpoints.clear();
  for (int i = 0; i < 6; ++i)
    endpoints.insert(
        std::string(up->post("/v1/completions", completion("chat", "other " + std::to_string(i)),
                             {{"x-session-id", "conversation-42"}})
                        .header("x-loadstar-endpoint")));
  EXPECT_EQ(endpoints.size(), 1u);
  EXPECT_GT(scrape_metric(up->port(), "loadstar_gateway_prefix_blocks_matched_total"), 0);
}

TEST(Routing, RequestsWaitWhileAServiceScalesUpFromZero) {
  // `chat` scales from zero; `broken`'s engine never becomes ready (a bad
  // flag), so its held requests stay held until they time out.
  auto up = Up::start(std::string(kModel) + service("chat", 1, R"(  minReplicas: 0
  idleTimeout: 1500ms
)") + R"(---
apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {name: broken}
spec:
  model: tiny
  replicas: 1
  minReplicas: 0
  engine: {name: engine-sim, args: ["--no-such-flag"]}
  routing: {hold: {maxRequests: 1, timeout: 2s}}
)");
  // Nothing runs until a request comes.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(json::parse(up->replicas_json())["items"].size(), 0u);
  auto held = up->post("/v1/completions", completion("chat", "wake up"));
  EXPECT_EQ(held.status, 200) << held.body;
  EXPECT_EQ(scrape_metric(up->port(), "loadstar_gateway_held_requests_total", "model=\"chat\""), 1);

  // The hold queue is bounded and held requests time out.
  http::ClientResponse waited;
  std::thread first([&] { waited = up->post("/v1/completions", completion("broken", "x")); });
  for (int i = 0; i < 200; ++i) {
    if (scrape_metric(up->port(), "loadstar_gateway_held_requests_total", "model=\"broken\"") == 1)
      break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  auto overflow = up->post("/v1/completions", completion("broken", "me too"));
  first.join();
  EXPECT_EQ(overflow.status, 503);
  EXPECT_FALSE(overflow.header("Retry-After").empty());
  EXPECT_NE(overflow.body.find("too many requests are waiting"), std::string::npos);
  EXPECT_EQ(waited.status, 503);
  EXPECT_NE(waited.body.find("became ready within 2s"), std::string::npos) << waited.body;
  EXPECT_EQ(scrape_metric(up->port(), "loadstar_gateway_hold_timeouts_total", "model=\"broken\""),
            1);
  // Both were turned away for want of a replica: arrivals the controller
  // counts (the one held for `chat` was sent).
  auto load = http::fetch({.port = up->port(), .target = "/loadstar/v1/load"});
  ASSERT_TRUE(load.ok());
  EXPECT_EQ(json::parse(load->body)["turned_away"], json::parse(R"({"broken": 2})")) << load->body;

  // Idle past its timeout, `chat` goes back to zero.
  auto chat_replicas = [&] {
    int n = 0;
    const json doc = json::parse(up->replicas_json());  // named: the loop borrows from it
    for (const auto& r : doc["items"]) n += r["service"] == "chat";
    return n;
  };
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (std::chrono::steady_clock::now() < deadline && chat_replicas() > 0)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(chat_replicas(), 0);
  EXPECT_NE(up->log().find("scaling to zero"), std::string::npos);
}

// An OpenAI-compatible upstream that answers one request per connection and
// then, like a server whose keep-alive timer fires just as the next request
// arrives, reads the next request on that connection and closes it unanswered.
class OneRequestPerConnectionUpstream {
 public:
  // `interim`: sent before each answer (an interim 1xx response).
  explicit OneRequestPerConnectionUpstream(std::string interim = "")
      : interim_(std::move(interim)) {
    listener_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    if (::bind(listener_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
        ::listen(listener_, 16) != 0 ||
        ::getsockname(listener_, reinterpret_cast<sockaddr*>(&addr), &len) != 0)
      throw std::runtime_error(std::string("upstream socket: ") + std::strerror(errno));
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] { serve(); });
  }
  ~OneRequestPerConnectionUpstream() {
    stop_ = true;
    thread_.join();
    ::close(listener_);
  }
  uint16_t port() const { return port_; }
  int connections() const { return connections_; }
  int answered() const { return answered_; }

 private:
  // Reads one request (head and Content-Length body); false at end of stream.
  static bool read_request(int fd) {
    std::string data;
    char buf[4096];
    size_t need = std::string::npos;
    while (need == std::string::npos || data.size() < need) {
      const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
      if (n <= 0) return false;
      data.append(buf, static_cast<size_t>(n));
      if (const size_t end = data.find("\r\n\r\n");
          need == std::string::npos && end != std::string::npos) {
        const size_t at = data.find("Content-Length: ");
        need = end + 4 + (at < end ? std::stoul(data.substr(at + 16)) : 0);
      }
    }
    return true;
  }
  void serve() {
    while (!stop_) {
      pollfd p{listener_, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      const int fd = ::accept(listener_, nullptr, nullptr);
      if (fd < 0) continue;
      ++connections_;
      std::thread([this, fd] {
        if (read_request(fd)) {
          const std::string body =
              R"({"id":"cmpl-1","object":"text_completion","model":"flaky",)"
              R"("choices":[{"index":0,"text":"ok","finish_reason":"length"}],)"
              R"("usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}})";
          const std::string response = fmt::format(
              "{}HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
              "{}\r\n\r\n{}",
              interim_, body.size(), body);
          // Counted before the send: once the client has the answer the
          // test may read the count (counting after raced it under ASan).
          ++answered_;
          if (::send(fd, response.data(), response.size(), MSG_NOSIGNAL) !=
              static_cast<ssize_t>(response.size()))
            --answered_;
          read_request(fd);  // the next request on this connection goes unanswered
        }
        ::close(fd);
      }).detach();
    }
  }
  const std::string interim_;
  int listener_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> connections_{0};
  std::atomic<int> answered_{0};
  std::thread thread_;
};

TEST(Routing, AClosedKeepAliveConnectionIsReplacedNotFailed) {
  // One gateway worker, so every request after the first finds the pool's
  // connection. `flaky` closes each reused connection as the request
  // arrives; `tiny-engine` closes keep-alive connections idle 200 ms.
  OneRequestPerConnectionUpstream flaky;
  auto up = Up::start(std::string(kModel) + R"(---
apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {name: idle}
spec:
  model: tiny
  engine: {name: engine-sim, args: ["--time-scale", "20", "--timeout-keep-alive", "0.2"]}
)" +
                          fmt::format(R"(---
apiVersion: loadstar.dev/v1alpha1
kind: Route
metadata: {{name: flaky}}
spec:
  backends: [{{url: "http://127.0.0.1:{}", model: flaky}}]
)",
                                      flaky.port()),
                      {"--workers", "1"});
  for (int i = 0; i < 4; ++i) {
    auto r = up->post("/v1/completions", completion("flaky", "x", 1));
    for (int wait = 0; i == 0 && r.status == 404 && wait < 100; ++wait) {  // the route is not in
      std::this_thread::sleep_for(std::chrono::milliseconds(50));          // the table yet
      r = up->post("/v1/completions", completion("flaky", "x", 1));
    }
    ASSERT_EQ(r.status, 200) << "request " << i << ": " << r.body;
  }
  EXPECT_EQ(flaky.answered(), 4);
  EXPECT_EQ(flaky.connections(), 4);
  EXPECT_EQ(
      scrape_metric(up->port(), "loadstar_gateway_upstream_reconnects_total", "model=\"flaky\""),
      3);
  EXPECT_EQ(scrape_metric(up->port(), "loadstar_gateway_upstream_retries_total", "model=\"flaky\""),
            0);

  // The engine closed the pooled connection while it sat idle: the gateway
  // sees that before sending and opens a new one.
  up->wait_ready("idle", 1);
  for (int i = 0; i < 3; ++i) {
    auto r = up->post("/v1/completions", completion("idle", "x", 1));
    ASSERT_EQ(r.status, 200) << "request " << i << ": " << r.body;
    std::this_thread::sleep_for(std::chrono::milliseconds(400));
  }
  EXPECT_EQ(
      scrape_metric(up->port(), "loadstar_gateway_requests_total", "code=\"200\",model=\"idle\""),
      3);
}

// A Route named `name` to the raw backend on `port`.
std::string route_to(const std::string& name, uint16_t port) {
  return fmt::format(R"(---
apiVersion: loadstar.dev/v1alpha1
kind: Route
metadata: {{name: {0}}}
spec:
  backends: [{{url: "http://127.0.0.1:{1}", model: {0}}}]
)",
                     name, port);
}

// A completion for `model`, asked again while its route is not in the
// gateway's table yet (404, up to 5 s).
http::ClientResponse complete_once_routed(Up& up, const std::string& model) {
  auto r = up.post("/v1/completions", completion(model, "x", 1));
  for (int wait = 0; r.status == 404 && wait < 100; ++wait) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    r = up.post("/v1/completions", completion(model, "x", 1));
  }
  return r;
}

// A backend that sends an interim response first (103 Early Hints, as a
// hosted API behind a CDN may) is answered by its final response: the
// client gets the 200 and its body, each time, and nothing is resent.
TEST(Routing, AnInterimResponseIsReadPastToTheFinalOne) {
  OneRequestPerConnectionUpstream hinting(
      "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n");
  auto up = Up::start(std::string(kModel) + route_to("hinting", hinting.port()));
  for (int i = 0; i < 2; ++i) {
    auto r = complete_once_routed(*up, "hinting");
    ASSERT_EQ(r.status, 200) << "request " << i << ": " << r.body;
    EXPECT_EQ(json::parse(r.body)["choices"][0]["text"], "ok") << r.body;
  }
  EXPECT_EQ(hinting.answered(), 2);
}

// A backend that switches protocols nobody asked for fails the attempt
// (502): its bytes are not relayed, and its connection is not pooled.
TEST(Routing, AnUnaskedProtocolSwitchFailsTheAttempt) {
  OneRequestPerConnectionUpstream switching(
      "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
  auto up = Up::start(std::string(kModel) + route_to("switching", switching.port()));
  auto r = complete_once_routed(*up, "switching");
  EXPECT_EQ(r.status, 502) << r.body;
  EXPECT_NE(r.body.find("Protocol error"), std::string::npos) << r.body;
}

// Flow control: with every replica saturated, requests wait in the gateway
// and leave by tenant priority; a sheddable tenant is refused at once; a full
// queue refuses equal priorities and evicts lower ones for higher.
TEST(Routing, SaturatedServicesQueueByTenantPriorityAndShedSheddableTraffic) {
  const std::string rest =
      fmt::format(R"(  routing:
    flowControl: {{maxInFlightPerReplica: 1, maxQueued: 3, queueTimeout: 30s}}
---
apiVersion: loadstar.dev/v1alpha1
kind: Tenant
metadata: {{name: low}}
spec:
  apiKeys: [{{name: l, sha256: {}}}]
---
apiVersion: loadstar.dev/v1alpha1
kind: Tenant
metadata: {{name: high}}
spec:
  apiKeys: [{{name: h, sha256: {}}}]
  priority: 10
---
apiVersion: loadstar.dev/v1alpha1
kind: Tenant
metadata: {{name: batch}}
spec:
  apiKeys: [{{name: b, sha256: {}}}]
  sheddable: true
)",
                  sha256_hex("sk-low"), sha256_hex("sk-high"), sha256_hex("sk-batch"));
  auto up = Up::start(quickstart(1, R"("--time-scale", "1")") + rest);
  up->wait_ready("chat", 1);
  // Not saturated: sheddable traffic is served like any other.
  EXPECT_EQ(up->post("/v1/completions", completion("chat", "idle", 2), {bearer("sk-batch")}).status,
            200);

  std::mutex mu;
  std::vector<std::string> finished;  // in the order they were answered
  std::map<std::string, http::ClientResponse> answers;
  std::vector<std::thread> clients;
  auto send = [&](const std::string& name, const std::string& key) {
    clients.emplace_back([&, name, key] {
      auto r = up->post("/v1/completions", completion("chat", name, 60), {bearer(key)});
      std::lock_guard lock(mu);
      finished.push_back(name);
      answers[name] = std::move(r);
    });
  };
  auto queued_reaches = [&](double n) {
    return settled_metric(up->port(), "loadstar_gateway_queued_requests", "service=\"chat\"", n) ==
           n;
  };
  send("first", "sk-low");  // takes the replica's one slot
  ASSERT_EQ(settled_metric(up->port(), "loadstar_gateway_requests_in_flight", "model=\"chat\"", 1),
            1);
  send("low-1", "sk-low");
  ASSERT_TRUE(queued_reaches(1));
  send("low-2", "sk-low");
  ASSERT_TRUE(queued_reaches(2));
  send("high-1", "sk-high");
  ASSERT_TRUE(queued_reaches(3));
  // The queue shows in the load report the controller autoscales on.
  auto load = http::fetch({.port = up->port(), .target = "/loadstar/v1/load"});
  ASSERT_TRUE(load.ok());
  EXPECT_EQ(json::parse(load->body)["queued"]["chat"], 3) << load->body;

  // Sheddable: refused at once, with Retry-After.
  const auto shed_start = std::chrono::steady_clock::now();
  auto shed = up->post("/v1/completions", completion("chat", "batch", 2), {bearer("sk-batch")});
  EXPECT_EQ(shed.status, 503);
  EXPECT_EQ(shed.header("Retry-After"), "1");
  EXPECT_NE(shed.body.find("sheddable"), std::string::npos) << shed.body;
  EXPECT_LT(std::chrono::steady_clock::now() - shed_start, std::chrono::milliseconds(200));
  // Full, at the same priority: refused.
  auto full = up->post("/v1/completions", completion("chat", "low-3", 2), {bearer("sk-low")});
  EXPECT_EQ(full.status, 503);
  EXPECT_NE(full.body.find("queue is full"), std::string::npos) << full.body;
  // Full, at a higher priority: the lowest band's newest request makes room.
  send("high-2", "sk-high");
  for (auto& c : clients) c.join();

  ASSERT_EQ(answers.size(), 5u);
  EXPECT_EQ(answers["low-2"].status, 503);
  EXPECT_NE(answers["low-2"].body.find("higher-priority"), std::string::npos)
      << answers["low-2"].body;
  for (const char* name : {"first", "low-1", "high-1", "high-2"})
    EXPECT_EQ(answers[name].status, 200) << name << ": " << answers[name].body;
  // low-2 was answered at eviction; the rest in priority order.
  std::erase(finished, "low-2");
  EXPECT_EQ(finished, (std::vector<std::string>{"first", "high-1", "high-2", "low-1"}));
  for (const auto& [outcome, n] : std::map<std::string, double>{
           {"shed", 1}, {"queue_full", 1}, {"evicted", 1}, {"dispatched", 3}})
    EXPECT_EQ(scrape_metric(up->port(), "loadstar_gateway_flow_control_total",
                            fmt::format("service=\"chat\",outcome=\"{}\"", outcome)),
              n)
        << outcome;
  EXPECT_EQ(scrape_metric(up->port(), "loadstar_gateway_queued_requests", "service=\"chat\""), 0);
  // The three it never sent are arrivals the autoscaler counts, in the
  // load report.
  load = http::fetch({.port = up->port(), .target = "/loadstar/v1/load"});
  ASSERT_TRUE(load.ok());
  EXPECT_EQ(json::parse(load->body)["turned_away"]["chat"], 3) << load->body;
}

}  // namespace
}  // namespace loadstar::testing
