#include "enginesim/engine_sim.h"

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <thread>

#include <nlohmann/json.hpp>

#include <spdlog/spdlog.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "common/strings.h"
#include "enginesim/engine_loop.h"
#include "enginesim/metrics.h"
#include "enginesim/profiles.h"
#include "enginesim/responses.h"
#include "http/server.h"
#include "model/lora_adapter.h"
#include "model/model_dir.h"
#include "openai/protocol.h"

namespace loadstar::enginesim {

namespace asio = boost::asio;
namespace fs = std::filesystem;
using engine::FinishReason;
using http::Exchange;
using openai::ApiError;
using openai::Endpoint;

namespace {

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Written to a temporary name and renamed, so a reader never sees half a number.
Status write_port_file(const std::string& path, uint16_t port) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    out << port << "\n";
    if (!out.flush()) return make_error(ErrorCode::kIo, "cannot write {}", tmp);
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) return make_error(ErrorCode::kIo, "cannot rename {} to {}: {}", tmp, path, ec.message());
  return ok_status();
}

class EngineSimServer {
 public:
  EngineSimServer(const EngineSimOptions& options, engine::EngineConfig config,
                  std::string model_name, std::string model_root)
      : options_(options),
        model_name_(std::move(model_name)),
        model_root_(std::move(model_root)),
        metrics_(model_name_, config, options.time_scale),
        loop_(std::move(config), options.time_scale, &metrics_) {}

  EngineMetrics& metrics() { return metrics_; }
  EngineLoop& loop() { return loop_; }
  void set_ready() { ready_ = true; }

  // Registers an adapter read from `path` (checked here: its files, its
  // rank), then in the engine core; `done` gets the outcome on `executor`.
  void add_adapter(const std::string& name, const std::string& path, asio::any_io_executor executor,
                   std::function<void(Status)> done) {
    auto info = model::read_adapter(path);
    if (!info.ok()) {
      done(make_error(ErrorCode::kInvalidArgument, "Failed to load LoRA adapter '{}' from {}: {}",
                      name, path, info.error().message));
      return;
    }
    engine::LoraAdapter a{0, name, info->rank, info->bytes};
    {
      std::lock_guard lock(adapters_mu_);
      if (adapters_.count(name)) {
        done(make_error(ErrorCode::kInvalidArgument,
                        "The lora adapter '{}' has already been loaded.", name));
        return;
      }
      a.id = next_adapter_id_++;
      adapters_[name] = {a.id, path};  // visible at once; removed again if the core refuses it
    }
    loop_.control([a](engine::EngineCore& core) { return core.add_adapter(a); }, executor,
                  [this, name, done = std::move(done)](Status s) {
                    if (!s.ok()) {
                      std::lock_guard lock(adapters_mu_);
                      adapters_.erase(name);
                    }
                    done(std::move(s));
                  });
  }

  asio::awaitable<void> handle(Exchange& ex) {
    const http::Request& req = ex.request();
    const std::string_view path = req.path();
    const bool get = req.method == "GET";
    const bool post = req.method == "POST";
    // GCC 12 destroys some temporaries of a co_await expression twice, so
    // every coroutine argument below is a named local, moved in.
    http::Response response;
    if (path == "/health" && get) {
      response = ready_ ? http::Response{200, "text/plain", ""}
                        : http::Response{503, "text/plain", "loading model weights\n"};
    } else if (path == "/metrics" && get) {
      response = {200, "text/plain; version=0.0.4; charset=utf-8", metrics_.render()};
    } else if (path == "/v1/models" && get) {
      response = {200, "application/json", models_json()};
    } else if (path == "/version" && get) {
      response = {200, "application/json", R"({"version":"loadstar-engine-sim 0.1.0"})"};
    } else if (path == "/v1/chat/completions" && post) {
      co_await generate(ex, Endpoint::kChatCompletions);
      co_return;
    } else if (path == "/v1/completions" && post) {
      co_await generate(ex, Endpoint::kCompletions);
      co_return;
    } else if (path == "/v1/embeddings" && post) {
      co_await generate(ex, Endpoint::kEmbeddings);
      co_return;
    } else if ((path == "/v1/load_lora_adapter" || path == "/v1/unload_lora_adapter") && post &&
               runtime_lora_updates()) {
      co_await change_adapter(ex, path == "/v1/load_lora_adapter");
      co_return;
    } else {
      const bool known = path == "/health" || path == "/metrics" || path == "/v1/models" ||
                         path == "/version" || path == "/v1/chat/completions" ||
                         path == "/v1/completions" || path == "/v1/embeddings";
      ApiError e{known ? 405 : 404, fmt::format("no route for {} {}", req.method, path), {}};
      response = {e.status, "application/json", openai::error_body(e)};
    }
    co_await ex.respond(std::move(response));
  }

