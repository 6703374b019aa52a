// http::ClientPool against Debian's nginx over HTTPS, which logs the
// connection each request came on ($connection), and against a server that
// drops a request on a kept-alive connection.
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>

#include "common/process.h"
#include "http/client.h"
#include "support.h"

namespace loadstar::testing {
namespace {

namespace fs = std::filesystem;

// nginx on loopback with a certificate for 127.0.0.1: at most 5 requests
// per connection, idle connections closed after 1 s.
class Nginx {
 public:
  Nginx() : dir_(scratch_dir() / "http-client-nginx") {
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "root");
    std::ofstream(dir_ / "root/small") << "hello";
    std::ofstream(dir_ / "root/big", std::ios::binary) << std::string(1 << 20, 'x');
    port_ = free_port();
    auto started = start_https_nginx(dir_, port_,
                                     fmt::format(R"(
  log_format conn '$connection $connection_requests $request_uri';
  access_log {}/access.log conn;
  keepalive_requests 5;
  keepalive_timeout 1s;)",
                                                 dir_.string()));
    EXPECT_TRUE(started.ok()) << started.error().message;
    if (started.ok()) nginx_ = std::move(*started);
    fs::remove(dir_ / "access.log");              // the readiness probes' lines
    EXPECT_EQ(::kill(nginx_.pid(), SIGUSR1), 0);  // reopen the log
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  ~Nginx() { nginx_.stop(std::chrono::milliseconds(2000)); }

  http::ClientRequest request(const std::string& target) const {
    return {.port = port_, .target = target, .timeout_s = 10, .tls = true, .ca_pem = ca_pem()};
  }
  std::string ca_pem() const { return read_file(dir_ / "cert.pem"); }
  // The connections nginx served the logged requests on.
  std::set<std::string> connections() const {
    std::set<std::string> out;
    std::istringstream log(read_file(dir_ / "access.log"));
    for (std::string line; std::getline(log, line);) out.insert(line.substr(0, line.find(' ')));
    return out;
  }
  size_t requests() const {
    std::istringstream log(read_file(dir_ / "access.log"));
    size_t n = 0;
    for (std::string line; std::getline(log, line);) ++n;
    return n;
  }

 private:
  fs::path dir_;
  uint16_t port_ = 0;
  Subprocess nginx_;
};

TEST(ClientPool, KeepsHttpsConnectionsAliveAndReplacesThoseTheServerCloses) {
  Nginx nginx;
  http::ClientPool pool;
  // keepalive_requests 5: twelve requests on three connections.
  for (int i = 0; i < 12; ++i) {
    auto r = pool.fetch(nginx.request("/small"));
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_EQ(r->status, 200);
    EXPECT_EQ(r->body, "hello");
  }
  EXPECT_EQ(pool.connections_opened(), 3u);
  EXPECT_EQ(nginx.connections().size(), 3u);

  // Idle past nginx's keepalive_timeout: the closed connection is noticed
  // before use, not as a failed request.
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  auto after_idle = pool.fetch(nginx.request("/small"));
  ASSERT_TRUE(after_idle.ok()) << after_idle.error().message;
  EXPECT_EQ(pool.connections_opened(), 4u);

  // A body left unread (the reader hung up): that connection is not reused.
  size_t got = 0;
  auto cut = pool.fetch_streaming(nginx.request("/big"), [&](std::string_view data) {
    got += data.size();
    return false;
  });
  ASSERT_TRUE(cut.ok()) << cut.error().message;
  EXPECT_LT(got, size_t{1} << 20);
  auto next = pool.fetch(nginx.request("/big"));
  ASSERT_TRUE(next.ok()) << next.error().message;
  EXPECT_EQ(next->body.size(), size_t{1} << 20);
  EXPECT_EQ(pool.connections_opened(), 5u);

  // Errors are answers too: a 404 keeps its connection.
  auto missing = pool.fetch(nginx.request("/nope"));
  ASSERT_TRUE(missing.ok());
  EXPECT_EQ(missing->status, 404);
  EXPECT_EQ(pool.connections_opened(), 5u);

  // Threads at once each get their own connection; every answer is whole.
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 10; ++i) {
        auto r = pool.fetch(nginx.request(i % 2 ? "/small" : "/big"));
        if (!r.ok() || r->status != 200 || r->body.size() != (i % 2 ? 5u : size_t{1} << 20)) ++bad;
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(nginx.requests(), 12u + 1 + 1 + 1 + 1 + 40);
  // 40 requests, at most 5 per connection, at most 4 at a time: 8 to 40
  // new ones, never one per request.
  EXPECT_GE(pool.connections_opened(), 5u + 8);
  EXPECT_LT(pool.connections_opened(), 5u + 40);
}

// A server that answers the first request on a connection, keeps it open,
// reads the second and hangs up without a word (as a server closing an idle
// connection just as the client sends does).
class DroppingServer {
 public:
  DroppingServer() {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    socklen_t len = sizeof addr;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    ::listen(fd_, 8);
    thread_ = std::thread([this] { serve(); });
  }
  ~DroppingServer() {
    ::shutdown(fd_, SHUT_RDWR);
    ::close(fd_);
    thread_.join();
  }
  uint16_t port() const { return port_; }
  int accepted() const { return accepted_.load(); }
  int answered() const { return answered_.load(); }

 private:
  bool read_request(int c) {
    std::string in;
    char buf[4096];
    while (in.find("\r\n\r\n") == std::string::npos) {
      const ssize_t n = ::recv(c, buf, sizeof buf, 0);
      if (n <= 0) return false;
      in.append(buf, static_cast<size_t>(n));
    }
    return true;
  }
  void answer(int c) {
    static constexpr std::string_view kOk =
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok";
    (void)!::send(c, kOk.data(), kOk.size(), MSG_NOSIGNAL);
    ++answered_;
  }
  void serve() {
    for (;;) {
      const int c = ::accept(fd_, nullptr, nullptr);
      if (c < 0) return;
      ++accepted_;
      if (read_request(c)) answer(c);
      (void)read_request(c);  // the second: dropped
      ::close(c);
    }
  }
  int fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<int> accepted_{0}, answered_{0};
  std::thread thread_;
};

TEST(ClientPool, ARequestDroppedOnAReusedConnectionIsSentAgainOnANewOne) {
  DroppingServer server;
  http::ClientPool pool;
  const http::ClientRequest request{.port = server.port(), .target = "/", .timeout_s = 5};
  for (int i = 0; i < 3; ++i) {
    auto r = pool.fetch(request);
    ASSERT_TRUE(r.ok()) << i << ": " << r.error().message;
    EXPECT_EQ(r->body, "ok");
  }
  // The second and third were each dropped once on a kept connection, then
  // answered on a new one.
  EXPECT_EQ(server.accepted(), 3);
  EXPECT_EQ(server.answered(), 3);
  EXPECT_EQ(pool.connections_opened(), 3u);

  // A new connection that fails is not retried: the error is the answer.
  const http::ClientRequest nobody{.port = free_port(), .target = "/", .timeout_s = 5};
  auto refused = pool.fetch(nobody);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.error().message.find("connect to"), std::string::npos)
      << refused.error().message;
}

}  // namespace
}  // namespace loadstar::testing
