// KV-cache events: vLLM's wire format both ways, engine-sim's events from
// its prefix cache, and the gateway's index of what each engine holds.
#include <gtest/gtest.h>

#include <msgpuck.h>
#include <nlohmann/json.hpp>

#include "engine/engine_core.h"
#include "gateway/engine_tokens.h"
#include "gateway/kv_block_index.h"
#include "kvevents/kv_events.h"
#include "openai/protocol.h"

namespace loadstar {
namespace {

using gateway::KvBlockIndex;
using kvevents::AllBlocksCleared;
using kvevents::BlockRemoved;
using kvevents::BlockStored;
using kvevents::EventBatch;

std::vector<uint32_t> iota_tokens(uint32_t n, uint32_t from = 100) {
  std::vector<uint32_t> out(n);
  for (uint32_t i = 0; i < n; ++i) out[i] = from + i;
  return out;
}

TEST(KvEvents, ABatchSurvivesARoundTrip) {
  EventBatch b;
  b.ts = 1733360000.25;
  b.data_parallel_rank = 0;
  b.events.emplace_back(BlockStored{.block_hashes = {11, 12},
                                    .parent_block_hash = 10,
                                    .token_ids = iota_tokens(8),
                                    .block_size = 4,
                                    .lora_id = 3,
                                    .medium = "GPU",
                                    .lora_name = "sql"});
  b.events.emplace_back(BlockRemoved{.block_hashes = {10}, .medium = "GPU"});
  b.events.emplace_back(AllBlocksCleared{});
  auto d = kvevents::decode_batch(kvevents::encode_batch(b));
  ASSERT_TRUE(d.ok()) << d.error().message;
  EXPECT_DOUBLE_EQ(d->ts, b.ts);
  EXPECT_EQ(d->data_parallel_rank, 0);
  ASSERT_EQ(d->events.size(), 3u);
  const auto& s = std::get<BlockStored>(d->events[0]);
  EXPECT_EQ(s.block_hashes, (std::vector<uint64_t>{11, 12}));
  EXPECT_EQ(s.parent_block_hash, 10u);
  EXPECT_EQ(s.token_ids, iota_tokens(8));
  EXPECT_EQ(s.block_size, 4u);
  EXPECT_EQ(s.lora_id, 3);
  EXPECT_EQ(s.lora_name, "sql");
  EXPECT_EQ(std::get<BlockRemoved>(d->events[1]).block_hashes, (std::vector<uint64_t>{10}));
  EXPECT_TRUE(std::holds_alternative<AllBlocksCleared>(d->events[2]));
  EXPECT_EQ(kvevents::decode_sequence(kvevents::encode_sequence(0x0102030405060708ull)),
            0x0102030405060708ull);
  EXPECT_EQ(kvevents::encode_sequence(1), std::string("\0\0\0\0\0\0\0\1", 8));
}

// A batch as a recent vLLM writes it (msgspec, array_like, tagged): sha256
// block hashes as bytes, a parent, trailing fields this reader does not
// know (extra_keys, group_idx, kv_cache_spec_kind), an event kind it does
// not know, and no data_parallel_rank.
TEST(KvEvents, ReadsWhatVllmWrites) {
  std::string buf(4096, '\0');
  char* p = buf.data();
  p = mp_encode_array(p, 2);
  p = mp_encode_double(p, 1733360000.5);
  p = mp_encode_array(p, 3);
  p = mp_encode_array(p, 11);
  p = mp_encode_str(p, "BlockStored", 11);
  p = mp_encode_array(p, 1);
  p = mp_encode_bin(p, "0123456789abcdef0123456789abcdef", 32);
  p = mp_encode_bin(p, "fedcba9876543210fedcba9876543210", 32);  // the parent
  p = mp_encode_array(p, 2);
  p = mp_encode_uint(p, 128000);
  p = mp_encode_uint(p, 9906);
  p = mp_encode_uint(p, 2);  // block_size
  p = mp_encode_nil(p);      // lora_id
  p = mp_encode_str(p, "GPU", 3);
  p = mp_encode_nil(p);  // lora_name
  p = mp_encode_array(p, 1);
  p = mp_encode_nil(p);      // extra_keys
  p = mp_encode_uint(p, 0);  // group_idx
  p = mp_encode_str(p, "full_attention", 14);
  p = mp_encode_array(p, 2);
  p = mp_encode_str(p, "SomethingNew", 12);
  p = mp_encode_map(p, 0);
  p = mp_encode_array(p, 4);
  p = mp_encode_str(p, "BlockRemoved", 12);
  p = mp_encode_array(p, 1);
  p = mp_encode_bin(p, "0123456789abcdef0123456789abcdef", 32);
  p = mp_encode_str(p, "GPU", 3);
  p = mp_encode_uint(p, 0);
  buf.resize(static_cast<size_t>(p - buf.data()));

  auto d = kvevents::decode_batch(buf);
  ASSERT_TRUE(d.ok()) << d.error().message;
  EXPECT_FALSE(d->data_parallel_rank);
  ASSERT_EQ(d->events.size(), 2u);  // the unknown kind skipped
  const auto& s = std::get<BlockStored>(d->events[0]);
  ASSERT_EQ(s.block_hashes.size(), 1u);
  EXPECT_TRUE(s.parent_block_hash);
  EXPECT_EQ(s.token_ids, (std::vector<uint32_t>{128000, 9906}));
  EXPECT_FALSE(s.lora_id);
  EXPECT_EQ(s.medium, "GPU");
  // The same bytes name the same block in BlockRemoved.
  EXPECT_EQ(std::get<BlockRemoved>(d->events[1]).block_hashes, s.block_hashes);
}

// Newer engines encode each event as a map (msgspec without array_like,
// the tag under "type"), SGLang's with fields of its own and its data
// parallel rank as attn_dp_rank; the batch itself may be a map too.
TEST(KvEvents, ReadsEventsEncodedAsMaps) {
  auto str = [](char* p, std::string_view s) {
    return mp_encode_str(p, s.data(), static_cast<uint32_t>(s.size()));
  };
  std::string buf(512, '\0');
  char* p = buf.data();
  p = mp_encode_map(p, 3);
  p = str(p, "ts");
  p = mp_encode_double(p, 1733360000.5);
  p = str(p, "events");
  p = mp_encode_array(p, 3);
  p = mp_encode_map(p, 7);
  p = str(p, "type");
  p = str(p, "BlockStored");
  p = str(p, "block_hashes");
  p = mp_encode_array(p, 2);
  p = mp_encode_int(p, -5);  // SGLang's hashes are signed 64-bit
  p = mp_encode_uint(p, 7);
  p = str(p, "parent_block_hash");
  p = mp_encode_nil(p);
  p = str(p, "token_ids");
  p = mp_encode_array(p, 4);
  for (uint32_t t : {1u, 2u, 3u, 4u}) p = mp_encode_uint(p, t);
  p = str(p, "block_size");
  p = mp_encode_uint(p, 2);
  p = str(p, "cache_salt");  // not known here: skipped
  p = mp_encode_map(p, 1);
  p = str(p, "k");
  p = str(p, "v");
  p = str(p, "medium");
  p = str(p, "GPU");
  p = mp_encode_map(p, 2);
  p = str(p, "type");
  p = str(p, "SomethingNew");
  p = str(p, "x");
  p = mp_encode_array(p, 0);
  p = mp_encode_map(p, 2);
  p = str(p, "type");
  p = str(p, "BlockRemoved");
  p = str(p, "block_hashes");
  p = mp_encode_array(p, 1);
  p = mp_encode_uint(p, 7);
  p = str(p, "attn_dp_rank");
  p = mp_encode_uint(p, 1);
  buf.resize(static_cast<size_t>(p - buf.data()));

  auto d = kvevents::decode_batch(buf);
  ASSERT_TRUE(d.ok()) << d.error().message;
  EXPECT_EQ(d->ts, 1733360000.5);
  EXPECT_EQ(d->data_parallel_rank, 1);
  ASSERT_EQ(d->events.size(), 2u);  // the unknown kind skipped
  const auto& s = std::get<BlockStored>(d->events[0]);
  EXPECT_EQ(s.block_hashes, (std::vector<uint64_t>{static_cast<uint64_t>(-5), 7}));
  EXPECT_FALSE(s.parent_block_hash);
  EXPECT_EQ(s.token_ids, (std::vector<uint32_t>{1, 2, 3, 4}));
  EXPECT_EQ(s.block_size, 2u);
  EXPECT_EQ(s.medium, "GPU");
  EXPECT_EQ(std::get<BlockRemoved>(d->events[1]).block_hashes, (std::vector<uint64_t>{7}));

  // Array-encoded batch, map-encoded events (vLLM's newer form).
  std::string mixed(256, '\0');
  p = mixed.data();
  p = mp_encode_array(p, 2);
  p = mp_encode_double(p, 1.0);
  p = mp_encode_array(p, 1);
  p = mp_encode_map(p, 1);
  p = str(p, "type");
  p = str(p, "AllBlocksCleared");
  mixed.resize(static_cast<size_t>(p - mixed.data()));
  auto cleared = kvevents::decode_batch(mixed);
  ASSERT_TRUE(cleared.ok()) << cleared.error().message;
  ASSERT_EQ(cleared->events.size(), 1u);
  EXPECT_TRUE(std::holds_alternative<kvevents::AllBlocksCleared>(cleared->events[0]));

  // A map event's counts are checked as an array's are.
  std::string wrong(256, '\0');
  p = wrong.data();
  p = mp_encode_array(p, 2);
  p = mp_encode_double(p, 1.0);
  p = mp_encode_array(p, 1);
  p = mp_encode_map(p, 4);
  p = str(p, "type");
  p = str(p, "BlockStored");
  p = str(p, "block_hashes");
  p = mp_encode_array(p, 1);
  p = mp_encode_uint(p, 1);
  p = str(p, "token_ids");
  p = mp_encode_array(p, 1);
  p = mp_encode_uint(p, 1);
  p = str(p, "block_size");
  p = mp_encode_uint(p, 2);
  wrong.resize(static_cast<size_t>(p - wrong.data()));
  auto refused = kvevents::decode_batch(wrong);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.error().message.find("1 token ids for 1 blocks of 2"), std::string::npos)
      << refused.error().message;
}

TEST(KvEvents, MalformedBatchesAreRefusedByName) {
  EventBatch b;
  b.events.emplace_back(
      BlockStored{.block_hashes = {1}, .token_ids = iota_tokens(4), .block_size = 4});
  const std::string good = kvevents::encode_batch(b);
  auto truncated = kvevents::decode_batch(std::string_view(good).substr(0, good.size() - 1));
  ASSERT_FALSE(truncated.ok());
  EXPECT_NE(truncated.error().message.find("msgpack"), std::string::npos);
  EXPECT_FALSE(kvevents::decode_batch(good + "x").ok());
  EXPECT_FALSE(kvevents::decode_batch("").ok());

  b.events[0] = BlockStored{.block_hashes = {1, 2}, .token_ids = iota_tokens(5), .block_size = 4};
  auto counts = kvevents::decode_batch(kvevents::encode_batch(b));
  ASSERT_FALSE(counts.ok());
  EXPECT_NE(counts.error().message.find("5 token ids for 2 blocks of 4"), std::string::npos);

  // An array header claiming 2^32-1 elements (msgpuck's mp_check counts
  // them in an int, which wraps) is refused, not reserved or read past.
  std::string huge(64, '\0');
  char* p = huge.data();
  p = mp_encode_array(p, 2);
  p = mp_encode_double(p, 1);
  p = mp_encode_array(p, 1);
  p = mp_encode_array(p, 2);
  p = mp_encode_str(p, "BlockRemoved", 12);
  p = mp_encode_array(p, 0xFFFFFFFFu);
  huge.resize(static_cast<size_t>(p - huge.data()));
  EXPECT_FALSE(kvevents::decode_batch(huge).ok());

  b.events[0] = BlockStored{.block_hashes = {}, .token_ids = {}, .block_size = 0};
  auto size = kvevents::decode_batch(kvevents::encode_batch(b));
  ASSERT_FALSE(size.ok());
  EXPECT_NE(size.error().message.find("BlockStored.block_size"), std::string::npos);
}

TEST(KvEvents, ConfigIsVllmsFlag) {
  auto c = kvevents::parse_events_config(
      R"({"enable_kv_cache_events": true, "endpoint": "tcp://*:5557", "topic": "kv-events"})");
  ASSERT_TRUE(c.ok()) << c.error().message;
  EXPECT_TRUE(c->enabled);
  EXPECT_EQ(c->publisher, "zmq");  // vLLM's default once enabled
  EXPECT_EQ(c->endpoint, "tcp://*:5557");
  EXPECT_EQ(c->topic, "kv-events");
  auto round = kvevents::parse_events_config(kvevents::events_config_json("tcp://*:1", "t"));
  ASSERT_TRUE(round.ok());
  EXPECT_EQ(round->endpoint, "tcp://*:1");
  for (const char* bad : {"[]", R"({"publisher": "kafka"})", R"({"enable": true})",
                          R"({"replay_endpoint": "tcp://*:5558"})", R"({"hwm": -1})"}) {
    auto r = kvevents::parse_events_config(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_NE(r.error().message.find("--kv-events-config"), std::string::npos);
  }
}

EventBatch stored(std::vector<uint64_t> hashes, std::optional<uint64_t> parent,
                  std::vector<uint32_t> tokens, std::string lora = {}) {
  EventBatch b;
  b.events.emplace_back(BlockStored{.block_hashes = std::move(hashes),
                                    .parent_block_hash = parent,
                                    .token_ids = std::move(tokens),
                                    .block_size = 4,
                                    .lora_name = std::move(lora)});
  return b;
}

std::vector<uint32_t> matches(const KvBlockIndex& index, const std::vector<uint32_t>& prompt,
                              std::vector<uint64_t> engines, std::string_view lora = {}) {
  std::vector<uint32_t> out(engines.size());
  index.match(prompt, lora, engines, out);
  return out;
}

TEST(KvBlockIndex, FollowsWhatEachEngineStoresAndEvicts) {
  KvBlockIndex index;
  const auto prompt = iota_tokens(14);  // three full blocks of 4, and 2 tokens
  // Engine 1 stores the first two blocks, then the third under its parent;
  // engine 2 the first block only, under its own (different) hashes.
  index.apply(1, stored({501, 502}, std::nullopt, {prompt.begin(), prompt.begin() + 8}));
  index.apply(1, stored({503}, 502, {prompt.begin() + 8, prompt.begin() + 12}));
  index.apply(2, stored({9001}, std::nullopt, {prompt.begin(), prompt.begin() + 4}));
  EXPECT_EQ(matches(index, prompt, {1, 2, 3}), (std::vector<uint32_t>{12, 4, 0}));
  EXPECT_EQ(index.blocks(), 4u);
  // Another prompt sharing the first block only.
  auto other = prompt;
  other[5] = 7;
  EXPECT_EQ(matches(index, other, {1, 2}), (std::vector<uint32_t>{4, 4}));
  // An evicted middle block ends the match there.
  EventBatch removed;
  removed.events.emplace_back(BlockRemoved{.block_hashes = {502}});
  index.apply(1, removed);
  EXPECT_EQ(matches(index, prompt, {1}), (std::vector<uint32_t>{4}));
  // A block whose parent was never seen is skipped, not guessed.
  index.apply(2, stored({9003}, 9002, {prompt.begin() + 8, prompt.begin() + 12}));
  EXPECT_EQ(index.orphans(), 1u);
  EXPECT_EQ(matches(index, prompt, {2}), (std::vector<uint32_t>{4}));
  // All blocks cleared, and an engine forgotten.
  EventBatch cleared;
  cleared.events.emplace_back(AllBlocksCleared{});
  index.apply(1, cleared);
  EXPECT_EQ(matches(index, prompt, {1, 2}), (std::vector<uint32_t>{0, 4}));
  index.forget(2);
  EXPECT_EQ(index.blocks(), 0u);
}

TEST(KvBlockIndex, AnAdaptersBlocksAreItsOwn) {
  KvBlockIndex index;
  const auto prompt = iota_tokens(8);
  index.apply(1, stored({1, 2}, std::nullopt, prompt, "sql"));
  EXPECT_EQ(matches(index, prompt, {1}, "sql"), (std::vector<uint32_t>{8}));
  EXPECT_EQ(matches(index, prompt, {1}), (std::vector<uint32_t>{0}));
  // The same tokens cached twice under two engine hashes: evicting one
  // copy keeps the block, evicting both drops it.
  index.apply(1, stored({3}, std::nullopt, {prompt.begin(), prompt.begin() + 4}, "sql"));
  EventBatch removed;
  removed.events.emplace_back(BlockRemoved{.block_hashes = {1}});
  index.apply(1, removed);
  EXPECT_EQ(matches(index, prompt, {1}, "sql"), (std::vector<uint32_t>{8}));
  EXPECT_EQ(index.blocks(), 2u);
  removed.events[0] = BlockRemoved{.block_hashes = {3}};
  index.apply(1, removed);
  EXPECT_EQ(matches(index, prompt, {1}, "sql"), (std::vector<uint32_t>{0}));
  EXPECT_EQ(index.blocks(), 1u);
}

// engine-sim's own events, fed to the index, match the prompt as the
// gateway tokenizes it: the gateway and the engine name blocks alike.
TEST(KvBlockIndex, MatchesEngineSimsOwnEventsForTheGatewaysTokens) {
  engine::EngineConfig config;
  config.num_gpu_blocks = 64;
  config.block_size = 16;
  config.max_model_len = 1024;
  config.kv_events = true;
  engine::EngineCore core(config);
  std::string document;
  for (int i = 0; i < 120; ++i) document += " word" + std::to_string(i);
  const std::string body =
      R"({"model": "m", "max_tokens": 2, "ignore_eos": true, "messages": [{"role": "system", "content": ")" +
      document + R"("}, {"role": "user", "content": "Summarise it."}]})";
  auto request = openai::parse_request(openai::Endpoint::kChatCompletions, body);
  ASSERT_TRUE(request.ok()) << request.error().message;
  engine::NewRequest r;
  r.id = 1;
  openai::prompt_tokens(*request, 0, r.prompt);
  r.sampling.max_tokens = 2;
  r.sampling.ignore_eos = true;
  ASSERT_TRUE(core.add_request(r, 0).ok());
  double now = 0;
  while (core.has_work()) now += core.step(now).duration;

  // The engine's own ids for the prompt (what its POST /tokenize answers).
  const std::vector<uint32_t> tokens(r.prompt.begin(), r.prompt.end());

  KvBlockIndex index;
  EventBatch batch;
  batch.events = core.take_kv_events();
  ASSERT_FALSE(batch.events.empty());
  index.apply(7, batch);
  std::vector<uint32_t> matched(1);
  const uint64_t id = 7;
  index.match(tokens, "", std::span(&id, 1), matched);
  EXPECT_EQ(matched[0], tokens.size() / 16 * 16);

  // A second prompt evicts (the pool is small): the engine says which.
  engine::NewRequest big;
  big.id = 2;
  for (uint32_t i = 0; i < 60 * 16; ++i) big.prompt.push_back(5000 + i);
  big.sampling.max_tokens = 1;
  ASSERT_TRUE(core.add_request(big, now).ok());
  while (core.has_work()) now += core.step(now).duration;
  batch.events = core.take_kv_events();
  bool removed = false;
  for (const auto& e : batch.events) removed |= std::holds_alternative<BlockRemoved>(e);
  EXPECT_TRUE(removed);
  index.apply(7, batch);
  index.match(tokens, "", std::span(&id, 1), matched);
  EXPECT_LT(matched[0], tokens.size() / 16 * 16);
}

