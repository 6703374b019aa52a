#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "model/gguf.h"
#include "model/lora_adapter.h"
#include "model/model_dir.h"
#include "model/safetensors.h"

namespace loadstar::model {
namespace {

namespace fs = std::filesystem;

TEST(Safetensors, ParsesAValidHeader) {
  std::vector<TensorInfo> tensors = {{"a", "BF16", {2, 3}, 0, 12}, {"b", "F32", {4}, 12, 28}};
  std::string header = build_safetensors_header(tensors, {{"format", "pt"}});
  EXPECT_EQ(header.size() % 8, 0u);
  auto parsed = parse_safetensors_header(header, 8 + header.size() + 28);
  ASSERT_TRUE(parsed.ok()) << parsed.error().message;
  ASSERT_EQ(parsed->tensors.size(), 2u);
  EXPECT_EQ(parsed->tensors[1].name, "b");
  EXPECT_EQ(parsed->metadata.at("format"), "pt");
  EXPECT_EQ(parsed->data_offset, 8 + header.size());
}

TEST(Safetensors, RejectsCorruptHeaders) {
  struct Case {
    std::string json;
    uint64_t data_bytes;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {"not json", 0, "not a JSON object"},
      {R"({"a":{"dtype":"Q9","shape":[1],"data_offsets":[0,1]}})", 1, "unknown dtype"},
      {R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,1]}})", 1, "bytes for a U8 tensor"},
      {R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})", 2, "outside"},
      {R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})", 2, "gap or overlap"},
      {R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", 5, "cover 1 bytes"},
      {R"({"a":{"dtype":"U8","shape":[4294967296,4294967296,16],"data_offsets":[0,0]}})", 0,
       "elements"},
      {R"({"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}})", 1, "non-integer"},
  };
  for (const Case& c : cases) {
    auto parsed = parse_safetensors_header(c.json, 8 + c.json.size() + c.data_bytes);
    ASSERT_FALSE(parsed.ok()) << c.json;
    EXPECT_NE(parsed.error().message.find(c.expect), std::string::npos) << parsed.error().message;
  }
}

class ModelDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("loadstar-model-test-" + std::to_string(::getpid()));
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TEST_F(ModelDirTest, SynthWritesAModelThatLoadsCompletely) {
  SynthOptions options;
  options.size_bytes = 24ull << 20;
  options.max_shard_bytes = 6ull << 20;
  options.output = dir_ / "m";
  auto report = synth_model(options);
  ASSERT_TRUE(report.ok()) << report.error().message;
  EXPECT_GT(report->shards, 2u);
  EXPECT_LE(report->bytes, options.size_bytes);
  EXPECT_GT(report->bytes, options.size_bytes * 3 / 4);
  auto config = read_model_config(options.output);
  ASSERT_TRUE(config.ok());
  EXPECT_EQ(config->architecture, "LlamaForCausalLM");
  EXPECT_EQ(config->num_hidden_layers, report->config.num_hidden_layers);
  auto loaded = load_weights(options.output);
  ASSERT_TRUE(loaded.ok()) << loaded.error().message;
  EXPECT_EQ(loaded->bytes, report->bytes);
  EXPECT_EQ(loaded->tensors, report->tensors);
  EXPECT_EQ(loaded->files, report->shards);
  // Nothing but the model is left behind (no temporary directory).
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 1);
  // Synth refuses to overwrite.
  EXPECT_FALSE(synth_model(options).ok());
}

TEST_F(ModelDirTest, LoadRejectsATruncatedShardAndAnEscapingIndex) {
  SynthOptions options;
  options.size_bytes = 8ull << 20;
  options.output = dir_ / "m";
  ASSERT_TRUE(synth_model(options).ok());
  const fs::path shard = dir_ / "m" / "model.safetensors";
  ASSERT_TRUE(fs::exists(shard));
  fs::resize_file(shard, fs::file_size(shard) - 100);
  auto loaded = load_weights(dir_ / "m");
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.error().message.find("model.safetensors"), std::string::npos)
      << loaded.error().message;

  std::ofstream(dir_ / "m" / "model.safetensors.index.json")
      << R"({"weight_map":{"x":"../../etc/passwd"}})";
  loaded = load_weights(dir_ / "m");
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.error().message.find("not a file in the directory"), std::string::npos);
}

