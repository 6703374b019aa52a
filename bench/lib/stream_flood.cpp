// stream_flood: N concurrent streamed chat completions from one client, to
// see what a front door holds. Opens the streams in batches (the listen
// backlog is finite), keeps them all open while the engine generates, and
// counts what each got: status, whether the stream ended with [DONE],
// tokens. Prints one summary line of key=value pairs.
//
//   stream_flood --port P --streams 10000 --max-tokens 200 [--model M]
#include <sys/resource.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <map>
#include <string>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;
constexpr auto kUseTuple = asio::as_tuple(asio::use_awaitable);

struct Totals {
  int started = 0, connected = 0, first_byte = 0, done = 0, errors = 0;
  std::map<int, int> status;
  std::map<std::string, int> error_kinds;
  uint64_t events = 0;
  double last_first_byte_s = 0;
};

asio::awaitable<void> one_stream(tcp::endpoint target, std::string request, Totals& t,
                                 Clock::time_point t0) {
  tcp::socket socket(co_await asio::this_coro::executor);
  ++t.started;
  auto [cec] = co_await socket.async_connect(target, kUseTuple);
  if (cec) {
    ++t.errors;
    ++t.error_kinds["connect: " + cec.message()];
    co_return;
  }
  ++t.connected;
  auto [wec, wn] = co_await asio::async_write(socket, asio::buffer(request), kUseTuple);
  if (wec) {
    ++t.errors;
    ++t.error_kinds["write: " + wec.message()];
    co_return;
  }
  std::string data;
  char buf[8192];
  bool first = true;
  for (;;) {
    auto [rec, rn] = co_await socket.async_read_some(asio::buffer(buf), kUseTuple);
    if (rn > 0) {
      if (first) {
        first = false;
        ++t.first_byte;
        t.last_first_byte_s = std::chrono::duration<double>(Clock::now() - t0).count();
        int status = 0;
        std::sscanf(buf, "HTTP/1.1 %d", &status);
        ++t.status[status];
      }
      data.append(buf, rn);
      // Keep only a tail for the [DONE] check; count events as they pass.
      size_t pos = 0;
      while ((pos = data.find("data: ", pos)) != std::string::npos) {
        ++t.events;
        pos += 6;
      }
      if (data.find("data: [DONE]") != std::string::npos) {
        ++t.done;
        co_return;
      }
      if (data.size() > 64) data.erase(0, data.size() - 64);
    }
    if (rec) {
      if (first) {
        ++t.errors;
        ++t.error_kinds["read: " + rec.message()];
      } else {
        ++t.error_kinds["mid-stream: " + rec.message()];
      }
      co_return;
    }
  }
}

int main(int argc, char** argv) {
  CLI::App app{"N concurrent streamed chat completions"};
  uint16_t port = 0;
  int streams = 1000, max_tokens = 200, batch = 200;
  std::string model = "chat";
  double timeout_s = 300;
  app.add_option("--port", port)->required();
  app.add_option("--streams", streams);
  app.add_option("--max-tokens", max_tokens);
  app.add_option("--model", model);
  app.add_option("--batch", batch, "Connections opened per 50 ms");
  app.add_option("--timeout", timeout_s);
  CLI11_PARSE(app, argc, argv);
  rlimit limit{};
  getrlimit(RLIMIT_NOFILE, &limit);
  limit.rlim_cur = limit.rlim_max;
  setrlimit(RLIMIT_NOFILE, &limit);

  const std::string body = fmt::format(
      R"({{"model":"{}","messages":[{{"role":"user","content":"Tell me a long story."}}],)"
      R"("max_tokens":{},"ignore_eos":true,"stream":true}})",
      model, max_tokens);
  const std::string request = fmt::format(
      "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
      "application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
      body.size(), body);
  asio::io_context io(1);
  Totals t;
  const auto t0 = Clock::now();
  const tcp::endpoint target(asio::ip::make_address("127.0.0.1"), port);
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        asio::steady_timer pause(io);
        for (int i = 0; i < streams; ++i) {
          asio::co_spawn(io, one_stream(target, request, t, t0), asio::detached);
          if ((i + 1) % batch == 0) {
            pause.expires_after(std::chrono::milliseconds(50));
            co_await pause.async_wait(kUseTuple);
          }
        }
      },
      asio::detached);
  // Progress to stderr once a second; stop at the deadline.
  asio::steady_timer tick(io);
  std::function<void()> report = [&] {
    tick.expires_after(std::chrono::seconds(1));
    tick.async_wait([&](boost::system::error_code ec) {
      if (ec) return;
      const double s = std::chrono::duration<double>(Clock::now() - t0).count();
      std::fprintf(stderr, "%.0fs: connected %d, first byte %d, done %d, errors %d\n", s,
                   t.connected, t.first_byte, t.done, t.errors);
      if (s > timeout_s || t.done + t.errors + (t.first_byte - t.status[200]) >= streams) {
        io.stop();
        return;
      }
      report();
    });
  };
  report();
  io.run();
  const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
  std::string statuses;
  for (const auto& [code, n] : t.status)
    statuses += fmt::format("{}{}:{}", statuses.empty() ? "" : ",", code, n);
  fmt::print(
      "streams={} connected={} first_byte={} done={} errors={} status={} events={} "
      "all_open_s={:.2f} elapsed_s={:.2f}\n",
      streams, t.connected, t.first_byte, t.done, t.errors, statuses, t.events, t.last_first_byte_s,
      elapsed);
  for (const auto& [kind, n] : t.error_kinds) std::fprintf(stderr, "  %d x %s\n", n, kind.c_str());
  return t.done == streams ? 0 : 1;
}
