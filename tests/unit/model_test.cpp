#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

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

}  // namespace
}  // namespace loadstar::model