 private:
  struct ServedAdapter {
    uint32_t id = 0;
    std::string path;
  };

  // vLLM registers the two routes only with VLLM_ALLOW_RUNTIME_LORA_UPDATING.
  bool runtime_lora_updates() const {
    if (!options_.enable_lora) return false;
    const char* v = std::getenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING");
    return v && (std::string_view(v) == "1" || std::string_view(v) == "true" ||
                 std::string_view(v) == "True");
  }

  // The adapter a request's `model` names: 0 for the base model, nullopt
  // for a name neither is.
  std::optional<uint32_t> model_id(const std::string& model) {
    if (model == model_name_) return 0;
    std::lock_guard lock(adapters_mu_);
    auto it = adapters_.find(model);
    if (it == adapters_.end()) return std::nullopt;
    return it->second.id;
  }

  std::string models_json() {
    const int64_t created = unix_now();
    const uint32_t max_len = loop_.core().config().max_model_len;
    nlohmann::json data = nlohmann::json::array();
    data.push_back({{"id", model_name_},
                    {"object", "model"},
                    {"created", created},
                    {"owned_by", "vllm"},
                    {"root", model_root_},
                    {"parent", nullptr},
                    {"max_model_len", max_len}});
    std::lock_guard lock(adapters_mu_);
    for (const auto& [name, a] : adapters_)
      data.push_back({{"id", name},
                      {"object", "model"},
                      {"created", created},
                      {"owned_by", "vllm"},
                      {"root", a.path},
                      {"parent", model_name_},
                      {"max_model_len", max_len}});
    return nlohmann::json({{"object", "list"}, {"data", data}}).dump();
  }

  // POST /v1/load_lora_adapter {"lora_name","lora_path"} and
  // /v1/unload_lora_adapter {"lora_name"}, answered as vLLM does.
  asio::awaitable<void> change_adapter(Exchange& ex, bool load) {
    const nlohmann::json body = nlohmann::json::parse(ex.request().body, nullptr, false);
    auto field = [&](const char* key) {
      return body.is_object() && body.contains(key) && body[key].is_string()
                 ? body[key].get<std::string>()
                 : std::string();
    };
    const std::string name = field("lora_name");
    const std::string path = field("lora_path");
    if (name.empty() || (load && path.empty())) {
      ApiError e{400,
                 load ? "Both 'lora_name' and 'lora_path' must be provided."
                      : "'lora_name' needs to be provided to unload a LoRA adapter.",
                 {}};
      co_await respond_error(ex, std::move(e));
      co_return;
    }
    // `done` runs on this executor: at once (a refusal found here) or
    // posted once the engine thread has run the change.
    struct Pending {
      explicit Pending(asio::any_io_executor e) : wait(std::move(e), std::chrono::hours(24)) {}
      asio::steady_timer wait;
      Status outcome;
      bool finished = false;
    };
    auto pending = std::make_shared<Pending>(ex.executor());  // outlives this frame if need be
    auto done = [pending](Status s) {
      pending->outcome = std::move(s);
      pending->finished = true;
      pending->wait.cancel();
    };
    if (load) {
      add_adapter(name, path, ex.executor(), done);
    } else {
      std::optional<uint32_t> id;
      {
        std::lock_guard lock(adapters_mu_);
        if (auto it = adapters_.find(name); it != adapters_.end()) id = it->second.id;
      }
      if (!id) {
        ApiError e{404, fmt::format("The lora adapter '{}' cannot be found.", name), {}};
        co_await respond_error(ex, std::move(e));
        co_return;
      }
      loop_.control([id = *id](engine::EngineCore& core) { return core.remove_adapter(id); },
                    ex.executor(),
                    [this, name, done](Status s) {
                      if (s.ok()) {
                        std::lock_guard lock(adapters_mu_);
                        adapters_.erase(name);
                      }
                      done(std::move(s));
                    });
    }
    if (!pending->finished) co_await pending->wait.async_wait(asio::as_tuple(asio::use_awaitable));
    const Status outcome = pending->outcome;
    if (!outcome.ok()) {
      const int status = outcome.error().code == ErrorCode::kUnavailable ? 409 : 400;
      ApiError e{status, outcome.error().message, {}};
      co_await respond_error(ex, std::move(e));
      co_return;
    }
    http::Response ok{200, "text/plain",
                      fmt::format("Success: LoRA adapter '{}' {} successfully.", name,
                                  load ? "added" : "removed")};
    co_await ex.respond(std::move(ok));
  }