// The gateway asks an engine for a prompt's ids as vLLM's POST /tokenize
// takes them: a chat's messages with everything that changes the rendered
// template, a completion's first prompt; ids given in the request are used
// as they are.
TEST(EngineTokens, AsksAsVllmsTokenizeTakesIt) {
  const nlohmann::json chat = nlohmann::json::parse(gateway::tokenize_ask(R"({
    "model": "alias", "stream": true, "max_tokens": 5, "temperature": 0,
    "messages": [{"role": "user", "content": "hi"}],
    "tools": [{"type": "function", "function": {"name": "f"}}],
    "chat_template_kwargs": {"enable_thinking": false}, "add_generation_prompt": true})",
                                                                          true, "served")
                                                        .body);
  EXPECT_EQ(chat, nlohmann::json::parse(R"({
    "model": "served", "messages": [{"role": "user", "content": "hi"}],
    "tools": [{"type": "function", "function": {"name": "f"}}],
    "chat_template_kwargs": {"enable_thinking": false}, "add_generation_prompt": true})"));

  auto completion = gateway::tokenize_ask(
      R"({"model": "m", "prompt": ["first", "second"], "add_special_tokens": false})", false,
      "served");
  EXPECT_FALSE(completion.ids);
  EXPECT_EQ(nlohmann::json::parse(completion.body),
            nlohmann::json::parse(
                R"({"model": "served", "prompt": "first", "add_special_tokens": false})"));

  auto ids = gateway::tokenize_ask(R"({"model": "m", "prompt": [[7, 8, 9], [1]]})", false, "s");
  ASSERT_TRUE(ids.ids);
  EXPECT_EQ(*ids.ids, (std::vector<uint32_t>{7, 8, 9}));
  EXPECT_TRUE(ids.body.empty());
  ids = gateway::tokenize_ask(R"({"model": "m", "prompt": [3, 4]})", false, "s");
  ASSERT_TRUE(ids.ids);
  EXPECT_EQ(*ids.ids, (std::vector<uint32_t>{3, 4}));

  // Nothing to ask: the engine refuses such a request itself.
  for (const char* body :
       {"[1]", R"({"model": "m"})", R"({"prompt": 5})", "not json", R"({"prompt": [-1, 2]})"}) {
    auto none = gateway::tokenize_ask(body, false, "s");
    EXPECT_TRUE(none.body.empty()) << body;
    EXPECT_FALSE(none.ids && !none.ids->empty()) << body;
  }
  EXPECT_TRUE(gateway::tokenize_ask(R"({"prompt": "x"})", true, "s").body.empty());
}

