// The node agent as real `loadstar agent` processes against an origin on
// loopback. The origin is an HTTP server of this test (it speaks Range
// requests and the Hugging Face Hub's protocol, and injects the faults a
// real server will not produce on demand: errors, corrupt bytes, stalls, a
// slow link); the agents, their peers and the CLI are the real binary.
#include <signal.h>

#include <atomic>
#include <charconv>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include <gtest/gtest.h>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <nlohmann/json.hpp>

#include "common/digest.h"
#include "http/server.h"
#include "kubernetes_fixture.h"
#include "support.h"

namespace loadstar::testing {
namespace {

namespace fs = std::filesystem;
namespace asio = boost::asio;
using nlohmann::json;

std::string random_bytes(size_t n, uint32_t seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (size_t i = 0; i + 8 <= n; i += 8) {
    uint64_t v = rng();
    std::memcpy(s.data() + i, &v, 8);
  }
  return s;
}

// Not a coroutine: GCC 12 miscompiles braced temporaries inside co_await.
asio::awaitable<bool> reply(http::Exchange& ex, int status, std::string type, std::string body,
                            std::vector<http::Header> headers = {}) {
  http::Response r;
  r.status = status;
  r.content_type = std::move(type);
  r.body = std::move(body);
  r.headers = std::move(headers);
  return ex.respond(std::move(r));
}

// Serves `files` at /files/NAME (with /files/loadstar-manifest.json listing
// their SHA-256s), and as the Hub repository org/tiny.
class Origin {
 public:
  std::map<std::string, std::string> files;
  std::atomic<uint64_t> egress{0};  // body bytes of file responses
  std::atomic<int> fail_next{0};    // answer the next N file GETs with fail_status
  std::atomic<int> fail_status{500};
  std::atomic<int> corrupt_next{0};    // flip a byte in the next N file GETs
  std::atomic<bool> stall{false};      // send headers, then nothing
  std::atomic<double> bytes_per_s{0};  // 0: as fast as loopback
  bool vanishing_peer = false;         // also act as a peer that dies mid-chunk
  std::string token;                   // required by the Hub API when set
  bool bad_name = false;               // the Hub lists "../escape"
  // Guards `files` for a test that replaces them while the server runs.
  std::mutex files_mu;
  void replace_files(std::map<std::string, std::string> now) {
    std::lock_guard lock(files_mu);
    files = std::move(now);
  }

  Origin() {
    auto server =
        http::Server::create({&io_}, {}, [this](http::Exchange& ex) { return handle(ex); });
    if (!server.ok()) throw std::runtime_error(server.error().message);
    server_ = std::move(*server);
    server_->start();
    thread_ = std::thread([this] { io_.run(); });
  }
  ~Origin() {
    server_->stop();
    io_.stop();
    thread_.join();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(server_->port()); }
  uint64_t total() const {
    uint64_t t = 0;
    for (const auto& [n, b] : files) t += b.size();
    return t;
  }