  static asio::awaitable<void> respond_error(Exchange& ex, ApiError error) {
    std::vector<http::Header> headers;
    if (error.status == 503) headers.push_back({"Retry-After", "1"});
    http::Response response{error.status, "application/json", openai::error_body(error),
                            std::move(headers)};
    co_await ex.respond(std::move(response));
  }

  asio::awaitable<void> generate(Exchange& ex, Endpoint endpoint) {
    auto parsed = openai::parse_request(endpoint, ex.request().body);
    if (!parsed.ok()) {
      ApiError error = openai::to_api_error(parsed.error());
      co_await respond_error(ex, std::move(error));
      co_return;
    }
    openai::CompletionRequest request = std::move(parsed).value();
    const std::optional<uint32_t> adapter = model_id(request.model);
    if (!adapter) {
      ApiError e{404, fmt::format("The model `{}` does not exist.", request.model), "model"};
      co_await respond_error(ex, std::move(e));
      co_return;
    }
    if (!ready_) {
      ApiError error{503, "the model is still loading; retry when /health returns 200", {}};
      co_await respond_error(ex, std::move(error));
      co_return;
    }
    if (options_.fault_delay_s > 0) {
      asio::steady_timer delay(co_await asio::this_coro::executor);
      delay.expires_after(
          std::chrono::microseconds(static_cast<int64_t>(options_.fault_delay_s * 1e6)));
      co_await delay.async_wait(asio::use_awaitable);
    }
    if (options_.fault_error_rate > 0 && fault_draw() < options_.fault_error_rate) {
      ApiError error{500, "injected fault (engine-sim --fault-error-rate)", {}};
      co_await respond_error(ex, std::move(error));
      co_return;
    }
    if (endpoint == Endpoint::kEmbeddings) {
      co_await embed(ex, std::move(request));
      co_return;
    }
    engine::NewRequest nr;
    nr.id = loop_.next_id();
    openai::prompt_tokens(request, 0, nr.prompt);
    nr.sampling.max_tokens = request.max_tokens;
    nr.sampling.min_tokens = request.min_tokens;
    nr.sampling.ignore_eos = request.ignore_eos;
    nr.sampling.seed = request.seed;
    nr.adapter = *adapter;
    if (Status s = loop_.core().check_request(nr); !s.ok()) {
      ApiError error = openai::to_api_error(s.error());
      co_await respond_error(ex, std::move(error));
      co_return;
    }
    const engine::RequestId id = nr.id;
    const uint32_t prompt_len = static_cast<uint32_t>(nr.prompt.size());
    auto channel = std::make_shared<RequestChannel>(ex.executor());
    loop_.submit(std::move(nr), channel);
    bool client_gone = false;
    EngineLoop* loop = &loop_;
    ex.on_client_closed([loop, id, channel, &client_gone] {
      client_gone = true;
      loop->abort(id);  // frees its KV blocks at the next step boundary
      channel->close();
    });

    const char* prefix = endpoint == Endpoint::kChatCompletions ? "chatcmpl-" : "cmpl-";
    ResponseEncoder encoder(endpoint, fmt::format("{}{:016x}", prefix, id ^ id_salt_),
                            request.model, unix_now(), request.include_usage);
    const auto& tok = tokenizer::Tokenizer::get();
    Usage usage{prompt_len, 0, 0};
    FinishReason finish = FinishReason::kNone;
    std::string text;    // non-streaming: the whole completion
    std::string events;  // streaming: this step's events
    bool started = false;
    std::vector<engine::RequestOutput> outputs;
    while (finish == FinishReason::kNone) {
      const bool more = co_await channel->next(outputs);
      if (!more) break;
      events.clear();
      if (request.stream && !started) events = encoder.first_event();
      for (const engine::RequestOutput& out : outputs) {
        usage.completion_tokens = out.output_tokens;
        usage.cached_tokens = out.cached_tokens;
        finish = out.finish;
        std::string_view piece = out.has_token ? tok.text_of(out.token) : std::string_view();
        if (request.stream)
          encoder.append_delta(events, piece, finish);
        else
          text += piece;
      }
      if (request.stream) {
        if (!started) {
          started = true;
          std::string content_type = "text/event-stream";
          const bool ok = co_await ex.begin_stream(200, std::move(content_type));
          if (!ok) break;
        }
        const bool ok = co_await ex.write_chunk(events);
        if (!ok) break;
      }
    }
    if (finish == FinishReason::kNone) {
      loop_.abort(id);  // no-op when the engine already dropped it
      if (client_gone) co_return;
      ApiError error{503, "the request ended before it finished", {}};
      if (channel->error()) error = openai::to_api_error(*channel->error());
      if (!started) {
        co_await respond_error(ex, std::move(error));
      } else {
        std::string tail = ResponseEncoder::error_event(error);
        tail += ResponseEncoder::kDone;
        const bool ok = co_await ex.write_chunk(tail);
        if (ok) co_await ex.end_stream();
      }
      co_return;
    }
    if (request.stream) {
      std::string tail;
      if (request.include_usage) tail = encoder.usage_event(usage);
      tail += ResponseEncoder::kDone;
      const bool ok = co_await ex.write_chunk(tail);
      if (ok) co_await ex.end_stream();
    } else {
      http::Response response{200, "application/json", encoder.complete(text, finish, usage)};
      co_await ex.respond(std::move(response));
    }
  }

