#include <gtest/gtest.h>

#include "api/resources.h"
#include "common/units.h"

namespace loadstar::api {
namespace {

constexpr const char* kValid = R"(apiVersion: loadstar.dev/v1alpha1
kind: Model
metadata:
  name: llama-8b
spec:
  source: file:///var/lib/loadstar/models/llama-8b
  size: 16Gi
---
apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata:
  name: chat
spec:
  model: llama-8b
  replicas: 2
  engine:
    name: engine-sim
    args: ["--max-num-seqs", "64"]
  resources:
    gpu:
      count: 1
      type: A100-80GB
      fraction: 0.5
)";

TEST(Resources, DecodesModelsAndServices) {
  auto resources = decode_resources(kValid, "q.yaml");
  ASSERT_TRUE(resources.ok()) << resources.error().message;
  ASSERT_EQ(resources->size(), 2u);
  const auto& model = std::get<Model>((*resources)[0]);
  EXPECT_EQ(model.spec.size_bytes, 16ull << 30);
  const auto& svc = std::get<InferenceService>((*resources)[1]);
  EXPECT_EQ(svc.spec.replicas, 2u);
  EXPECT_EQ(svc.spec.engine.args.size(), 2u);
  EXPECT_EQ(svc.spec.gpu.type, "A100-80GB");
  EXPECT_DOUBLE_EQ(*svc.spec.gpu.fraction, 0.5);
  EXPECT_TRUE(check_references(*resources).ok());
}

TEST(Resources, ErrorsNameFileLineAndField) {
  std::string text = kValid;
  text.replace(text.find("replicas: 2"), 11, "replica: 2");
  auto resources = decode_resources(text, "q.yaml");
  ASSERT_FALSE(resources.ok());
  EXPECT_EQ(resources.error().message,
            "q.yaml:15:3: InferenceService 'chat': spec.replica: unknown field (did you mean "
            "'replicas'?)");
}

TEST(Resources, ReportsEveryError) {
  const char* text = R"(apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata:
  name: Chat_Bad
spec:
  model: m
  replicas: -1
  resources:
    gpu:
      count: 2
      fraction: 1.5
)";
  auto resources = decode_resources(text, "f.yaml");
  ASSERT_FALSE(resources.ok());
  const std::string& m = resources.error().message;
  EXPECT_NE(m.find("f.yaml:4:9: InferenceService 'Chat_Bad': metadata.name"), std::string::npos)
      << m;
  EXPECT_NE(m.find("f.yaml:7:13: InferenceService 'Chat_Bad': spec.replicas: must be a "
                   "non-negative integer"),
            std::string::npos)
      << m;
  EXPECT_NE(m.find("spec.resources.gpu.fraction: must be a number between 0 and 1"),
            std::string::npos)
      << m;
}

TEST(Resources, RejectsUnknownKindsVersionsAndDanglingModels) {
  auto r = decode_resources("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n", "p.yaml");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("apiVersion: 'v1' is not loadstar.dev/v1alpha1"),
            std::string::npos);
  EXPECT_NE(r.error().message.find("'Pod' is not one of Model, InferenceService"),
            std::string::npos);
  auto svc = decode_resources(
      "apiVersion: loadstar.dev/v1alpha1\nkind: InferenceService\nmetadata: {name: a}\nspec: "
      "{model: nope}\n",
      "s.yaml");
  ASSERT_TRUE(svc.ok()) << svc.error().message;
  Status refs = check_references(*svc);
  ASSERT_FALSE(refs.ok());
  EXPECT_EQ(refs.error().message, "InferenceService 'a': spec.model: no Model named 'nope'");
  auto bad_yaml = decode_resources("a: [1, 2\n", "y.yaml");
  ASSERT_FALSE(bad_yaml.ok());
  EXPECT_EQ(bad_yaml.error().message.rfind("y.yaml:", 0), 0u);
}

TEST(Units, ParsesSizesAndDurations) {
  EXPECT_EQ(*parse_bytes("2GiB"), 2ull << 30);
  EXPECT_EQ(*parse_bytes("512Mi"), 512ull << 20);
  EXPECT_EQ(*parse_bytes("80G"), 80000000000ull);
  EXPECT_EQ(*parse_bytes("1.5KiB"), 1536u);
  EXPECT_EQ(*parse_bytes("4096"), 4096u);
  EXPECT_FALSE(parse_bytes("12 parsecs").ok());
  EXPECT_FALSE(parse_bytes("GiB").ok());
  EXPECT_DOUBLE_EQ(*parse_duration("250ms"), 0.25);
  EXPECT_DOUBLE_EQ(*parse_duration("2m"), 120);
}

}  // namespace
}  // namespace loadstar::api

namespace loadstar::api {
namespace {

TEST(Resources, EncodeDecodeRoundTrips) {
  auto resources = decode_resources(kValid, "q.yaml");
  ASSERT_TRUE(resources.ok());
  for (const Resource& r : *resources) {
    const std::string text = encode_resource(r);
    auto again = decode_resources(text, "encoded");
    ASSERT_TRUE(again.ok()) << again.error().message << "\n" << text;
    ASSERT_EQ(again->size(), 1u);
    EXPECT_EQ(encode_resource((*again)[0]), text);
  }
}

TEST(Resources, SynthModelsNeedASize) {
  auto r = decode_resources(
      "apiVersion: loadstar.dev/v1alpha1\nkind: Model\nmetadata: {name: m}\nspec: {source: "
      "'synth://m'}\n",
      "m.yaml");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("spec.size: required for a synth:// model"), std::string::npos);
}

}  // namespace
}  // namespace loadstar::api

namespace loadstar::api {
namespace {

// Found by fuzz/resources_fuzz: yaml-cpp 0.7's LoadAll never returns on these.
TEST(Resources, MalformedStreamsThatHangYamlCppFailFast) {
  for (const char* text :
       {"!,\n", "!EEEEEEEEEEEEEEEEEEEEEEEE,EEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEE?A", ",\n"}) {
    auto r = decode_resources(text, "bad.yaml");
    EXPECT_FALSE(r.ok()) << text;
  }
}

TEST(Resources, DocumentsKeepTheirLineNumbers) {
  const char* text =
      "---\n"
      "apiVersion: loadstar.dev/v1alpha1\nkind: Model\nmetadata: {name: a}\nspec: {source: "
      "'file:///m'}\n"
      "--- # second\n"
      "apiVersion: loadstar.dev/v1alpha1\nkind: Model\nmetadata: {name: b}\nspec: {sourc: "
      "'file:///m'}\n";
  auto r = decode_resources(text, "two.yaml");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("two.yaml:10:8: Model 'b': spec.sourc: unknown field"),
            std::string::npos)
      << r.error().message;
}

}  // namespace
}  // namespace loadstar::api