 private:
  asio::awaitable<void> handle(http::Exchange& ex) {
    const auto& req = ex.request();
    std::string path(req.path());
    if (path.starts_with("/api/models/org/tiny/revision/")) {
      if (!token.empty() && req.header("authorization") != "Bearer " + token) {
        co_await reply(ex, 401, "application/json", R"({"error":"Invalid credentials"})");
        co_return;
      }
      json siblings = json::array({{{"rfilename", ".gitattributes"}, {"size", 10}}});
      for (const auto& [name, bytes] : files)
        siblings.push_back({{"rfilename", bad_name ? "../escape" : name},
                            {"size", bytes.size()},
                            {"lfs", {{"sha256", sha256_hex(bytes)}, {"size", bytes.size()}}}});
      std::string info = json({{"sha", "0123abcd"}, {"siblings", siblings}}).dump();
      co_await reply(ex, 200, "application/json", std::move(info));
      co_return;
    }
    if (path.starts_with("/to-metadata/")) {  // a redirect towards the cloud metadata service
      std::vector<http::Header> location = {
          {"Location", "http://169.254.169.254/latest/meta-data/iam/security-credentials/"}};
      co_await reply(ex, 302, "text/plain", "", std::move(location));
      co_return;
    }
    if (path.starts_with("/org/tiny/resolve/0123abcd/")) {  // the Hub redirects to its CDN
      std::vector<http::Header> location = {{"Location", "/files/" + path.substr(27)}};
      co_await reply(ex, 302, "text/plain", "", std::move(location));
      co_return;
    }
    if (vanishing_peer && path.starts_with("/v1/blobs/sha256-")) {
      // Claims every file whole; each chunk request gets half its bytes,
      // then the connection drops.
      std::string rest = path.substr(17);
      const std::string sha = rest.substr(0, rest.find('/'));
      const std::string* bytes = nullptr;
      for (const auto& [name, b] : files)
        if (sha256_hex(b) == sha) bytes = &b;
      if (!bytes) {
        co_await reply(ex, 404, "text/plain", "no blob");
        co_return;
      }
      if (rest.find('/') == std::string::npos) {
        const size_t chunks = (bytes->size() + (1 << 20) - 1) >> 20;
        std::string info = json({{"size", bytes->size()},
                                 {"chunk_bytes", 1 << 20},
                                 {"complete", true},
                                 {"staging", false},
                                 {"have", std::string(chunks, '1')}})
                               .dump();
        co_await reply(ex, 200, "application/json", std::move(info));
        co_return;
      }
      co_await ex.begin_stream(200, "application/octet-stream");
      std::string half(512 << 10, 'x');
      co_await ex.write_chunk(half);
      co_return;  // no end: the peer is gone
    }
    std::unique_lock files_lock(files_mu);
    if (path == "/files/loadstar-manifest.json") {
      json list = json::array();
      for (const auto& [name, bytes] : files)
        list.push_back({{"path", name}, {"size", bytes.size()}, {"sha256", sha256_hex(bytes)}});
      files_lock.unlock();
      std::string manifest = json({{"files", list}}).dump();
      co_await reply(ex, 200, "application/json", std::move(manifest));
      co_return;
    }
    auto it = path.starts_with("/files/") ? files.find(path.substr(7)) : files.end();
    if (it == files.end()) {
      files_lock.unlock();
      co_await reply(ex, 404, "text/plain", "no such file");
      co_return;
    }
    if (fail_next > 0) {
      files_lock.unlock();
      --fail_next;
      co_await reply(ex, fail_status, "text/plain", "injected failure");
      co_return;
    }
    const uint64_t size = it->second.size();
    uint64_t begin = 0, end = size;
    std::string_view range = req.header("range");
    if (range.starts_with("bytes=")) {
      const char* p = range.data() + 6;
      auto r1 = std::from_chars(p, range.data() + range.size(), begin);
      uint64_t last = 0;
      std::from_chars(r1.ptr + 1, range.data() + range.size(), last);
      end = std::min<uint64_t>(last + 1, size);
    }
    std::string body = it->second.substr(begin, end - begin);
    files_lock.unlock();
    if (corrupt_next > 0 && !body.empty()) {
      --corrupt_next;
      body[body.size() / 2] ^= 0x5a;
    }
    if (req.method == "HEAD") body.clear();
    std::vector<http::Header> headers;
    headers.push_back({"Content-Range", fmt::format("bytes {}-{}/{}", begin, end - 1, size)});
    const int status = range.empty() ? 200 : 206;
    co_await ex.begin_stream(status, "application/octet-stream", std::move(headers));
    asio::steady_timer timer(ex.executor());
    if (stall) {
      timer.expires_after(std::chrono::seconds(30));
      co_await timer.async_wait(asio::use_awaitable);
    }
    constexpr size_t kPiece = 64 << 10;
    for (size_t off = 0; off < body.size(); off += kPiece) {
      std::string_view piece = std::string_view(body).substr(off, kPiece);
      if (!co_await ex.write_chunk(piece)) co_return;
      egress += piece.size();
      if (bytes_per_s > 0) {
        timer.expires_after(std::chrono::microseconds(
            static_cast<int64_t>(piece.size() / bytes_per_s.load() * 1e6)));
        co_await timer.async_wait(asio::use_awaitable);
      }
    }
    co_await ex.end_stream();
  }