  asio::awaitable<void> embed(Exchange& ex, openai::CompletionRequest request) {
    const size_t count = openai::prompt_count(request);
    std::vector<std::vector<tokenizer::TokenId>> prompts(count);
    std::vector<engine::RequestId> ids(count);
    std::vector<std::shared_ptr<RequestChannel>> channels(count);
    uint32_t prompt_tokens = 0;
    for (size_t i = 0; i < count; ++i) {
      openai::prompt_tokens(request, i, prompts[i]);
      engine::NewRequest nr;
      nr.id = ids[i] = loop_.next_id();
      nr.prompt = prompts[i];
      nr.pooling = true;
      if (Status s = loop_.core().check_request(nr); !s.ok()) {
        ApiError error = openai::to_api_error(s.error(), "input");
        co_await respond_error(ex, std::move(error));
        co_return;
      }
      prompt_tokens += static_cast<uint32_t>(nr.prompt.size());
      channels[i] = std::make_shared<RequestChannel>(ex.executor());
    }
    for (size_t i = 0; i < count; ++i) {
      engine::NewRequest nr;
      nr.id = ids[i];
      nr.prompt = prompts[i];
      nr.pooling = true;
      loop_.submit(std::move(nr), channels[i]);
    }
    EngineLoop* loop = &loop_;
    ex.on_client_closed([loop, ids, channels] {
      for (size_t i = 0; i < ids.size(); ++i) {
        loop->abort(ids[i]);
        channels[i]->close();
      }
    });
    std::vector<std::vector<float>> vectors;
    std::vector<engine::RequestOutput> outputs;
    for (size_t i = 0; i < count; ++i) {
      bool finished = false;
      while (!finished) {
        const bool more = co_await channels[i]->next(outputs);
        if (!more) break;
        for (const auto& out : outputs) finished |= out.finish != FinishReason::kNone;
      }
      if (!finished) {
        for (size_t j = i; j < count; ++j) loop_.abort(ids[j]);
        ApiError error{503, "the request ended before it finished", {}};
        if (channels[i]->error()) error = openai::to_api_error(*channels[i]->error());
        co_await respond_error(ex, std::move(error));
        co_return;
      }
      const uint32_t dims = request.dimensions.value_or(options_.embedding_dim);
      vectors.push_back(embed_tokens(prompts[i], dims));
    }
    http::Response response{
        200, "application/json",
        embeddings_response(model_name_, vectors, request.base64, prompt_tokens)};
    co_await ex.respond(std::move(response));
  }

