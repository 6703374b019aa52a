// Faults in Kubernetes mode, with nothing lost: a gateway killed under load
// (clients retry on the other replica), and the controller and the API
// server unreachable (gateways keep serving the last table they built).
#include "kubernetes_fixture.h"

#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <mutex>

namespace loadstar::testing {
namespace {

// A TCP relay from a loopback port to `target_port`, cut at will: stop()
// closes the listener and every relayed connection, as a partition would.
class TcpRelay {
 public:
  explicit TcpRelay(uint16_t target_port) : target_port_(target_port) {
    listener_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr = loopback(0);
    socklen_t len = sizeof(addr);
    if (::bind(listener_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
        ::listen(listener_, 64) != 0 ||
        ::getsockname(listener_, reinterpret_cast<sockaddr*>(&addr), &len) != 0)
      throw std::runtime_error("relay: cannot listen");
    port_ = ntohs(addr.sin_port);
    accepter_ = std::thread([this] { accept_loop(); });
  }
  ~TcpRelay() { stop(); }
  uint16_t port() const { return port_; }

  void stop() {
    if (stopped_.exchange(true)) return;
    ::shutdown(listener_, SHUT_RDWR);
    {
      std::lock_guard lock(mu_);
      for (int fd : open_) ::shutdown(fd, SHUT_RDWR);
    }
    accepter_.join();
    for (auto& t : pumps_) t.join();
    ::close(listener_);
  }

 private:
  static sockaddr_in loopback(uint16_t port) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(port);
    return addr;
  }