// A vocabulary-only GGUF as llama.cpp ships them: tokenizer keys, no tensors.
std::string vocab_gguf(uint64_t tokens) {
  std::string out;
  auto u32 = [&](uint32_t v) { out.append(reinterpret_cast<const char*>(&v), 4); };
  auto u64 = [&](uint64_t v) { out.append(reinterpret_cast<const char*>(&v), 8); };
  auto str = [&](std::string_view s) {
    u64(s.size());
    out.append(s);
  };
  out += "GGUF";
  u32(3);
  u64(0);  // tensors
  u64(3);  // metadata
  str("general.architecture");
  u32(8);
  str("llama");
  str("tokenizer.ggml.model");
  u32(8);
  str("gpt2");
  str("tokenizer.ggml.tokens");
  u32(9);
  u32(8);
  u64(tokens);
  for (uint64_t i = 0; i < tokens; ++i) str("t" + std::to_string(i));
  return out;
}

TEST_F(ModelDirTest, GgufSynthWritesALlamaModelWithTheVocabularysTokenizer) {
  fs::create_directories(dir_);
  { std::ofstream(dir_ / "vocab.gguf", std::ios::binary) << vocab_gguf(1000); }
  auto report = synth_gguf({.size_bytes = 4 << 20,
                            .output = dir_ / "m.gguf",
                            .vocab = dir_ / "vocab.gguf",
                            .name = "tiny",
                            .context_length = 2048,
                            .seed = 7});
  ASSERT_TRUE(report.ok()) << report.error().message;
  EXPECT_EQ(report->vocab, 1000u);
  EXPECT_GE(report->layers, 2u);
  EXPECT_EQ(fs::file_size(dir_ / "m.gguf"), report->bytes);
  EXPECT_LE(report->bytes, (4u << 20) + (1u << 20));
  EXPECT_FALSE(fs::exists(dir_ / "m.gguf.partial"));

  auto header = read_gguf_header(dir_ / "m.gguf");
  ASSERT_TRUE(header.ok()) << header.error().message;
  EXPECT_EQ(header->string_value("general.architecture"), "llama");
  EXPECT_EQ(header->string_value("tokenizer.ggml.model"), "gpt2");  // copied verbatim
  EXPECT_EQ(header->find("tokenizer.ggml.tokens")->count, 1000u);
  EXPECT_EQ(header->unsigned_value("llama.context_length"), 2048u);
  EXPECT_EQ(header->unsigned_value("llama.block_count"), report->layers);
  EXPECT_EQ(header->unsigned_value("llama.embedding_length"), report->embedding);
  ASSERT_EQ(header->tensors.size(), report->tensors);
  EXPECT_EQ(header->tensors[0].name, "token_embd.weight");
  EXPECT_EQ(header->tensors[0].dims, (std::vector<uint64_t>{report->embedding, 1000}));
  // The last tensor's data ends at the end of the file.
  const GgufTensorInfo& last = header->tensors.back();
  uint64_t elements = 1;
  for (uint64_t d : last.dims) elements *= d;
  EXPECT_EQ(header->data_offset + last.offset + elements * 2, report->bytes);
  // Seeded: the same seed writes the same bytes.
  ASSERT_TRUE(synth_gguf({.size_bytes = 4 << 20,
                          .output = dir_ / "again.gguf",
                          .vocab = dir_ / "vocab.gguf",
                          .name = "tiny",
                          .context_length = 2048,
                          .seed = 7})
                  .ok());
  std::ifstream a(dir_ / "m.gguf", std::ios::binary), b(dir_ / "again.gguf", std::ios::binary);
  EXPECT_TRUE(std::equal(std::istreambuf_iterator<char>(a), {}, std::istreambuf_iterator<char>(b)));
}