  const EngineSimOptions& options_;
  const std::string model_name_;
  std::mutex adapters_mu_;
  std::map<std::string, ServedAdapter> adapters_;  // by name
  uint32_t next_adapter_id_ = 1;
  const std::string model_root_;
  EngineMetrics metrics_;
  EngineLoop loop_;
  // A uniform draw in [0, 1) for fault injection (one I/O thread calls it).
  double fault_draw() {
    fault_state_ = fault_state_ * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<double>(fault_state_ >> 11) * 0x1.0p-53;
  }
  uint64_t fault_state_ = 0x853c49e6748fea9bULL;
  std::atomic<bool> ready_{false};
  const uint64_t id_salt_ =
      static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()) *
      0x9e3779b97f4a7c15ULL;
};

// Waits for in-flight requests to finish (at most drain_timeout), then stops.
asio::awaitable<void> drain_and_stop(asio::io_context& io, EngineLoop& loop, http::Server& server,
                                     double timeout_s) {
  server.stop();
  asio::steady_timer timer(io);
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
  while (loop.in_flight() > 0 && std::chrono::steady_clock::now() < deadline) {
    timer.expires_after(std::chrono::milliseconds(20));
    co_await timer.async_wait(asio::use_awaitable);
  }
  loop.stop();
  io.stop();
}

}  // namespace

Result<LoraModule> parse_lora_module(const std::string& text) {
  LoraModule m;
  if (text.starts_with("{")) {
    const nlohmann::json doc = nlohmann::json::parse(text, nullptr, false);
    if (doc.is_object() && doc.contains("name") && doc["name"].is_string() &&
        doc.contains("path") && doc["path"].is_string()) {
      m.name = doc["name"].get<std::string>();
      m.path = doc["path"].get<std::string>();
    }
  } else if (const size_t eq = text.find('='); eq != std::string::npos) {
    m.name = text.substr(0, eq);
    m.path = text.substr(eq + 1);
  }
  if (m.name.empty() || m.path.empty())
    return make_error(ErrorCode::kInvalidArgument,
                      "--lora-modules '{}': expected NAME=PATH or {{\"name\": ..., \"path\": ...}}",
                      text);
  return m;
}

Result<engine::EngineConfig> engine_config(const EngineSimOptions& options,
                                           uint32_t model_max_len) {
  auto profile = find_profile(options.profile.empty() ? kDefaultProfile : options.profile,
                              options.profiles_file);
  if (!profile.ok()) return profile.error();
  engine::EngineConfig config;
  config.block_size = options.block_size;
  config.num_gpu_blocks = options.num_gpu_blocks_override.value_or(profile->num_gpu_blocks);
  config.max_num_seqs = options.max_num_seqs;
  config.max_num_batched_tokens = options.max_num_batched_tokens;
  config.max_model_len = options.max_model_len.value_or(model_max_len);
  config.max_waiting = options.max_waiting;
  config.enable_prefix_caching = options.enable_prefix_caching;
  config.seed = options.seed;
  config.cost = profile->cost;
  config.output_length = {options.output_len_median, options.output_len_sigma};
  config.lora.enabled = options.enable_lora;
  config.lora.max_loras = options.max_loras;
  config.lora.max_lora_rank = options.max_lora_rank;
  config.lora.max_cpu_loras = options.max_cpu_loras.value_or(options.max_loras);
  if (!options.lora_modules.empty() && !options.enable_lora)
    return make_error(ErrorCode::kInvalidArgument, "--lora-modules needs --enable-lora");
  if (!(options.time_scale > 0))
    return make_error(ErrorCode::kInvalidArgument, "--time-scale must be positive");
  if (Status s = config.validate(); !s.ok())
    return make_error(ErrorCode::kInvalidArgument, "invalid engine configuration: {}",
                      s.error().message);
  return config;
}

