// The gateway as a front door under abuse: more connections than it may
// hold, clients that send their headers slowly or too many of them.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <thread>

#include <nlohmann/json.hpp>

#include "common/digest.h"
#include "support.h"

namespace loadstar::testing {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

std::string chat_body(int max_tokens, bool stream) {
  return json({{"model", "chat"},
               {"messages", {{{"role", "user"}, {"content", "Tell me about lighthouses."}}}},
               {"max_tokens", max_tokens},
               {"ignore_eos", true},
               {"stream", stream}})
      .dump();
}

// A raw TCP connection to 127.0.0.1:port, for clients no HTTP library writes.
class RawClient {
 public:
  explicit RawClient(uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0)
      throw std::runtime_error("connect failed");
  }
  ~RawClient() { ::close(fd_); }
  int fd() const { return fd_; }
  void send(std::string_view bytes) {
    while (!bytes.empty()) {
      const ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n <= 0) return;
      bytes.remove_prefix(static_cast<size_t>(n));
    }
  }
  // Reads until the server closes the connection or `timeout_s` passes;
  // returns what came and whether it was closed.
  std::pair<std::string, bool> read_until_closed(double timeout_s) {
    std::string data;
    const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_s);
    while (Clock::now() < deadline) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      char buf[4096];
      const ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
      if (n <= 0) return {data, true};
      data.append(buf, static_cast<size_t>(n));
    }
    return {data, false};
  }

 private:
  int fd_ = -1;
};