// The ask carries the client's own JSON text of each field (not a
// re-serialization: prompts are long), the served name escaped, the last
// of a repeated field.
TEST(EngineTokens, PassesTheClientsOwnText) {
  auto ask = gateway::tokenize_ask(
      "{\"prompt\" : \"caf\\u00e9 \\\"x\\\"\\n\"  , \"add_special_tokens\":false\t}", false,
      "we\"ird");
  EXPECT_NE(ask.body.find(R"("prompt":"caf\u00e9 \"x\"\n")"), std::string::npos) << ask.body;
  const nlohmann::json parsed = nlohmann::json::parse(ask.body);
  EXPECT_EQ(parsed, nlohmann::json({{"model", "we\"ird"},
                                    {"prompt", "caf\u00e9 \"x\"\n"},
                                    {"add_special_tokens", false}}));
  ask = gateway::tokenize_ask(R"({"prompt": [1, 2], "prompt": "later"})", false, "s");
  EXPECT_FALSE(ask.ids);
  EXPECT_EQ(nlohmann::json::parse(ask.body), nlohmann::json({{"model", "s"}, {"prompt", "later"}}));
  ask = gateway::tokenize_ask(R"({"prompt": "earlier", "prompt": [[5, 6]]})", false, "s");
  ASSERT_TRUE(ask.ids);
  EXPECT_EQ(*ask.ids, (std::vector<uint32_t>{5, 6}));
  EXPECT_TRUE(ask.body.empty());
  ask = gateway::tokenize_ask(
      R"({"messages": [{"role": "user", "content": "a"}], "tools": null, "messages": [] })", true,
      "s");
  EXPECT_EQ(nlohmann::json::parse(ask.body),
            nlohmann::json::parse(R"({"model": "s", "messages": [], "tools": null})"));
  EXPECT_TRUE(gateway::tokenize_ask(R"({"prompt": [], "n": 1})", false, "s").ids);
  // Misspelled literals and bad escapes are not passed on.
  for (const char* body :
       {R"({"prompt": "x", "add_special_tokens": tru})", R"({"prompt": "bad \q escape"})",
        R"({"prompt": "x", "add_special_tokens": nul})"})
    EXPECT_TRUE(gateway::tokenize_ask(body, false, "s").body.empty()) << body;
  EXPECT_TRUE(gateway::tokenize_ask(R"({"messages": [], "add_generation_prompt": fals})", true, "s")
                  .body.empty());
}

TEST(EngineTokens, ReadsTheTokensOfAnAnswer) {
  auto ids = gateway::parse_tokenize_response(
      R"({"count": 3, "max_model_len": 4096, "tokens": [128000, 9906, 0], "token_strs": null})");
  ASSERT_TRUE(ids.ok()) << ids.error().message;
  EXPECT_EQ(*ids, (std::vector<uint32_t>{128000, 9906, 0}));
  for (const char* bad :
       {"", "{}", R"({"tokens": "1 2"})", R"({"tokens": [1, -2]})",
        R"({"tokens": [1, 4294967296]})", R"({"tokens": [1.5]})", R"({"tokens": [1, 2)"}) {
    auto r = gateway::parse_tokenize_response(bad);
    EXPECT_FALSE(r.ok()) << bad;
  }
}

}  // namespace
}  // namespace loadstar