int run_engine_sim(const EngineSimOptions& options) {
  if (options.model_dir.empty()) {
    spdlog::error(
        "--model is required: a model directory with config.json and safetensors weights");
    return 2;
  }
  auto model_config = model::read_model_config(options.model_dir);
  if (!model_config.ok()) {
    spdlog::error("{}", model_config.error().message);
    return 2;
  }
  auto config = engine_config(options, model_config->max_position_embeddings
                                           ? model_config->max_position_embeddings
                                           : 4096);
  if (!config.ok()) {
    spdlog::error("{}", config.error().message);
    return 2;
  }
  std::unique_ptr<kvevents::Publisher> kv_publisher;
  if (!options.kv_events_config.empty()) {
    auto events = kvevents::parse_events_config(options.kv_events_config);
    if (!events.ok()) {
      spdlog::error("{}", events.error().message);
      return 2;
    }
    if (events->enabled && events->publisher == "zmq") {
      auto publisher = kvevents::Publisher::bind(*events);
      if (!publisher.ok()) {
        spdlog::error("{}", publisher.error().message);
        return 2;
      }
      kv_publisher = std::move(*publisher);
      config->kv_events = true;
      spdlog::info("KV events published on {} (topic '{}')", kv_publisher->endpoint(),
                   events->topic);
    }
  }
  const fs::path model_path = fs::absolute(options.model_dir).lexically_normal();
  std::string name = options.served_model_name;
  if (name.empty()) name = model_path.filename().string();

  asio::io_context io(1);
  EngineSimServer sim(options, *config, name, model_path.string());
  // Adapters served from the start: checked now, so that a bad one stops
  // the start with its reason (as vLLM does).
  for (const std::string& text : options.lora_modules) {
    auto module = parse_lora_module(text);
    if (!module.ok()) {
      spdlog::error("{}", module.error().message);
      return 2;
    }
    auto info = model::read_adapter(module->path);
    if (!info.ok()) {
      spdlog::error("--lora-modules {}: {}", module->name, info.error().message);
      return 2;
    }
    if (info->rank > options.max_lora_rank) {
      spdlog::error("--lora-modules {}: LoRA rank {} is greater than max_lora_rank {}.",
                    module->name, info->rank, options.max_lora_rank);
      return 2;
    }
    sim.add_adapter(module->name, module->path, io.get_executor(), [name = module->name](Status s) {
      if (!s.ok()) spdlog::error("--lora-modules {}: {}", name, s.error().message);
    });
  }
  http::ServerOptions server_options;
  server_options.host = options.host;
  server_options.port = options.port;
  server_options.max_body_bytes = options.max_body_bytes;
  server_options.idle_timeout_s = options.keep_alive_timeout_s;
  server_options.error_body = openai::error_body_for;
  auto server =
      http::Server::create({&io}, server_options, [&sim](Exchange& ex) { return sim.handle(ex); });
  if (!server.ok()) {
    spdlog::error("{}", server.error().message);
    return 1;
  }
  (*server)->start();
  const uint16_t port = (*server)->port();
  if (!options.port_file.empty()) {
    if (Status s = write_port_file(options.port_file, port); !s.ok()) {
      spdlog::error("{}", s.error().message);
      return 1;
    }
  }
  spdlog::info(
      "engine-sim serving model '{}' on http://{}:{} (profile {}, {} KV blocks of {} tokens, "
      "max_model_len {}, time scale {})",
      name, options.host, port, options.profile.empty() ? kDefaultProfile : options.profile,
      config->num_gpu_blocks, config->block_size, config->max_model_len, options.time_scale);
  sim.loop().start(kv_publisher.get());

  // Weights are read on their own thread; /health turns 200 when they are in.
  std::atomic<int> exit_code{0};
  std::thread loader([&] {
    auto report = model::load_weights(model_path);
    if (!report.ok()) {
      spdlog::error("cannot load the model: {}", report.error().message);
      exit_code = 1;
      asio::post(io, [&io] { io.stop(); });
      return;
    }
    sim.metrics().set_load(report->seconds, report->bytes);
    spdlog::info("loaded {} tensors ({:.1f} MiB) from {} files in {:.3f}s ({:.0f} MiB/s); ready",
                 report->tensors, report->bytes / 1048576.0, report->files, report->seconds,
                 report->bytes / 1048576.0 / std::max(report->seconds, 1e-9));
    asio::post(io, [&sim] { sim.set_ready(); });
  });

  asio::signal_set signals(io, SIGINT, SIGTERM);
  http::Server* srv = server->get();
  signals.async_wait([&](boost::system::error_code ec, int signal) {
    if (ec) return;
    spdlog::info("signal {}: draining {} in-flight requests", signal, sim.loop().in_flight());
    asio::co_spawn(io, drain_and_stop(io, sim.loop(), *srv, options.drain_timeout_s),
                   asio::detached);
  });
  io.run();
  loader.join();
  sim.loop().stop();
  return exit_code;
}

}  // namespace loadstar::enginesim