  asio::io_context io_{1};
  std::unique_ptr<http::Server> server_;
  std::thread thread_;
};

// Starts `loadstar agent` with its cache in scratch_dir()/agent-NAME, which
// an agent of the same name started before left (to test resume).
class Agent {
 public:
  Agent(const std::string& name, std::vector<std::string> args = {},
        std::vector<std::string> env = {}, uint16_t port = 0) {
    dir_ = scratch_dir() / ("agent-" + name);
    // Its internal token, when started with LOADSTAR_TOKEN=...
    for (const auto& e : env)
      if (e.starts_with("LOADSTAR_TOKEN="))
        headers_.push_back({"Authorization", "Bearer " + e.substr(15)});
    for (size_t i = 0; i + 1 < args.size(); ++i)
      if (args[i] == "--host") host_ = args[i + 1];
    const fs::path port_file = dir_ / "port";
    fs::create_directories(dir_);
    fs::remove(port_file);
    log_ = dir_ / "log";
    ProcessOptions options;
    options.argv = {LOADSTAR_BIN,   "agent",
                    "--port",       std::to_string(port),
                    "--port-file",  port_file.string(),
                    "--cache-dir",  (dir_ / "cache").string(),
                    "--chunk-size", "1Mi"};
    options.argv.insert(options.argv.end(), args.begin(), args.end());
    options.env = std::move(env);
    options.output_path = log_.string();
    auto p = Subprocess::start(options);
    if (!p.ok()) throw std::runtime_error(p.error().message);
    process_ = std::move(*p);
    for (int i = 0; i < 3000 && port_ == 0; ++i) {
      if (!process_.running()) throw std::runtime_error("agent exited: " + read_file(log_));
      if (fs::exists(port_file)) port_ = static_cast<uint16_t>(std::stoi(read_file(port_file)));
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  ~Agent() { process_.stop(std::chrono::milliseconds(3000)); }
  std::string url() const { return fmt::format("http://{}:{}", host_, port_); }
  uint16_t port() const { return port_; }
  const fs::path& dir() const { return dir_; }
  Subprocess& process() { return process_; }
  std::string log() const { return read_file(log_); }

  void stage(const std::string& model, const std::string& source) {
    auto r = post_stage(model, source);
    ASSERT_EQ(r.status, 202) << r.body;
  }
  http::ClientResponse post_stage(const std::string& model, const std::string& source,
                                  bool with_token = true) {
    auto r = http::fetch({.host = host_,
                          .port = port_,
                          .method = "POST",
                          .target = "/v1/stage",
                          .body = json({{"model", model}, {"source", source}}).dump(),
                          .headers = with_token ? headers_ : std::vector<http::Header>{}});
    EXPECT_TRUE(r.ok());
    return r.ok() ? *r : http::ClientResponse{};
  }
  http::ClientResponse get(const std::string& target, bool with_token = true) {
    auto r = http::fetch({.host = host_,
                          .port = port_,
                          .target = target,
                          .headers = with_token ? headers_ : std::vector<http::Header>{}});
    EXPECT_TRUE(r.ok());
    return r.ok() ? *r : http::ClientResponse{};
  }
  // Waits for ready or failed; returns the staging's JSON.
  json wait(const std::string& model, double timeout_s = 60) {
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    json p;
    while (std::chrono::steady_clock::now() < deadline) {
      auto r = http::fetch(
          {.host = host_, .port = port_, .target = "/v1/models/" + model, .headers = headers_});
      if (r.ok() && r->status == 200) {
        p = json::parse(r->body)["staging"];
        if (p["state"] == "ready" || p["state"] == "failed") return p;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ADD_FAILURE() << "staging " << model << " did not finish: " << p.dump() << "\n" << log();
    return p;
  }

 private:
  fs::path dir_, log_;
  Subprocess process_;
  std::string host_ = "127.0.0.1";
  uint16_t port_ = 0;
  std::vector<http::Header> headers_;
};

void expect_same_files(const Origin& origin, const fs::path& dir) {
  for (const auto& [name, bytes] : origin.files) {
    EXPECT_EQ(sha256_hex(read_file(dir / name)), sha256_hex(bytes)) << dir / name;
  }
}

// A model of two shards and a config; each seed gives other bytes (the
// cache is content-addressed: the same bytes are never fetched twice).
Origin& model_origin(Origin& o, size_t big = 6 << 20, uint32_t seed = 1) {
  o.files.clear();
  o.files["config.json"] =
      fmt::format(R"({{"architectures":["LlamaForCausalLM"],"seed":{}}})", seed);
  o.files["model-00001-of-00002.safetensors"] = random_bytes(big, seed * 2);
  o.files["model-00002-of-00002.safetensors"] = random_bytes(big / 2 + 12345, seed * 2 + 1);
  return o;
}

// Stages model "m" on every agent at once: each gets the whole model, and
// the origin sends about one copy (the rest goes between peers).
void stage_on_all_from_about_one_copy(Origin& origin,
                                      const std::vector<std::unique_ptr<Agent>>& agents) {
  for (auto& agent : agents) agent->stage("m", origin.url() + "/files/");
  uint64_t from_peers = 0;
  for (auto& agent : agents) {
    json p = agent->wait("m");
    ASSERT_EQ(p["state"], "ready") << p.dump() << agent->log();
    from_peers += p["bytes_peers"].get<uint64_t>();
    expect_same_files(origin, p["dir"].get<std::string>());
  }
  EXPECT_LE(origin.egress.load(), origin.total() * 105 / 100) << "peers got " << from_peers;
  EXPECT_GE(from_peers, origin.total() * (agents.size() - 1) * 95 / 100);
}

TEST(AgentProcess, ThreeAgentsFetchAboutOneCopyFromTheOrigin) {
  Origin origin;
  model_origin(origin, 8 << 20);
  origin.bytes_per_s = 8e6;  // the slow cross-region link
  Agent a("p2p-a"), b("p2p-b"), c("p2p-c");
  // Each knows the others (restart with peers now that the ports are known).
  std::vector<std::unique_ptr<Agent>> agents;
  std::vector<std::string> urls = {a.url(), b.url(), c.url()};
  std::vector<uint16_t> ports = {a.port(), b.port(), c.port()};
  a.process().stop();
  b.process().stop();
  c.process().stop();
  for (int i = 0; i < 3; ++i) {
    fs::remove_all(scratch_dir() / ("agent-p2p-" + std::to_string(i)));
    std::vector<std::string> args;
    for (int j = 0; j < 3; ++j)
      if (j != i) args.insert(args.end(), {"--peer", urls[j]});
    args.insert(args.end(), {"--self-url", urls[i]});
    // Peers present the internal token to each other.
    agents.push_back(std::make_unique<Agent>(
        "p2p-" + std::to_string(i), args,
        std::vector<std::string>{"LOADSTAR_TOKEN=p2p-test-token-0123456789"}, ports[i]));
  }
  stage_on_all_from_about_one_copy(origin, agents);
  EXPECT_GT(metric_in(agents[0]->get("/metrics").body, "loadstar_agent_served_bytes_total") +
                metric_in(agents[1]->get("/metrics").body, "loadstar_agent_served_bytes_total") +
                metric_in(agents[2]->get("/metrics").body, "loadstar_agent_served_bytes_total"),
            0);
}

// As the DaemonSet runs them: agents find each other through the Endpoints
// of their headless Service (ready addresses only) and follow it as agents
// come and go; N agents still fetch about one copy from the origin.
class AgentPeersOnKubernetes : public KubernetesTest {
 protected:
  // The API server refuses loopback addresses in Endpoints: the agents
  // listen on this machine's own address.
  void SetUp() override {
    KubernetesTest::SetUp();
    ip_ = non_loopback_ipv4();
    if (ip_.empty()) GTEST_SKIP() << "no non-loopback IPv4 address to put in Endpoints";
  }
  void endpoints(const std::vector<uint16_t>& ready, const std::vector<uint16_t>& not_ready) {
    // One subset per port (the agents share one address here).
    json subsets = json::array();
    for (uint16_t port : ready)
      subsets.push_back(
          {{"addresses", {{{"ip", ip_}}}}, {"ports", {{{"name", "http"}, {"port", port}}}}});
    for (uint16_t port : not_ready)
      subsets.push_back({{"notReadyAddresses", {{{"ip", ip_}}}},
                         {"ports", {{{"name", "http"}, {"port", port}}}}});
    apply(json({{"apiVersion", "v1"},
                {"kind", "Endpoints"},
                {"metadata", {{"name", "loadstar-agent-peers"}, {"namespace", ns_}}},
                {"subsets", subsets}})
              .dump());
  }
  std::string ip_;
  static double peers_of(Agent& agent) {
    return metric_in(agent.get("/metrics").body, "loadstar_agent_peers");
  }
  static bool eventually(const std::function<bool()>& check) {
    for (int i = 0; i < 200; ++i) {
      if (check()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return check();
  }
};

TEST_F(AgentPeersOnKubernetes, AgentsFindEachOtherThroughTheirServicesEndpoints) {
  Origin origin;
  model_origin(origin, 8 << 20, 7);
  origin.bytes_per_s = 8e6;
  std::vector<std::unique_ptr<Agent>> agents;
  for (int i = 0; i < 3; ++i) {
    const uint16_t port = free_port(ip_);
    agents.push_back(std::make_unique<Agent>(
        ns_ + "-" + std::to_string(i),
        std::vector<std::string>{"--host", ip_, "--peer-service", "loadstar-agent-peers",
                                 "--peer-port-name", "http", "--kubeconfig", g_kubeconfig, "-n",
                                 ns_},
        std::vector<std::string>{"LOADSTAR_TOKEN=endpoints-test-token-0123456789"}, port));
  }
  // No Endpoints yet: no peers, and the agent serves anyway.
  EXPECT_EQ(peers_of(*agents[0]), 0);
  // The three ready, and one that is not (never used: nothing listens there).
  endpoints({agents[0]->port(), agents[1]->port(), agents[2]->port()}, {1});
  for (auto& agent : agents)
    EXPECT_TRUE(eventually([&] { return peers_of(*agent) == 2; })) << agent->log();
  stage_on_all_from_about_one_copy(origin, agents);
  // An agent that leaves (its Pod deleted: Kubernetes drops its address)
  // is dropped by the others.
  endpoints({agents[0]->port(), agents[1]->port()}, {agents[2]->port()});
  EXPECT_TRUE(eventually([&] { return peers_of(*agents[0]) == 1; })) << agents[0]->log();
  EXPECT_NE(agents[0]->log().find("1 peer(s) from Endpoints"), std::string::npos);
}

TEST(AgentProcess, TheApiNeedsTheTokenAndSourcesCannotReachMetadataAddresses) {
  Origin origin;
  model_origin(origin, 1 << 20);
  const std::vector<std::string> env = {"LOADSTAR_TOKEN=guard-test-token-0123456789"};
  Agent agent("guarded", {}, env);
  // Without the token (or with another) nothing is staged or served.
  EXPECT_EQ(agent.post_stage("m", origin.url() + "/files/", false).status, 401);
  EXPECT_EQ(agent.get("/v1/models", false).status, 401);
  EXPECT_EQ(agent.get("/v1/blobs/sha256-00", false).status, 401);
  EXPECT_EQ(agent.get("/metrics", false).status, 401);
  EXPECT_EQ(agent.get("/health", false).status, 200);
  auto wrong = http::fetch({.port = agent.port(),
                            .target = "/v1/models",
                            .headers = {{"Authorization", "Bearer guard-test-token-0123456788"}}});
  ASSERT_TRUE(wrong.ok());
  EXPECT_EQ(wrong->status, 401);
  EXPECT_EQ(json::parse(agent.get("/v1/models").body)["stagings"].size(), 0u);

  // Cloud metadata addresses are refused however they are written: a
  // literal, a number that resolves to one, a redirect to one.
  for (const std::string& source :
       {std::string("http://169.254.169.254/latest/meta-data/"),
        std::string("http://2852039166/latest/meta-data/"), origin.url() + "/to-metadata/"}) {
    agent.stage("meta", source);
    json p = agent.wait("meta");
    EXPECT_EQ(p["state"], "failed") << source;
    EXPECT_NE(p["error"].get<std::string>().find("169.254.169.254 is link-local"),
              std::string::npos)
        << source << ": " << p.dump();
  }
  // The origin itself is fine.
  agent.stage("m", origin.url() + "/files/");
  EXPECT_EQ(agent.wait("m")["state"], "ready");
  const uint64_t egress = origin.egress.load();

  // An allow-list: only the Hub; a loopback origin and local files are
  // refused at once (403), and nothing starts.
  Agent strict("strict", {"--source-allow", "hf://", "--no-loopback-sources"}, env);
  auto refused = strict.post_stage("m", origin.url() + "/files/");
  EXPECT_EQ(refused.status, 403);
  EXPECT_NE(refused.body.find("not allowed on this agent (--source-allow: hf://)"),
            std::string::npos)
      << refused.body;
  EXPECT_EQ(strict.post_stage("etc", "file:///etc").status, 403);
  EXPECT_EQ(json::parse(strict.get("/v1/models").body)["stagings"].size(), 0u);
  // http:// allowed, loopback not: the fetch is refused at connect.
  Agent no_loopback("no-loopback", {"--source-allow", "http://", "--no-loopback-sources"}, env);
  no_loopback.stage("m", origin.url() + "/files/");
  json p = no_loopback.wait("m");
  EXPECT_EQ(p["state"], "failed");
  EXPECT_NE(p["error"].get<std::string>().find("is loopback"), std::string::npos) << p.dump();
  EXPECT_EQ(origin.egress.load(), egress);  // nothing was fetched

  // Off loopback, an agent without a token does not start.
  std::string output;
  EXPECT_EQ(run_loadstar({"agent", "--host", "0.0.0.0", "--port", "0", "--cache-dir",
                          (scratch_dir() / "agent-open").string()},
                         &output),
            2);
  EXPECT_NE(output.find("needs --token-file"), std::string::npos) << output;
}

TEST(AgentProcess, CorruptBytesAreRefetchedAndNeverPublished) {
  Origin origin;
  model_origin(origin);
  Agent agent("corrupt");
  origin.corrupt_next = 1;  // one bad response: detected by SHA-256, refetched
  agent.stage("once", origin.url() + "/files/");
  json p = agent.wait("once");
  ASSERT_EQ(p["state"], "ready") << p.dump();
  expect_same_files(origin, p["dir"].get<std::string>());
  EXPECT_EQ(scrape_metric(agent.port(), "loadstar_agent_corrupt_total", "origin"), 1);

  Origin bad;
  model_origin(bad, 6 << 20, 2);
  bad.corrupt_next = 1 << 30;  // the origin always lies
  agent.stage("always", bad.url() + "/files/");
  p = agent.wait("always");
  ASSERT_EQ(p["state"], "failed");
  EXPECT_NE(p["error"].get<std::string>().find("SHA-256"), std::string::npos) << p.dump();
  EXPECT_NE(p["error"].get<std::string>().find("nothing was published"), std::string::npos);
  EXPECT_FALSE(fs::exists(agent.dir() / "cache/models/always"));
}

TEST(AgentProcess, OriginErrorsRetryOrFailClearly) {
  Origin origin;
  model_origin(origin, 1 << 20);
  Agent agent("errors", {"--max-attempts", "3", "--stall-timeout", "0.5"});
  origin.fail_next = 2;  // two 500s: retried with backoff
  agent.stage("flaky", origin.url() + "/files/");
  EXPECT_EQ(agent.wait("flaky")["state"], "ready");
  EXPECT_GE(scrape_metric(agent.port(), "loadstar_agent_retries_total"), 2);

  model_origin(origin, 1 << 20, 3);
  origin.fail_status = 403;
  origin.fail_next = 1 << 30;
  agent.stage("forbidden", origin.url() + "/files/");
  json p = agent.wait("forbidden");
  EXPECT_EQ(p["state"], "failed");
  EXPECT_NE(p["error"].get<std::string>().find("answered 403"), std::string::npos) << p.dump();

  origin.fail_next = 0;
  agent.stage("missing", origin.url() + "/nothing-here/");
  p = agent.wait("missing");
  EXPECT_EQ(p["state"], "failed");
  EXPECT_NE(p["error"].get<std::string>().find("404"), std::string::npos) << p.dump();

  model_origin(origin, 1 << 20, 4);
  origin.stall = true;
  agent.stage("stalled", origin.url() + "/files/");
  p = agent.wait("stalled");
  origin.stall = false;
  EXPECT_EQ(p["state"], "failed");
  EXPECT_NE(p["error"].get<std::string>().find("no data for 0.5s"), std::string::npos) << p.dump();
  EXPECT_FALSE(fs::exists(agent.dir() / "cache/models/stalled"));
}

TEST(AgentProcess, KilledMidDownloadResumesWithoutRefetching) {
  Origin origin;
  model_origin(origin, 8 << 20);
  origin.bytes_per_s = 6e6;
  uint64_t before_kill = 0;
  fs::remove_all(scratch_dir() / "agent-resume");
  {
    Agent agent("resume", {"--connections", "2"});
    agent.stage("m", origin.url() + "/files/");
    for (int i = 0; i < 1000 && origin.egress < 4u << 20; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    ASSERT_GE(origin.egress.load(), 4u << 20);
    agent.process().signal(SIGKILL);
    agent.process().wait_for(std::chrono::milliseconds(3000));
    before_kill = origin.egress;
  }
  origin.bytes_per_s = 0;
  origin.egress = 0;
  Agent again("resume", {"--connections", "2"});
  again.stage("m", origin.url() + "/files/");
  json p = again.wait("m");
  ASSERT_EQ(p["state"], "ready") << p.dump();
  expect_same_files(origin, p["dir"].get<std::string>());
  EXPECT_GE(p["bytes_cached"].get<uint64_t>(), 2u << 20) << "killed after " << before_kill;
  EXPECT_LE(origin.egress.load(), origin.total() - p["bytes_cached"].get<uint64_t>() + 4096);
  EXPECT_GT(scrape_metric(again.port(), "loadstar_agent_resumed_bytes_total"), 0);
}

TEST(AgentProcess, BadBytesFromAPeerAreCaughtAndRefetched) {
  Origin origin;
  model_origin(origin, 2 << 20);
  Agent good("liar-src");
  good.stage("m", origin.url() + "/files/");
  ASSERT_EQ(good.wait("m")["state"], "ready");
  // The peer's disk rots after verification: it serves wrong bytes under a
  // digest it computes from them, so only the file's SHA-256 from the
  // origin's manifest can catch it.
  fs::path blobs = good.dir() / "cache/blobs";
  for (const auto& e : fs::directory_iterator(blobs)) {
    if (fs::file_size(e.path()) < (1u << 20)) continue;
    std::fstream f(e.path(), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(100);
    f.put('\x42');
  }
  Agent victim("liar-victim", {"--peer", good.url()});
  victim.stage("m", origin.url() + "/files/");
  json p = victim.wait("m");
  ASSERT_EQ(p["state"], "ready") << p.dump() << victim.log();
  expect_same_files(origin, p["dir"].get<std::string>());
  EXPECT_GE(scrape_metric(victim.port(), "loadstar_agent_corrupt_total", "peer"), 1);
}

TEST(AgentProcess, APeerThatVanishesMidChunkIsLeftForTheOrigin) {
  Origin origin;
  model_origin(origin, 3 << 20, 5);
  Origin peer;
  peer.files = origin.files;
  peer.vanishing_peer = true;
  Agent agent("vanishing", {"--peer", peer.url()});
  agent.stage("m", origin.url() + "/files/");
  json p = agent.wait("m");
  ASSERT_EQ(p["state"], "ready") << p.dump() << agent.log();
  expect_same_files(origin, p["dir"].get<std::string>());
  EXPECT_EQ(p["bytes_peers"], 0);
  EXPECT_GE(scrape_metric(agent.port(), "loadstar_agent_peer_failures_total"), 1);
}

TEST(AgentProcess, HuggingFaceProtocolWithTokenAndRedirect) {
  Origin hub;
  model_origin(hub, 1 << 20);
  hub.token = "hf_test_token";
  {
    Agent agent("hf-notoken", {"--hf-endpoint", hub.url()});
    agent.stage("tiny", "hf://org/tiny");
    json p = agent.wait("tiny");
    EXPECT_EQ(p["state"], "failed");
    EXPECT_NE(p["error"].get<std::string>().find("HF_TOKEN"), std::string::npos) << p.dump();
  }
  Agent agent("hf", {"--hf-endpoint", hub.url()}, {"HF_TOKEN=hf_test_token"});
  agent.stage("tiny", "hf://org/tiny");
  json p = agent.wait("tiny");
  ASSERT_EQ(p["state"], "ready") << p.dump() << agent.log();
  expect_same_files(hub, p["dir"].get<std::string>());
  EXPECT_FALSE(fs::exists(fs::path(p["dir"].get<std::string>()) / ".gitattributes"));
  EXPECT_EQ(agent.log().find("hf_test_token"), std::string::npos);
  // One file of a repository (a GGUF among quantizations): only it is staged.
  agent.stage("one", "hf://org/tiny/config.json");
  p = agent.wait("one");
  ASSERT_EQ(p["state"], "ready") << p.dump();
  size_t files = 0;
  for (const auto& entry : fs::recursive_directory_iterator(p["dir"].get<std::string>()))
    files += entry.is_regular_file() && !entry.path().filename().string().starts_with(".");
  EXPECT_EQ(files, 1u);
  EXPECT_TRUE(fs::exists(fs::path(p["dir"].get<std::string>()) / "config.json"));
  agent.stage("none", "hf://org/tiny/model-Q9.gguf");
  p = agent.wait("none");
  EXPECT_EQ(p["state"], "failed");
  EXPECT_NE(p["error"].get<std::string>().find("no file 'model-Q9.gguf'"), std::string::npos)
      << p.dump();
  // The Hub's file list is checked before anything is written.
  hub.bad_name = true;
  agent.stage("escape", "hf://org/tiny");
  p = agent.wait("escape");
  EXPECT_EQ(p["state"], "failed");
  EXPECT_NE(p["error"].get<std::string>().find("'..'"), std::string::npos) << p.dump();
  EXPECT_FALSE(fs::exists(agent.dir() / "escape"));
  EXPECT_FALSE(fs::exists(agent.dir() / "cache/escape"));
}

TEST(AgentProcess, StageCommandFollowsProgress) {
  Origin origin;
  model_origin(origin, 1 << 20);
  Agent agent("cli");
  std::string out;
  ASSERT_EQ(run_loadstar(
                {"stage", "m", "--source", origin.url() + "/files/", "--agent", agent.url()}, &out),
            0)
      << out;
  EXPECT_NE(out.find("ready: "), std::string::npos) << out;
  EXPECT_EQ(run_loadstar({"stage", "m", "--agent", agent.url()}, &out), 1);
  EXPECT_NE(out.find("'source'"), std::string::npos) << out;
  // Loading the staged directory through the fast loader, by the path
  // engines use: models/NAME/current points at the newest version.
  EXPECT_TRUE(fs::is_symlink(agent.dir() / "cache/models/m/current"));
  auto [rc, listing] =
      run_shell(std::string(LOADSTAR_BIN) + " load --raw " +
                (agent.dir() / "cache/models/m/current").string() + "/*.safetensors");
  EXPECT_EQ(rc, 0) << listing;
  EXPECT_NE(listing.find("from 2 files"), std::string::npos) << listing;
}

}  // namespace
}  // namespace loadstar::testing

namespace loadstar::testing {
namespace {

// The files of a model directory, by path relative to it.
std::map<std::string, std::string> files_of(const fs::path& model) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(model))
    if (e.is_regular_file()) out[fs::relative(e.path(), model).string()] = read_file(e.path());
  return out;
}

// `loadstar up` serving `chat` (one engine-sim replica) from the Model
// `remote`, whose source is `origin`'s /files/.
std::unique_ptr<Up> up_from_origin(const Origin& origin, std::vector<std::string> args = {}) {
  return Up::start(fmt::format(R"(apiVersion: loadstar.dev/v1alpha1
kind: Model
metadata: {{name: remote}}
spec: {{source: "{}/files/"}}
---
apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {{name: chat}}
spec:
  model: remote
  replicas: 1
  engine: {{name: engine-sim, args: ["--time-scale", "10"]}}
)",
                               origin.url()),
                   std::move(args));
}

// `loadstar up` stages an http:// model through its embedded agent, runs it,
// and `loadstar stage NAME` there takes the source from the Model resource.
TEST(AgentInUp, StagesAnHttpModelThenServesIt) {
  Origin origin;
  origin.files = files_of(synth_model("agent-up", "16MiB"));
  origin.bytes_per_s = 40e6;
  auto up = up_from_origin(origin);
  // While the bytes come, the replica is Pending and says how far staging is.
  bool saw_staging = false;
  for (int i = 0; i < 200 && !saw_staging; ++i) {
    saw_staging = up->replicas_json().find("staging http://") != std::string::npos;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_TRUE(saw_staging) << up->replicas_json();
  up->wait_ready("chat", 1);
  auto r = up->post("/v1/completions", R"({"model":"chat","prompt":"hi","max_tokens":3})");
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_LE(origin.egress.load(), origin.total());
  // The running engine's model is in use: the agent will not evict it.
  json inventory;
  for (int i = 0; i < 100; ++i) {
    auto models = http::fetch({.port = up->admin_port(), .target = "/agent/v1/models"});
    ASSERT_TRUE(models.ok());
    inventory = json::parse(models->body);
    if (!inventory["models"].empty() && inventory["models"][0]["in_use"] == 1) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_EQ(inventory["models"].size(), 1u) << inventory.dump();
  EXPECT_EQ(inventory["models"][0]["model"], "remote");
  EXPECT_EQ(inventory["models"][0]["in_use"], 1) << inventory.dump();
  auto evict = http::fetch(
      {.port = up->admin_port(), .method = "DELETE", .target = "/agent/v1/models/remote"});
  ASSERT_TRUE(evict.ok());
  EXPECT_EQ(evict->status, 409) << evict->body;
  EXPECT_NE(evict->body.find("in use"), std::string::npos);
  std::string out;
  ASSERT_EQ(run_loadstar({"stage", "remote", "--agent",
                          fmt::format("http://127.0.0.1:{}/agent", up->admin_port())},
                         &out),
            0)
      << out;
  EXPECT_NE(out.find("ready: " + (up->data_dir() / "agent/models/remote").string()),
            std::string::npos)
      << out;
  EXPECT_EQ(run_loadstar({"stage", "nope", "--agent",
                          fmt::format("http://127.0.0.1:{}/agent", up->admin_port())},
                         &out),
            1);
  EXPECT_NE(out.find("no Model 'nope'"), std::string::npos) << out;
}

// An unpinned source whose bytes change under the same URI: `loadstar up`
// resolves it again, rolls the new bytes out as a new revision, and the
// replicas it leaves ran the old version's directory.
TEST(AgentInUp, NewBytesBehindAnUnchangedSourceRollOutAsANewRevision) {
  Origin origin;
  origin.replace_files(files_of(synth_model("version-a", "4MiB")));
  auto up = up_from_origin(origin, {"--model-resolve-interval", "1"});
  up->wait_ready("chat", 1);
  auto agent_models = [&] {
    auto r = http::fetch({.port = up->admin_port(), .target = "/agent/v1/models"});
    return r.ok() ? json::parse(r->body, nullptr, false) : json();
  };
  const std::string first = agent_models()["models"][0]["version"];
  const fs::path versions = up->data_dir() / "agent/models/remote";
  ASSERT_TRUE(fs::exists(versions / first / "model.safetensors"));
  auto cli = [&](std::vector<std::string> args, std::string* out) {
    args.push_back("--admin-port");
    args.push_back(std::to_string(up->admin_port()));
    return run_loadstar(args, out);
  };
  std::string out;
  ASSERT_EQ(cli({"rollout", "history", "chat"}, &out), 0) << out;
  EXPECT_NE(out.find("version " + first), std::string::npos) << out;

  origin.replace_files(files_of(synth_model("version-b", "6MiB")));
  // Revision 2 replaces the replica: one ready replica at revision 2.
  bool rolled = false;
  for (int i = 0; i < 300 && !rolled; ++i) {
    const json replicas = json::parse(up->replicas_json(), nullptr, false);
    rolled = replicas.is_object() && replicas["items"].size() == 1 &&
             replicas["items"][0]["revision"] == 2 && replicas["items"][0]["state"] == "Ready";
    if (!rolled) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(rolled) << up->replicas_json() << up->log();
  const std::string second = agent_models()["models"][0]["version"];
  EXPECT_NE(second, first);
  EXPECT_EQ(fs::file_size(versions / second / "model.safetensors"),
            origin.files.at("model.safetensors").size());
  ASSERT_EQ(cli({"rollout", "history", "chat"}, &out), 0) << out;
  EXPECT_NE(out.find("version " + second), std::string::npos) << out;
  auto r = up->post("/v1/completions", R"({"model":"chat","prompt":"hi","max_tokens":3})");
  EXPECT_EQ(r.status, 200) << r.body;
  // What a Pod's stage init container runs: the replaced version is still
  // held, and one the source no longer has is refused, saying so.
  const std::string agent = fmt::format("http://127.0.0.1:{}/agent", up->admin_port());
  ASSERT_EQ(run_loadstar({"stage", "remote", "--version", first, "--agent", agent}, &out), 0)
      << out;
  EXPECT_NE(out.find("ready: " + (versions / first).string()), std::string::npos) << out;
  EXPECT_EQ(
      run_loadstar({"stage", "remote", "--version", "0123456789abcdef", "--agent", agent}, &out),
      1);
  EXPECT_NE(out.find("now holds version " + second + ", not 0123456789abcdef"), std::string::npos)
      << out;
  // Nothing changed at the origin since: no third revision.
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));
  EXPECT_EQ(json::parse(up->replicas_json())["items"][0]["revision"], 2);
}

}  // namespace
}  // namespace loadstar::testing

namespace loadstar::testing {
namespace {

// HTTPS through Debian's nginx with a certificate made for the test: the
// agent verifies it against SSL_CERT_FILE, and refuses it without.
TEST(AgentProcess, StagesOverHttpsFromNginxAndVerifiesTheCertificate) {
  const fs::path dir = scratch_dir() / "tls";
  fs::remove_all(dir);
  fs::create_directories(dir / "root/m");
  Origin files;
  model_origin(files, 2 << 20, 6);
  files.files["model.safetensors.index.json"] =
      R"({"weight_map":{"a":"model-00001-of-00002.safetensors",)"
      R"("b":"model-00002-of-00002.safetensors"}})";
  for (const auto& [name, bytes] : files.files)
    std::ofstream(dir / "root/m" / name, std::ios::binary) << bytes;
  const uint16_t port = free_port();
  auto nginx = start_https_nginx(dir, port);
  ASSERT_TRUE(nginx.ok()) << nginx.error().message;
  const std::string url = fmt::format("https://127.0.0.1:{}/m/", port);
  {
    Agent untrusting("tls-untrusting");
    untrusting.stage("m", url);
    json p = untrusting.wait("m");
    EXPECT_EQ(p["state"], "failed");
    EXPECT_NE(p["error"].get<std::string>().find("certificate verify failed"), std::string::npos)
        << p.dump();
    EXPECT_LT(p["elapsed_seconds"].get<double>(), 2) << "not retried";
  }
  Agent agent("tls", {}, {"SSL_CERT_FILE=" + (dir / "cert.pem").string()});
  agent.stage("m", url);
  json p = agent.wait("m");
  ASSERT_EQ(p["state"], "ready") << p.dump() << agent.log() << read_file(dir / "error.log");
  expect_same_files(files, p["dir"].get<std::string>());
  nginx->stop(std::chrono::milliseconds(2000));
}

}  // namespace
}  // namespace loadstar::testing

namespace loadstar::testing {
namespace {

std::string remote_service(const std::string& origin_url, int warm_nodes) {
  return fmt::format(R"(apiVersion: loadstar.dev/v1alpha1
kind: Model
metadata: {{name: remote}}
spec: {{source: "{}/files/"}}
---
apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {{name: chat}}
spec:
  model: remote
  replicas: 1
  minReplicas: 0
  idleTimeout: 1h
  warmNodes: {}
  engine: {{name: engine-sim, args: ["--time-scale", "10"]}}
)",
                     origin_url, warm_nodes);
}

// A service that may sit at zero keeps its weights staged: they are fetched
// before the first request, which then pays only the engine's load.
TEST(AgentInUp, WarmWeightsAreStagedBeforeTheFirstRequest) {
  Origin origin;
  model_origin(origin, 1 << 20, 7);
  origin.files["model.safetensors.index.json"] =
      R"({"weight_map":{"a":"model-00001-of-00002.safetensors",)"
      R"("b":"model-00002-of-00002.safetensors"}})";
  {
    auto up = Up::start(remote_service(origin.url(), 1));
    json models;
    for (int i = 0; i < 500; ++i) {
      auto r = http::fetch({.port = up->admin_port(), .target = "/agent/v1/models"});
      ASSERT_TRUE(r.ok());
      models = json::parse(r->body);
      if (!models["models"].empty()) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ASSERT_EQ(models["models"].size(), 1u) << models.dump();
    EXPECT_EQ(models["models"][0]["in_use"], 0);  // no replica: staged, idle
    EXPECT_EQ(json::parse(up->replicas_json())["items"].size(), 0u);
    const uint64_t staged = origin.egress;
    EXPECT_GE(staged, origin.total() - 4096);
    origin.egress = 0;
  }
  {  // warmNodes: 0 -- nothing moves until a replica needs it
    auto up = Up::start(remote_service(origin.url(), 0));
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    auto r = http::fetch({.port = up->admin_port(), .target = "/agent/v1/models"});
    ASSERT_TRUE(r.ok());
    EXPECT_TRUE(json::parse(r->body)["stagings"].empty()) << r->body;
    EXPECT_EQ(origin.egress.load(), 0u);
  }
}

}  // namespace
}  // namespace loadstar::testing
