#include "enginesim/kv_reader.h"

#include <thread>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "common/strings.h"
#include "http/client.h"

namespace loadstar::enginesim {

namespace asio = boost::asio;

struct KvReader::Thread {
  asio::io_context io{1};
  asio::executor_work_guard<asio::io_context::executor_type> work{io.get_executor()};
  http::ClientPool pool;
  std::thread thread{[this] { io.run(); }};
  ~Thread() {
    work.reset();
    io.stop();
    thread.join();
  }
};

KvReader::KvReader() : thread_(std::make_unique<Thread>()) {}
KvReader::~KvReader() = default;

Result<engine::HeldKv> KvReader::read_blocking(const KvTransferParams& params) {
  http::ClientRequest request{
      .host = params.remote_host,
      .port = params.remote_port,
      .method = "POST",
      .target = "/kv_transfer/read",
      .body = kv_read_request_json({params.remote_engine_id, params.remote_request_id}),
      .headers = {{"Content-Type", "application/json"}},
      .timeout_s = 10,
  };
  auto response = thread_->pool.fetch(request);
  if (!response.ok())
    return make_error(response.error().code, "reading KV from {}:{}: {}", params.remote_host,
                      params.remote_port, response.error().message);
  if (response->status != 200)
    return make_error(ErrorCode::kUnavailable, "reading KV from {}:{}: answered {}: {}",
                      params.remote_host, params.remote_port, response->status,
                      utf8_clip(response->body, 200));
  return parse_kv_read_reply(response->body);
}

namespace {

asio::awaitable<Status> on_reader_thread(
    KvReader* reader, KvTransferParams params, std::shared_ptr<engine::HeldKv> out,
    Result<engine::HeldKv> (KvReader::*fn)(const KvTransferParams&)) {
  Result<engine::HeldKv> held = (reader->*fn)(params);
  if (!held.ok()) co_return std::move(held).error();
  *out = std::move(held).value();
  co_return ok_status();
}

}  // namespace

asio::awaitable<Result<engine::HeldKv>> KvReader::read(KvTransferParams params) {
  // co_spawn hands back a default-constructible value: the blocks travel beside it.
  auto out = std::make_shared<engine::HeldKv>();
  auto on_thread = on_reader_thread(this, std::move(params), out, &KvReader::read_blocking);
  auto pending = asio::co_spawn(thread_->io, std::move(on_thread), asio::use_awaitable);
  Status outcome = co_await std::move(pending);
  if (!outcome.ok()) co_return std::move(outcome).error();
  co_return std::move(*out);
}

}  // namespace loadstar::enginesim