TEST(FrontDoor, PastItsConnectionLimitTheGatewayAnswers503WithRetryAfter) {
  auto up = Up::start(quickstart(1, R"("--time-scale", "1")"), {"--max-connections", "6"});
  up->wait_ready("chat", 1);
  // Six streams of 300 tokens (seconds each at time scale 1) hold the six
  // connections the gateway may serve.
  std::atomic<int> ok{0}, started{0};
  std::vector<std::thread> streams;
  for (int i = 0; i < 6; ++i)
    streams.emplace_back([&] {
      auto r = http::fetch_streaming({.port = up->port(),
                                      .method = "POST",
                                      .target = "/v1/chat/completions",
                                      .body = chat_body(300, true),
                                      .timeout_s = 60},
                                     [&, first = true](std::string_view) mutable {
                                       if (first) ++started;
                                       first = false;
                                       return true;
                                     });
      ok += r.ok() && r->status == 200;
    });
  // Once all six are streaming, knock.
  for (auto wait = Clock::now() + std::chrono::seconds(10); started < 6 && Clock::now() < wait;)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(started, 6);
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  std::vector<int> refused_status;
  std::vector<std::string> retry_after;
  while (Clock::now() < deadline && refused_status.size() < 3) {
    auto r = http::fetch({.port = up->port(),
                          .method = "POST",
                          .target = "/v1/chat/completions",
                          .body = chat_body(2, false),
                          .timeout_s = 5});
    if (r.ok() && r->status == 503) {
      refused_status.push_back(r->status);
      retry_after.emplace_back(r->header("Retry-After"));
      EXPECT_NE(r->body.find("limit of 6 connections"), std::string::npos) << r->body;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  for (auto& t : streams) t.join();
  EXPECT_EQ(ok, 6);  // the streams held lost nothing
  ASSERT_EQ(refused_status.size(), 3u);
  for (const auto& value : retry_after) EXPECT_EQ(value, "1");
  // Once the streams are done there is room again.
  EXPECT_EQ(up->post("/v1/chat/completions", chat_body(2, false)).status, 200);
  EXPECT_GE(scrape_metric(up->port(), "loadstar_gateway_client_connections_refused_total"), 3);
  EXPECT_EQ(scrape_metric(up->port(), "loadstar_gateway_client_connections_limit"), 6);
}

TEST(FrontDoor, AnEngineThatStallsMidStreamEndsItWithAnErrorEvent) {
  auto up = Up::start(quickstart(1, R"("--time-scale", "1")"), {"--upstream-idle-timeout", "1"});
  up->wait_ready("chat", 1);
  const json replicas = json::parse(up->replicas_json())["items"];
  const pid_t engine = replicas[0]["pid"].get<pid_t>();
  std::string body;
  std::atomic<int> chunks{0};
  std::optional<Result<http::ClientResponse>> result;
  std::thread client([&] {
    result = http::fetch_streaming({.port = up->port(),
                                    .method = "POST",
                                    .target = "/v1/chat/completions",
                                    .body = chat_body(2000, true),
                                    .timeout_s = 30},
                                   [&](std::string_view data) {
                                     body.append(data);
                                     ++chunks;
                                     return true;
                                   });
  });
  for (auto until = Clock::now() + std::chrono::seconds(10); chunks < 3 && Clock::now() < until;)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  // The engine hangs (stopped, its socket open): no byte, no close.
  ::kill(engine, SIGSTOP);
  const auto stalled = Clock::now();
  client.join();
  const double waited = std::chrono::duration<double>(Clock::now() - stalled).count();
  ::kill(engine, SIGCONT);
  ASSERT_TRUE(result && result->ok());
  EXPECT_EQ((*result)->status, 200);  // the stream had begun
  EXPECT_NE(body.find("failed mid-stream: idle timeout"), std::string::npos) << body;
  EXPECT_NE(body.rfind("data: [DONE]"), std::string::npos);
  // The watchdog is renewed at most once a second (not per event), so the
  // stream ends between 0 and 2 timeouts after the engine's last byte.
  EXPECT_LT(waited, 5);
  // The engine, resumed, serves again.
  EXPECT_EQ(up->post("/v1/chat/completions", chat_body(3, false)).status, 200);
}

// The socket inodes a process holds open.
std::set<std::string> socket_inodes(pid_t pid) {
  std::set<std::string> out;
  std::error_code ec;
  for (const auto& fd : std::filesystem::directory_iterator(fmt::format("/proc/{}/fd", pid), ec)) {
    std::error_code lec;
    const std::string target = std::filesystem::read_symlink(fd.path(), lec).string();
    if (target.starts_with("socket:")) out.insert(target);
  }
  return out;
}

TEST(FrontDoor, EnginesHoldNoneOfTheGatewaysSockets) {
  // Asio's sockets are not close-on-exec: without closing them in the
  // child, an engine would keep the gateway's listening sockets (and any
  // client connection open at its start) alive.
  auto up = Up::start(quickstart(1));
  up->wait_ready("chat", 1);
  const pid_t engine = json::parse(up->replicas_json())["items"][0]["pid"].get<pid_t>();
  const auto ours = socket_inodes(up->process().pid());
  const auto theirs = socket_inodes(engine);
  ASSERT_FALSE(ours.empty());
  ASSERT_FALSE(theirs.empty());  // its own listener
  for (const auto& inode : theirs) EXPECT_EQ(ours.count(inode), 0u) << inode;
}

TEST(FrontDoor, SlowOrOversizedHeadersAreCutOff) {
  auto up = Up::start(quickstart(1), {"--client-header-timeout", "1"});
  up->wait_ready("chat", 1);
  // Slowloris: a request line and one header, then nothing. Closed after
  // the header timeout, not the two-minute keep-alive idle time.
  RawClient slow(up->port());
  const auto start = Clock::now();
  slow.send("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n");
  auto [slow_data, slow_closed] = slow.read_until_closed(10);
  const double took = std::chrono::duration<double>(Clock::now() - start).count();
  EXPECT_TRUE(slow_closed);
  EXPECT_GT(took, 0.9);
  EXPECT_LT(took, 5);
  // Headers over 64 KiB: 431, in OpenAI's error shape.
  RawClient big(up->port());
  big.send("GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Filler: " + std::string(70 * 1024, 'a') +
           "\r\n\r\n");
  auto [big_data, big_closed] = big.read_until_closed(10);
  EXPECT_EQ(big_data.rfind("HTTP/1.1 431", 0), 0u) << big_data.substr(0, 200);
  EXPECT_NE(big_data.find("request headers are over the limit"), std::string::npos);
  // A quiet keep-alive connection is not a slow one: it may wait longer
  // than the header timeout for its next request.
  RawClient quiet(up->port());
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  quiet.send("GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
  auto [quiet_data, quiet_closed] = quiet.read_until_closed(1);
  EXPECT_EQ(quiet_data.rfind("HTTP/1.1 200", 0), 0u) << quiet_data;
}

// The server parses requests from its own reads: a request may come in any
// pieces, several may come in one read, and only a wait for more bytes arms
// a deadline. A chunked body is read; framing that a proxy in front could
// read differently (request smuggling) is refused.
TEST(FrontDoor, RequestsInPiecesOrPipelinedAreAnswered) {
  auto up = Up::start(quickstart(1), {"--client-header-timeout", "1"});
  up->wait_ready("chat", 1);
  const std::string body = chat_body(3, false);
  const std::string request = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: " +
                              std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
  // Cut within the request line, within a header, at the blank line and
  // within the body, each piece a separate read (well within the timeout).
  RawClient pieces(up->port());
  size_t at = 0;
  for (size_t cut :
       {size_t{7}, size_t{30}, request.find("\r\n\r\n") + 2, request.size() - 10, request.size()}) {
    pieces.send(std::string_view(request).substr(at, cut - at));
    at = cut;
    std::this_thread::sleep_for(std::chrono::milliseconds(150));
  }
  auto [piece_data, piece_closed] = pieces.read_until_closed(10);
  EXPECT_EQ(piece_data.rfind("HTTP/1.1 200", 0), 0u) << piece_data.substr(0, 300);
  EXPECT_NE(piece_data.find("chat.completion"), std::string::npos);
  // Three requests in one write: three answers, in order, on one connection.
  RawClient pipelined(up->port());
  pipelined.send("GET /health HTTP/1.1\r\nHost: x\r\n\r\n" +
                 request.substr(0, request.find("Connection")) + "\r\n" + body +
                 "GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  auto [pipe_data, pipe_closed] = pipelined.read_until_closed(10);
  EXPECT_TRUE(pipe_closed);
  const size_t health = pipe_data.find("HTTP/1.1 200");
  const size_t chat = pipe_data.find("chat.completion");
  const size_t models = pipe_data.find("\"object\":\"list\"");
  EXPECT_EQ(health, 0u) << pipe_data.substr(0, 300);
  EXPECT_TRUE(chat != std::string::npos && models != std::string::npos && health < chat &&
              chat < models)
      << pipe_data;
  // An answer to HEAD has no body: the next answer follows its head.
  RawClient head(up->port());
  head.send(
      "HEAD /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
      "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  auto [head_data, head_closed] = head.read_until_closed(10);
  const size_t head_end = head_data.find("\r\n\r\n");
  ASSERT_NE(head_end, std::string::npos) << head_data;
  EXPECT_EQ(head_data.compare(head_end + 4, 9, "HTTP/1.1 "), 0) << head_data;
  // A header sent whole and a body that stops short, then the client
  // closes its side: 400, not a hang.
  RawClient cut(up->port());
  cut.send(request.substr(0, request.size() - 10));
  ::shutdown(cut.fd(), SHUT_WR);
  auto [cut_data, cut_closed] = cut.read_until_closed(10);
  EXPECT_EQ(cut_data.rfind("HTTP/1.1 400", 0), 0u) << cut_data.substr(0, 300);
  EXPECT_NE(cut_data.find("partial message"), std::string::npos);
  // A chunked body, cut across a chunk's size line.
  RawClient chunked(up->port());
  const std::string chunks = fmt::format("{:x}\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n", 10,
                                         body.substr(0, 10), body.size() - 10, body.substr(10));
  chunked.send(
      "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
      "Connection: close\r\n\r\n" +
      chunks.substr(0, 18));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  chunked.send(chunks.substr(18));
  auto [chunked_data, chunked_closed] = chunked.read_until_closed(10);
  EXPECT_EQ(chunked_data.rfind("HTTP/1.1 200", 0), 0u) << chunked_data.substr(0, 300);
  EXPECT_NE(chunked_data.find("chat.completion"), std::string::npos);
  // Both framings: refused, and the bytes after the head are not read as
  // a request of their own.
  RawClient smuggle(up->port());
  smuggle.send(
      "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
      "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n");
  auto [smuggle_data, smuggle_closed] = smuggle.read_until_closed(10);
  EXPECT_TRUE(smuggle_closed);
  EXPECT_EQ(smuggle_data.rfind("HTTP/1.1 400", 0), 0u) << smuggle_data.substr(0, 300);
  EXPECT_NE(smuggle_data.find("both Content-Length and Transfer-Encoding"), std::string::npos);
  EXPECT_EQ(smuggle_data.find("\"object\":\"list\""), std::string::npos) << smuggle_data;
  // A chunk over the body limit is refused by its size line, before its
  // data; a head with bare LF line ends is refused at once, not after the
  // header timeout.
  RawClient huge_chunk(up->port());
  huge_chunk.send(
      "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
      "7fffffff\r\n");
  auto [huge_data, huge_closed] = huge_chunk.read_until_closed(10);
  EXPECT_EQ(huge_data.rfind("HTTP/1.1 413", 0), 0u) << huge_data.substr(0, 300);
  RawClient bare_lf(up->port());
  bare_lf.send("GET /health HTTP/1.1\nHost: x\n");
  auto [lf_data, lf_closed] = bare_lf.read_until_closed(10);
  EXPECT_EQ(lf_data.rfind("HTTP/1.1 400", 0), 0u) << lf_data.substr(0, 300);
  EXPECT_NE(lf_data.find("bare LF"), std::string::npos);
  // The CRLF some clients send after a body is not a request of its own.
  RawClient trailing(up->port());
  trailing.send(request.substr(0, request.find("Connection")) + "\r\n" + body +
                "\r\nGET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  auto [trailing_data, trailing_closed] = trailing.read_until_closed(10);
  EXPECT_NE(trailing_data.find("chat.completion"), std::string::npos) << trailing_data;
  EXPECT_EQ(trailing_data.find("HTTP/1.1 400"), std::string::npos) << trailing_data;
  EXPECT_NE(trailing_data.rfind("HTTP/1.1 200"), 0u) << trailing_data;  // two answers
}

// A self-signed certificate for 127.0.0.1 as DIR/NAME.crt and DIR/NAME.key.
void make_certificate(const std::filesystem::path& dir, const std::string& name) {
  auto [rc, out] = run_shell(
      "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 "
      "-addext subjectAltName=IP:127.0.0.1 -keyout " +
      (dir / (name + ".key")).string() + " -out " + (dir / (name + ".crt")).string());
  ASSERT_EQ(rc, 0) << out;
}

std::string read_all(const std::filesystem::path& p) {
  std::ifstream in(p);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

TEST(FrontDoor, ServesHttpsAndPicksUpARotatedCertificate) {
  namespace fs = std::filesystem;
  const fs::path dir = scratch_dir() / "tls";
  fs::create_directories(dir);
  make_certificate(dir, "one");
  make_certificate(dir, "two");
  fs::copy_file(dir / "one.crt", dir / "server.crt", fs::copy_options::overwrite_existing);
  fs::copy_file(dir / "one.key", dir / "server.key", fs::copy_options::overwrite_existing);
  auto up = Up::start(quickstart(1), {"--tls-cert", (dir / "server.crt").string(), "--tls-key",
                                      (dir / "server.key").string()});
  up->wait_ready("chat", 1);
  auto https = [&](const std::string& ca, bool stream) {
    return http::fetch({.port = up->port(),
                        .method = "POST",
                        .target = "/v1/chat/completions",
                        .body = chat_body(5, stream),
                        .headers = {{"Content-Type", "application/json"}},
                        .timeout_s = 10,
                        .tls = true,
                        .ca_pem = read_all(dir / (ca + ".crt"))});
  };
  auto answer = https("one", false);
  ASSERT_TRUE(answer.ok()) << answer.error().message;
  EXPECT_EQ(answer->status, 200);
  auto streamed = https("one", true);
  ASSERT_TRUE(streamed.ok()) << streamed.error().message;
  EXPECT_NE(streamed->body.find("data: [DONE]"), std::string::npos);
  // Plain HTTP gets no answer; a client that trusts another CA refuses.
  auto plain = http::fetch({.port = up->port(), .target = "/health", .timeout_s = 5});
  EXPECT_FALSE(plain.ok() && plain->status == 200);
  EXPECT_FALSE(https("two", false).ok());
  // Rotation, as cert-manager does it: new files in place; new connections
  // get the new certificate within about a second, no restart.
  fs::copy_file(dir / "two.key", dir / "server.key.tmp");
  fs::copy_file(dir / "two.crt", dir / "server.crt.tmp");
  fs::rename(dir / "server.key.tmp", dir / "server.key");
  fs::rename(dir / "server.crt.tmp", dir / "server.crt");
  bool rotated = false;
  for (auto until = Clock::now() + std::chrono::seconds(10); !rotated && Clock::now() < until;) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    auto r = https("two", false);
    rotated = r.ok() && r->status == 200;
  }
  EXPECT_TRUE(rotated) << up->log();
  EXPECT_FALSE(https("one", false).ok());
}

TEST(FrontDoor, AnHttpsRouteBackendIsReachedAndVerified) {
  namespace fs = std::filesystem;
  const fs::path dir = scratch_dir() / "tls-backend";
  fs::create_directories(dir);
  make_certificate(dir, "backend");
  make_certificate(dir, "other");
  // The "hosted API": another gateway, over HTTPS.
  auto hosted = Up::start(quickstart(1), {"--tls-cert", (dir / "backend.crt").string(), "--tls-key",
                                          (dir / "backend.key").string()});
  hosted->wait_ready("chat", 1);
  const std::string url = fmt::format("https://127.0.0.1:{}/v1", hosted->port());
  auto front =
      Up::start(fmt::format(R"(apiVersion: loadstar.dev/v1alpha1
kind: Route
metadata: {{name: hosted}}
spec:
  backends: [{{url: "{0}", model: chat, caFile: "{1}"}}]
---
apiVersion: loadstar.dev/v1alpha1
kind: Route
metadata: {{name: impostor}}
spec:
  backends: [{{url: "{0}", model: chat, caFile: "{2}"}}]
)",
                            url, (dir / "backend.crt").string(), (dir / "other.crt").string()));
  auto ask = [&](const std::string& model, bool stream) {
    json body = json::parse(chat_body(5, stream));
    body["model"] = model;
    return front->post("/v1/chat/completions", body.dump());
  };
  auto answer = ask("hosted", false);
  EXPECT_EQ(answer.status, 200) << answer.body << front->log();
  EXPECT_EQ(json::parse(answer.body)["usage"]["completion_tokens"], 5);
  auto streamed = ask("hosted", true);
  EXPECT_EQ(streamed.status, 200);
  EXPECT_NE(streamed.body.find("data: [DONE]"), std::string::npos);
  // A backend whose certificate the given CA did not sign is not trusted.
  auto refused = ask("impostor", false);
  EXPECT_EQ(refused.status, 502);
  EXPECT_NE(refused.body.find("certificate verify failed"), std::string::npos) << refused.body;
  // A bad caFile is an apply-time error only for its shape; http:// urls
  // take none.
  std::string output;
  const fs::path bad = dir / "bad-route.yaml";
  std::ofstream(bad) << R"(apiVersion: loadstar.dev/v1alpha1
kind: Route
metadata: {name: r}
spec:
  backends: [{url: "http://127.0.0.1:9", caFile: /x.pem}]
)";
  EXPECT_NE(run_loadstar({"validate", "-f", bad.string()}, &output), 0);
  EXPECT_NE(output.find("caFile: only for an https:// url"), std::string::npos) << output;
}

// Debian's redis-server on a free loopback port, no persistence.
class RedisServer {
 public:
  RedisServer() {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const int probe = ::socket(AF_INET, SOCK_STREAM, 0);
    socklen_t len = sizeof(addr);
    ::bind(probe, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    ::getsockname(probe, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    ::close(probe);
    ProcessOptions options;
    options.argv = {"/usr/bin/redis-server",
                    "--port",
                    std::to_string(port_),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no"};
    options.output_path = (scratch_dir() / fmt::format("redis-{}.log", port_)).string();
    auto p = Subprocess::start(options);
    if (!p.ok()) throw std::runtime_error(p.error().message);
    process_ = std::move(*p);
    for (auto until = Clock::now() + std::chrono::seconds(10); Clock::now() < until;) {
      try {
        RawClient c(port_);
        c.send("PING\r\n");
        // The reply arrives, then the connection stays open: read briefly.
        if (c.read_until_closed(0.2).first.starts_with("+PONG")) return;
      } catch (const std::exception&) {
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    throw std::runtime_error("redis-server did not answer");
  }
  uint16_t port() const { return port_; }
  Subprocess& process() { return process_; }

 private:
  uint16_t port_ = 0;
  Subprocess process_;
};

TEST(FrontDoor, TenantLimitsHoldAcrossGatewaysThroughRedisAndDegradeWithoutIt) {
  RedisServer redis;
  const std::string url = fmt::format("redis://127.0.0.1:{}", redis.port());
  const std::string tenant = fmt::format(R"(---
apiVersion: loadstar.dev/v1alpha1
kind: Tenant
metadata: {{name: team-a}}
spec:
  apiKeys: [{{name: ci, sha256: {}}}]
  limits: {{requestsPerMinute: 4}}
)",
                                         sha256_hex("sk-a"));
  // Two front doors (two `loadstar up`, each its own gateway) sharing Redis.
  auto a = Up::start(quickstart(1) + tenant, {"--redis", url});
  auto b = Up::start(quickstart(1) + tenant, {"--redis", url});
  a->wait_ready("chat", 1);
  b->wait_ready("chat", 1);
  const std::vector<http::Header> key = {{"Authorization", "Bearer sk-a"}};
  auto call = [&](Up& up) { return up.post("/v1/chat/completions", chat_body(2, false), key); };
  // Four requests a minute for the tenant, wherever they land.
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(call(*a).status, 200);
    auto r = call(*b);
    EXPECT_EQ(r.status, 200);
  }
  auto limited = call(*a);
  EXPECT_EQ(limited.status, 429) << limited.body;
  EXPECT_EQ(limited.header("x-ratelimit-remaining-requests"), "0");
  EXPECT_EQ(call(*b).status, 429);
  EXPECT_EQ(scrape_metric(a->port(), "loadstar_gateway_shared_limits_up"), 1);
  // Redis gone: serving goes on under each gateway's own limits, and the
  // metric says so.
  redis.process().signal(SIGKILL);
  redis.process().wait_for(std::chrono::seconds(5));
  EXPECT_EQ(call(*a).status, 200);
  EXPECT_EQ(scrape_metric(a->port(), "loadstar_gateway_shared_limits_up"), 0);
  EXPECT_GE(scrape_metric(a->port(), "loadstar_gateway_shared_limits_errors_total"), 1);
}

// Prefix affinity with more than one gateway: a prompt sent through one
// gateway and again through another goes to the same replica, because the
// gateways share their picks through Redis.
TEST(FrontDoor, GatewaysShareWherePromptsWentThroughRedis) {
  RedisServer redis;
  auto up =
      Up::start(quickstart(4, R"("--time-scale", "20")"),
                {"--gateways", "2", "--redis", fmt::format("redis://127.0.0.1:{}", redis.port())});
  up->wait_ready("chat", 4);
  const std::string log = up->log();
  const auto at = log.find("gateway 2:  http://127.0.0.1:");
  ASSERT_NE(at, std::string::npos) << log;
  const auto second = static_cast<uint16_t>(std::stoi(log.substr(at + 29)));
  auto send = [&](uint16_t port, const std::string& prompt) {
    json body = {{"model", "chat"}, {"prompt", prompt}, {"max_tokens", 2}};
    auto r = http::fetch({.port = port,
                          .method = "POST",
                          .target = "/v1/completions",
                          .body = body.dump(),
                          .headers = {{"Content-Type", "application/json"}}});
    EXPECT_TRUE(r.ok() && r->status == 200) << (r.ok() ? r->body : r.error().message);
    return r.ok() ? std::string(r->header("x-loadstar-endpoint")) : std::string();
  };
  std::vector<std::string> prompts, first;
  for (int i = 0; i < 6; ++i) {
    std::string prompt = fmt::format("Conversation {} ", i);
    for (int w = 0; w < 300; ++w) prompt += fmt::format("word{} ", (w * 7 + i * 13) % 97);
    prompts.push_back(prompt);
    first.push_back(send(up->port(), prompt));
  }
  // Every pick reached the other gateway...
  ASSERT_EQ(
      settled_metric(second, "loadstar_gateway_shared_prefixes_total", "direction=\"received\"", 6),
      6);
  EXPECT_EQ(scrape_metric(second, "loadstar_gateway_shared_prefixes_up"), 1);
  // ...which sends each prompt (in the other order, so that its own
  // tie-breaking could not land them the same way) where the first did.
  // The next turn of a conversation comes later than the gateways' load
  // reports (every 50 ms): by then no request of the first is in its view.
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(settled_metric(second, "loadstar_gateway_peer_requests_in_flight", "", 0), 0);
  for (int i = 5; i >= 0; --i) EXPECT_EQ(send(second, prompts[i]), first[i]) << "prompt " << i;
  EXPECT_GE(std::set<std::string>(first.begin(), first.end()).size(), 2u);
  // Load too: a request running through the first gateway is in the
  // second's view (published within 5 ms of a change), and leaves it after.
  std::thread running([&] {
    json body = {{"model", "chat"}, {"prompt", "long"}, {"max_tokens", 3000}, {"ignore_eos", true}};
    up->post("/v1/completions", body.dump());
  });
  EXPECT_EQ(settled_metric(second, "loadstar_gateway_peer_requests_in_flight", "", 1), 1);
  running.join();
  EXPECT_EQ(settled_metric(second, "loadstar_gateway_peer_requests_in_flight", "", 0), 0);
}

}  // namespace
}  // namespace loadstar::testing