  void accept_loop() {
    while (!stopped_) {
      pollfd p{listener_, POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) continue;
      const int client = ::accept(listener_, nullptr, nullptr);
      if (client < 0) continue;
      const int upstream = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in addr = loopback(target_port_);
      if (::connect(upstream, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
        ::close(client);
        ::close(upstream);
        continue;
      }
      std::lock_guard lock(mu_);
      if (stopped_) {
        ::close(client);
        ::close(upstream);
        break;
      }
      open_.push_back(client);
      open_.push_back(upstream);
      pumps_.emplace_back([this, client, upstream] { pump(client, upstream); });
    }
  }

  void pump(int a, int b) {
    char buffer[16384];
    pollfd fds[2] = {{a, POLLIN, 0}, {b, POLLIN, 0}};
    while (!stopped_) {
      if (::poll(fds, 2, 100) <= 0) continue;
      bool done = false;
      for (int i = 0; i < 2 && !done; ++i) {
        if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        const ssize_t n = ::read(fds[i].fd, buffer, sizeof(buffer));
        done = n <= 0 || ::send(fds[1 - i].fd, buffer, static_cast<size_t>(n), MSG_NOSIGNAL) != n;
      }
      if (done) break;
    }
    ::shutdown(a, SHUT_RDWR);
    ::shutdown(b, SHUT_RDWR);
    // Closed in the destructor's stop(): the descriptors stay listed until then.
  }

  const uint16_t target_port_;
  int listener_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stopped_{false};
  std::mutex mu_;
  std::vector<int> open_;
  std::thread accepter_;
  std::vector<std::thread> pumps_;
};

// A streamed chat completion; true when it ran to its end ([DONE]).
bool streamed_chat(uint16_t port) {
  auto r = http::fetch({.port = port,
                        .method = "POST",
                        .target = "/v1/chat/completions",
                        .body = R"({"model":"chat","messages":[{"role":"user","content":"hi"}],)"
                                R"("max_tokens":40,"stream":true})",
                        .headers = {{"Content-Type", "application/json"}},
                        .timeout_s = 20});
  return r.ok() && r->status == 200 && r->body.find("data: [DONE]") != std::string::npos;
}

TEST_F(KubernetesTest, AGatewayKilledUnderLoadLosesNoRequestItsClientsRetry) {
  add_node(1, 1);
  add_node(2, 1);
  start_controller("controller");
  wait_output("controller", "controller reconciling");
  const uint16_t gateways[2] = {start_gateway("gateway-1"), start_gateway("gateway-2")};
  apply(model_yaml() + "---\n" + service_yaml(2));
  ASSERT_TRUE(eventually([&] { return chat(gateways[0]) == 200 && chat(gateways[1]) == 200; }, 90))
      << read_text(processes_["controller"]->log);

  // Four clients, each request to the gateways in turn; a request whose
  // stream did not end (refused, reset, cut) is sent again to the other.
  std::atomic<int> done{0}, retried{0}, lost{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < 4; ++c)
    clients.emplace_back([&, c] {
      for (int i = 0; i < 12; ++i) {
        const int first = (c + i) % 2;
        if (streamed_chat(gateways[first])) {
          ++done;
        } else {
          ++retried;
          streamed_chat(gateways[1 - first]) ? ++done : ++lost;
        }
      }
    });
  std::this_thread::sleep_for(700ms);
  processes_.at("gateway-1")->process.signal(SIGKILL);
  for (auto& t : clients) t.join();
  EXPECT_EQ(done, 48);
  EXPECT_EQ(lost, 0);
  EXPECT_GE(retried, 1);  // the kill met requests, and their retries were answered
  // The engines hold nothing for the dead gateway: its connections closed,
  // they stopped its requests.
  EXPECT_TRUE(eventually(
      [&] {
        double running = 0;
        for (const auto& pod : pods()) {
          const std::string ip = pod["status"].value("podIP", "");
          const auto port = pod["spec"]["containers"][0]["ports"][0].value("containerPort", 0);
          auto r = http::fetch({.host = ip,
                                .port = static_cast<uint16_t>(port),
                                .target = "/metrics",
                                .timeout_s = 2});
          if (!r.ok()) return false;
          running += metric_in(r->body, "vllm:num_requests_running");
        }
        return running == 0;
      },
      10));
}

TEST_F(KubernetesTest, GatewaysKeepServingTheLastTableWithoutControllerOrApiServer) {
  add_node(1, 1);
  start_controller("controller");
  wait_output("controller", "controller reconciling");
  // This gateway reaches the API server through a relay the test can cut.
  const std::string config = read_text(g_kubeconfig);
  const std::regex server_re(R"(server: https://127\.0\.0\.1:(\d+))");
  std::smatch m;
  ASSERT_TRUE(std::regex_search(config, m, server_re)) << config;
  TcpRelay relay(static_cast<uint16_t>(std::stoi(m[1])));
  const fs::path relayed = root_ / "relayed.kubeconfig";
  std::ofstream(relayed) << std::regex_replace(
      config, server_re, fmt::format("server: https://127.0.0.1:{}", relay.port()));
  spawn("gateway", {LOADSTAR_BIN, "gateway", "-n", ns_, "--kubeconfig", relayed.string(), "--host",
                    "127.0.0.1", "--port", "0", "--token-file", token_file().string()});
  const auto gw = static_cast<uint16_t>(std::stoi(
      wait_output("gateway", R"(gateway serving namespace \S+ on http://127\.0\.0\.1:(\d+))")));
  apply(model_yaml() + "---\n" + service_yaml(1));
  ASSERT_TRUE(eventually([&] { return chat(gw) == 200; }, 90))
      << read_text(processes_["gateway"]->log);

  // No controller, no API server: the gateway serves from the table it has.
  processes_.at("controller")->process.signal(SIGKILL);
  relay.stop();
  int answered = 0;
  for (int i = 0; i < 16; ++i) {
    answered += chat(gw) == 200;
    std::this_thread::sleep_for(250ms);
  }
  EXPECT_EQ(answered, 16) << read_text(processes_["gateway"]->log);
  EXPECT_TRUE(processes_.at("gateway")->process.running());
}

}  // namespace
}  // namespace loadstar::testing
