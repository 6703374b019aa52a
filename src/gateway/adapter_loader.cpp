#include "gateway/adapter_loader.h"

#include <chrono>
#include <optional>
#include <thread>

#include <spdlog/spdlog.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <nlohmann/json.hpp>

#include "common/strings.h"
#include "http/client.h"

namespace loadstar::gateway {

namespace asio = boost::asio;

struct AdapterLoader::Thread {
  asio::io_context io{1};
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> guard{
      asio::make_work_guard(io)};
  std::thread thread{[this] { io.run(); }};
};

AdapterLoader::AdapterLoader() : thread_(std::make_unique<Thread>()) {}

AdapterLoader::~AdapterLoader() {
  thread_->guard.reset();
  thread_->io.stop();
  thread_->thread.join();
}

namespace {

// One POST to the engine's runtime LoRA API; the engine's refusal in its
// own words.
Status post(const Endpoint& endpoint, const char* target, const nlohmann::json& body,
            std::string_view what) {
  http::ClientRequest request;
  request.host = endpoint.host;
  request.port = endpoint.port;
  request.method = "POST";
  request.target = target;
  request.headers = {{"Content-Type", "application/json"}};
  request.body = body.dump();
  request.timeout_s = 60;
  request.stall_timeout_s = 30;
  auto response = http::fetch(request);
  if (!response.ok())
    return make_error(ErrorCode::kUnavailable, "{} on {}: {}", what, endpoint.replica,
                      response.error().message);
  if (response->status == 200) return ok_status();
  // vLLM answers 400 "... has already been loaded." for one it has (another
  // gateway loaded it): as good as a load.
  if (response->status == 400 && response->body.find("already been loaded") != std::string::npos)
    return ok_status();
  std::string message = utf8_clip(response->body, 500);
  const auto parsed = nlohmann::json::parse(response->body, nullptr, false);
  if (parsed.is_object() && parsed.contains("error") && parsed["error"].is_object() &&
      parsed["error"].contains("message") && parsed["error"]["message"].is_string())
    message = parsed["error"]["message"].get<std::string>();
  else if (parsed.is_object() && parsed.contains("message") && parsed["message"].is_string())
    message = parsed["message"].get<std::string>();
  return make_error(response->status >= 500 ? ErrorCode::kUnavailable : ErrorCode::kInvalidArgument,
                    "{} on {}: the engine answered {}: {}", what, endpoint.replica,
                    response->status, message);
}

}  // namespace

Status AdapterLoader::load(Endpoint& endpoint, const std::string& adapter,
                           const std::string& path) {
  // Another request may have loaded it while this one queued.
  const std::optional<std::string> held = endpoint.adapters.registered_path(adapter);
  if (held == path) return ok_status();
  // A load that just failed fails the requests queued behind it at once,
  // for a few seconds, instead of each waiting for the engine again.
  const auto now = std::chrono::steady_clock::now();
  std::erase_if(failed_, [now](const auto& f) { return f.second.first <= now; });
  const auto key = std::make_pair(endpoint.id, adapter);
  if (auto f = failed_.find(key); f != failed_.end()) return f->second.second;
  Status outcome = ok_status();
  // Loaded from another path (its Model's source changed): unloaded first,
  // so that this replica serves the new bytes too.
  if (held) {
    outcome = post(endpoint, "/v1/unload_lora_adapter", {{"lora_name", adapter}},
                   fmt::format("unloading adapter '{}'", adapter));
    if (outcome.ok()) endpoint.adapters.unregistered(adapter);
  }
  if (outcome.ok())
    outcome = post(endpoint, "/v1/load_lora_adapter", {{"lora_name", adapter}, {"lora_path", path}},
                   fmt::format("loading adapter '{}'", adapter));
  if (!outcome.ok()) {
    ++failures_;
    failed_[key] = {now + std::chrono::seconds(5), outcome};
    return outcome;
  }
  ++loads_;
  spdlog::info("gateway: loaded adapter {} into {}", adapter, endpoint.replica);
  endpoint.adapters.registered(adapter, path);
  return ok_status();
}

namespace {

asio::awaitable<Status> on_loader_thread(
    AdapterLoader* loader, Endpoint* endpoint, std::string adapter, std::string path,
    Status (AdapterLoader::*load)(Endpoint&, const std::string&, const std::string&)) {
  co_return (loader->*load)(*endpoint, adapter, path);
}

}  // namespace

asio::awaitable<Status> AdapterLoader::ensure(Endpoint& endpoint, std::string adapter,
                                              std::string path) {
  if (endpoint.adapters.registered_path(adapter) == path) co_return ok_status();
  // The blocking call runs on the loader's thread; this coroutine resumes
  // on its own executor when it is done.
  auto on_thread =
      on_loader_thread(this, &endpoint, std::move(adapter), std::move(path), &AdapterLoader::load);
  auto pending = asio::co_spawn(thread_->io, std::move(on_thread), asio::use_awaitable);
  Status outcome = co_await std::move(pending);
  co_return outcome;
}

}  // namespace loadstar::gateway
