#include "enginesim/server.h"

#include <charconv>

#include <spdlog/spdlog.h>
#include <xxhash.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <nlohmann/json.hpp>

#include "enginesim/responses.h"
#include "model/lora_adapter.h"
#include "tokenizer/tokenizer.h"

namespace loadstar::enginesim {

namespace asio = boost::asio;
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

}  // namespace

EngineSimServer::EngineSimServer(const EngineSimOptions& options, engine::EngineConfig config,
                                 std::string model_name, std::string model_root,
                                 std::optional<KvTransferSettings> kv)
    : options_(options),
      model_name_(std::move(model_name)),
      model_root_(std::move(model_root)),
      metrics_(model_name_, config, options.time_scale),
      loop_(std::move(config), options.time_scale, &metrics_),
      kv_(std::move(kv)) {
  if (kv_ && kv_->consumes()) kv_reader_ = std::make_unique<KvReader>();
}

// Registers an adapter read from `path` (checked here: its files, its
// rank), then in the engine core; `done` gets the outcome on `executor`.
void EngineSimServer::add_adapter(const std::string& name, const std::string& path,
                                  asio::any_io_executor executor,
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
      done(make_error(ErrorCode::kInvalidArgument, "The lora adapter '{}' has already been loaded.",
                      name));
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

asio::awaitable<void> EngineSimServer::handle(Exchange& ex) {
  const http::Request& req = ex.request();
  const std::string_view path = req.path();
  const bool get = req.method == "GET";
  const bool post = req.method == "POST";
  // GCC 12 destroys some temporaries of a co_await expression twice, so
  // every coroutine argument below is a named local, moved in.
  http::Response response;
  if (path == "/health" && get) {
    std::string waiting;
    if (std::lock_guard lock(group_mu_); group_ && !group_->complete())
      waiting = fmt::format("waiting for the group's nodes ({} of {} joined)\n", group_->joined(),
                            options_.nnodes - 1);
    response = !ready_            ? http::Response{503, "text/plain", "loading model weights\n"}
               : !waiting.empty() ? http::Response{503, "text/plain", waiting}
                                  : http::Response{200, "text/plain", ""};
  } else if (path == "/group/heartbeat" && post && group_) {
    const nlohmann::json body = nlohmann::json::parse(req.body, nullptr, false);
    const bool numeric =
        body.is_object() && body.contains("rank") && body["rank"].is_number_unsigned();
    std::lock_guard lock(group_mu_);
    if (numeric && group_->heartbeat(body["rank"].get<uint32_t>(), group_now()))
      response = {200, "application/json", "{}"};
    else
      response = {400, "application/json",
                  fmt::format(R"({{"error":"rank must be 1 to {}"}})", options_.nnodes - 1)};
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
  } else if (path == "/tokenize" && post) {
    co_await injected_delay();
    response = tokenize(req.body);
  } else if (path == "/kv_transfer/read" && post && kv_ && kv_->produces()) {
    co_await read_held_kv(ex);
    co_return;
  } else if ((path == "/v1/load_lora_adapter" || path == "/v1/unload_lora_adapter") && post &&
             runtime_lora_updates()) {
    co_await change_adapter(ex, path == "/v1/load_lora_adapter");
    co_return;
  } else {
    const bool known = path == "/health" || path == "/metrics" || path == "/v1/models" ||
                       path == "/version" || path == "/v1/chat/completions" ||
                       path == "/v1/completions" || path == "/v1/embeddings" || path == "/tokenize";
    ApiError e{known ? 405 : 404, fmt::format("no route for {} {}", req.method, path), {}};
    response = {e.status, "application/json", openai::error_body(e)};
  }
  co_await ex.respond(std::move(response));
}

// vLLM registers the two routes only with VLLM_ALLOW_RUNTIME_LORA_UPDATING.
bool EngineSimServer::runtime_lora_updates() const {
  if (!options_.enable_lora) return false;
  const char* v = std::getenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING");
  return v && (std::string_view(v) == "1" || std::string_view(v) == "true" ||
               std::string_view(v) == "True");
}

// The adapter a request's `model` names: 0 for the base model, nullopt
// for a name neither is.
std::optional<uint32_t> EngineSimServer::model_id(const std::string& model) {
  if (model == model_name_) return 0;
  std::lock_guard lock(adapters_mu_);
  auto it = adapters_.find(model);
  if (it == adapters_.end()) return std::nullopt;
  return it->second.id;
}

asio::awaitable<void> EngineSimServer::injected_delay() {
  if (options_.fault_delay_s <= 0) co_return;
  asio::steady_timer delay(co_await asio::this_coro::executor);
  delay.expires_after(
      std::chrono::microseconds(static_cast<int64_t>(options_.fault_delay_s * 1e6)));
  co_await delay.async_wait(asio::use_awaitable);
}

http::Response EngineSimServer::tokenize(std::string_view body) {
  auto refuse = [](ApiError e) {
    return http::Response{e.status, "application/json", openai::error_body(e)};
  };
  nlohmann::json doc = nlohmann::json::parse(body, nullptr, false);
  if (!doc.is_object()) return refuse({400, "the body must be a JSON object", {}});
  // `model` is optional here, as in vLLM; when given it must be served.
  if (!doc.contains("model")) {
    doc["model"] = model_name_;
  } else if (!doc["model"].is_string() || !model_id(doc["model"].get<std::string>())) {
    return refuse(
        {404, fmt::format("The model `{}` does not exist.", doc["model"].dump()), "model"});
  }
  const Endpoint endpoint =
      doc.contains("messages") ? Endpoint::kChatCompletions : Endpoint::kCompletions;
  auto parsed = openai::parse_request(endpoint, doc.dump());
  if (!parsed.ok()) return refuse(openai::to_api_error(parsed.error()));
  std::vector<engine::TokenId> ids;
  openai::prompt_tokens(*parsed, 0, ids);
  const nlohmann::json out = {{"count", ids.size()},
                              {"max_model_len", loop_.core().config().max_model_len},
                              {"tokens", ids}};
  return {200, "application/json", out.dump()};
}

std::string EngineSimServer::models_json() {
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
asio::awaitable<void> EngineSimServer::change_adapter(Exchange& ex, bool load) {
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
  Status outcome = ok_status();
  if (load) {
    auto start_load = [&](std::function<void(Status)> done) {
      add_adapter(name, path, ex.executor(), std::move(done));
    };
    auto executor = ex.executor();
    outcome = co_await completion(start_load, executor);
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
    auto start_unload = [&](std::function<void(Status)> done) {
      loop_.control([id = *id](engine::EngineCore& core) { return core.remove_adapter(id); },
                    ex.executor(),
                    [this, name, done = std::move(done)](Status s) {
                      if (s.ok()) {
                        std::lock_guard lock(adapters_mu_);
                        adapters_.erase(name);
                      }
                      done(std::move(s));
                    });
    };
    auto executor = ex.executor();
    outcome = co_await completion(start_unload, executor);
  }
  if (!outcome.ok()) {
    const int status = outcome.error().code == ErrorCode::kUnavailable ? 409 : 400;
    ApiError e{status, outcome.error().message, {}};
    co_await respond_error(ex, std::move(e));
    co_return;
  }
  http::Response ok{
      200, "text/plain",
      fmt::format("Success: LoRA adapter '{}' {} successfully.", name, load ? "added" : "removed")};
  co_await ex.respond(std::move(ok));
}

// Calls `start` with a `done` that it (or what it starts) calls once, at
// once or later on `executor`; resumes here with what `done` got.
asio::awaitable<Status> EngineSimServer::completion(
    const std::function<void(std::function<void(Status)>)>& start, asio::any_io_executor executor) {
  struct Pending {
    explicit Pending(asio::any_io_executor e) : wait(std::move(e), std::chrono::hours(24)) {}
    asio::steady_timer wait;
    Status outcome;
    bool finished = false;
  };
  auto pending = std::make_shared<Pending>(executor);  // outlives this frame if need be
  start([pending](Status s) {
    pending->outcome = std::move(s);
    pending->finished = true;
    pending->wait.cancel();
  });
  if (!pending->finished) co_await pending->wait.async_wait(asio::as_tuple(asio::use_awaitable));
  co_return pending->outcome;
}

// Runs `fn` on the engine thread between steps; resumes here with its Status.
asio::awaitable<Status> EngineSimServer::on_engine(std::function<Status(engine::EngineCore&)> fn,
                                                   asio::any_io_executor executor) {
  auto start = [&](std::function<void(Status)> done) {
    loop_.control(std::move(fn), executor, std::move(done));
  };
  Status outcome = co_await completion(start, executor);
  co_return outcome;
}

// The side channel: a decode engine reads the KV a prefill left held here
// (and so frees it). Only what the engine id and request id name.
asio::awaitable<void> EngineSimServer::read_held_kv(Exchange& ex) {
  auto read = parse_kv_read_request(ex.request().body);
  if (!read.ok()) {
    ApiError e{400, read.error().message, {}};
    co_await respond_error(ex, std::move(e));
    co_return;
  }
  uint64_t id = 0;
  const auto [end, ec] = std::from_chars(read->request_id.data(),
                                         read->request_id.data() + read->request_id.size(), id);
  if (read->engine_id != kv_->engine_id || ec != std::errc() ||
      end != read->request_id.data() + read->request_id.size()) {
    ApiError e{404,
               fmt::format("no KV held for request '{}' of engine '{}' here (this engine is "
                           "'{}')",
                           read->request_id, read->engine_id, kv_->engine_id),
               {}};
    co_await respond_error(ex, std::move(e));
    co_return;
  }
  auto held = std::make_shared<engine::HeldKv>();
  std::function<Status(engine::EngineCore&)> release = [held, id](engine::EngineCore& core) {
    auto kv = core.release_held(id);
    if (!kv.ok()) return Status(std::move(kv).error());
    *held = std::move(kv).value();
    return ok_status();
  };
  auto executor = ex.executor();
  auto pending = on_engine(std::move(release), executor);
  const Status released = co_await std::move(pending);
  if (!released.ok()) {
    ApiError e{404, released.error().message, {}};
    co_await respond_error(ex, std::move(e));
    co_return;
  }
  http::Response ok{200, "application/json", kv_read_reply_json(*held)};
  co_await ex.respond(std::move(ok));
}

// A decode's prompt KV, read from the prefill its params name. Ok: the
// core receives it instead of computing it.
asio::awaitable<Status> EngineSimServer::receive_kv(const KvTransferParams& params,
                                                    const std::vector<engine::TokenId>& prompt,
                                                    engine::BlockHash root) {
  KvTransferParams copy = params;
  auto pending = kv_reader_->read(std::move(copy));
  Result<engine::HeldKv> held = co_await std::move(pending);
  if (!held.ok()) co_return std::move(held).error();
  co_return check_received_blocks(*held, prompt, loop_.core().config().block_size, root);
}

asio::awaitable<void> EngineSimServer::respond_error(Exchange& ex, ApiError error) {
  std::vector<http::Header> headers;
  if (error.status == 503) headers.push_back({"Retry-After", "1"});
  http::Response response{error.status, "application/json", openai::error_body(error),
                          std::move(headers)};
  co_await ex.respond(std::move(response));
}

asio::awaitable<void> EngineSimServer::generate(Exchange& ex, Endpoint endpoint) {
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
  co_await injected_delay();
  if (options_.fault_error_rate > 0 && fault_draw() < options_.fault_error_rate) {
    ApiError error{500, "injected fault (engine-sim --fault-error-rate)", {}};
    co_await respond_error(ex, std::move(error));
    co_return;
  }
  if (endpoint == Endpoint::kEmbeddings) {
    co_await embed(ex, std::move(request));
    co_return;
  }
  std::optional<KvTransferParams> kv_params;
  if (kv_) {
    auto parsed_params = parse_kv_transfer_params(ex.request().body);
    if (!parsed_params.ok()) {
      ApiError error{400, parsed_params.error().message, "kv_transfer_params"};
      co_await respond_error(ex, std::move(error));
      co_return;
    }
    kv_params = std::move(parsed_params).value();
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
  // A prefill for a decode engine holds its blocks for it (a stream could
  // not carry the params back, so only whole responses do).
  nr.hold_kv = kv_params && kv_params->do_remote_decode && kv_->produces() && !request.stream;
  if (kv_params && kv_params->do_remote_prefill && kv_->consumes()) {
    const engine::BlockHash root =
        *adapter ? XXH3_64bits(request.model.data(), request.model.size()) : 0;
    auto receiving = receive_kv(*kv_params, nr.prompt, root);
    const Status received = co_await std::move(receiving);
    if (received.ok()) {
      nr.remote_kv = true;
    } else {
      metrics_.count_kv_transfer_failure();
      spdlog::warn("KV transfer from {}:{} failed ({}): {}", kv_params->remote_host,
                   kv_params->remote_port,
                   kv_->recompute_on_failure ? "recomputing the prompt here" : "failing",
                   received.error().message);
      if (!kv_->recompute_on_failure) {
        ApiError error{503, "KV transfer failed: " + received.error().message, {}};
        co_await respond_error(ex, std::move(error));
        co_return;
      }
    }
  }
  const bool hold_kv = nr.hold_kv;
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
  ResponseEncoder encoder(endpoint, fmt::format("{}{:016x}", prefix, id ^ id_salt_), request.model,
                          unix_now(), request.include_usage);
  const auto& tok = tokenizer::Tokenizer::get();
  Usage usage{prompt_len, 0, 0};
  FinishReason finish = FinishReason::kNone;
  std::string text;    // non-streaming: the whole completion
  std::string events;  // streaming: this step's events
  bool started = false;
  std::vector<engine::RequestOutput> outputs;
  std::vector<engine::BlockId> held_blocks;  // a prefill's, for its decode engine
  while (finish == FinishReason::kNone) {
    const bool more = co_await channel->next(outputs);
    if (!more) break;
    events.clear();
    if (request.stream && !started) events = encoder.first_event();
    for (const engine::RequestOutput& out : outputs) {
      if (!out.held_blocks.empty()) held_blocks = out.held_blocks;
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
    std::string body = encoder.complete(text, finish, usage);
    if (hold_kv)
      body = with_kv_transfer_params(
          std::move(body),
          producer_params_json(*kv_, std::to_string(id), held_blocks, side_host_, side_port_));
    http::Response response{200, "application/json", std::move(body)};
    co_await ex.respond(std::move(response));
  }
}

asio::awaitable<void> EngineSimServer::embed(Exchange& ex, openai::CompletionRequest request) {
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
  http::Response response{200, "application/json",
                          embeddings_response(model_name_, vectors, request.base64, prompt_tokens)};
  co_await ex.respond(std::move(response));
}

}  // namespace loadstar::enginesim