// A llama.cpp LoRA adapter of a GGUF model: general.type adapter, a
// lora_a ([in, rank]) and lora_b ([rank, out]) pair for attn_q and attn_v
// of every layer, shaped as llama.cpp checks them against the base; read
// back for its rank. A model is not an adapter.
TEST_F(ModelDirTest, GgufAdapterMatchesItsBaseAndReadsBack) {
  fs::create_directories(dir_);
  { std::ofstream(dir_ / "vocab.gguf", std::ios::binary) << vocab_gguf(1000); }
  auto base =
      synth_gguf({.size_bytes = 4 << 20, .output = dir_ / "m.gguf", .vocab = dir_ / "vocab.gguf"});
  ASSERT_TRUE(base.ok()) << base.error().message;
  auto adapter =
      synth_gguf_adapter({.base = dir_ / "m.gguf", .output = dir_ / "a.gguf", .rank = 4});
  ASSERT_TRUE(adapter.ok()) << adapter.error().message;
  EXPECT_EQ(adapter->format, "gguf");
  EXPECT_EQ(adapter->rank, 4u);
  EXPECT_EQ(adapter->base_model, "llama");
  EXPECT_EQ(adapter->target_modules, (std::vector<std::string>{"attn_q", "attn_v"}));
  EXPECT_EQ(adapter->tensors, 4 * base->layers);
  EXPECT_EQ(adapter->bytes, fs::file_size(dir_ / "a.gguf"));
  auto header = read_gguf_header(dir_ / "a.gguf");
  ASSERT_TRUE(header.ok());
  EXPECT_EQ(header->string_value("general.type"), "adapter");
  EXPECT_EQ(header->string_value("adapter.type"), "lora");
  const uint64_t e = base->embedding;
  EXPECT_EQ(header->tensors[0].name, "blk.0.attn_q.weight.lora_a");
  EXPECT_EQ(header->tensors[0].dims, (std::vector<uint64_t>{e, 4}));
  EXPECT_EQ(header->tensors[1].name, "blk.0.attn_q.weight.lora_b");
  EXPECT_EQ(header->tensors[1].dims, (std::vector<uint64_t>{4, e}));
  auto again = read_adapter(dir_ / "a.gguf");  // by file
  ASSERT_TRUE(again.ok()) << again.error().message;
  EXPECT_EQ(again->rank, 4u);
  auto not_adapter = read_gguf_adapter(dir_ / "m.gguf");
  ASSERT_FALSE(not_adapter.ok());
  EXPECT_NE(not_adapter.error().message.find("not a LoRA adapter"), std::string::npos);
  EXPECT_FALSE(synth_gguf_adapter({.base = dir_ / "a.gguf", .output = dir_ / "b.gguf"}).ok());
}

TEST(Gguf, CorruptHeadersAreClearErrors) {
  const std::string good = vocab_gguf(3);
  ASSERT_TRUE(parse_gguf_header(good).ok());
  EXPECT_EQ(parse_gguf_header(good.substr(0, good.size() - 1)).error().code,
            ErrorCode::kOutOfRange);  // read more
  EXPECT_EQ(parse_gguf_header("GGML....").error().code, ErrorCode::kCorrupt);
  std::string version = good;
  version[4] = 9;
  EXPECT_NE(parse_gguf_header(version).error().message.find("version 9"), std::string::npos);
  std::string huge = good;
  huge[16] = '\xff';  // the metadata count's low byte... and a high one
  huge[23] = '\x7f';
  EXPECT_EQ(parse_gguf_header(huge).error().code, ErrorCode::kCorrupt);
  EXPECT_FALSE(
      synth_gguf(
          {.size_bytes = 1 << 20, .output = "/nonexistent/x.gguf", .vocab = "/nonexistent/v.gguf"})
          .ok());
}

}  // namespace
}  // namespace loadstar::model
