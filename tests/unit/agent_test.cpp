// The node agent's pure parts and its cache on a temporary directory:
// Signature V4 against AWS's published vectors, URLs, manifest paths,
// eviction order, chunk resume and atomic publishing.
#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>

#include <gtest/gtest.h>

#include "agent/agent.h"
#include "agent/cache.h"
#include "agent/device_checkpoint.h"
#include "agent/eviction.h"
#include "agent/manifest.h"
#include "agent/peer_discovery.h"
#include "agent/s3.h"
#include "common/digest.h"
#include "common/json_value.h"
#include "common/url.h"

namespace loadstar::agent {
namespace {

namespace fs = std::filesystem;

constexpr const char* kEmpty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

// aws-sig-v4-test-suite, get-vanilla.
TEST(SigV4, GetVanilla) {
  SigV4Request r;
  r.host = "example.amazonaws.com";
  r.path = "/";
  r.payload_sha256 = kEmpty;
  auto out = sign_v4(r, {"us-east-1", "service", "20150830T123600Z"},
                     {"AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", ""});
  EXPECT_EQ(out.canonical_request,
            "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\n"
            "host;x-amz-date\n" +
                std::string(kEmpty));
  EXPECT_EQ(out.string_to_sign,
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n"
            "bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63");
  EXPECT_EQ(out.signature, "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31");
}

// aws-sig-v4-test-suite, get-vanilla-query-order-key-case: parameters sorted.
TEST(SigV4, QueryParametersAreSorted) {
  SigV4Request r;
  r.host = "example.amazonaws.com";
  r.path = "/";
  r.query = "Param2=value2&Param1=value1";
  r.payload_sha256 = kEmpty;
  auto out = sign_v4(r, {"us-east-1", "service", "20150830T123600Z"},
                     {"AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", ""});
  EXPECT_EQ(out.signature, "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500");
}

// The S3 documentation's examples (sig-v4-header-based-auth): GET Object with
// a Range, and GET Bucket (list objects).
TEST(SigV4, S3DocumentationExamples) {
  const S3Credentials credentials{"AKIAIOSFODNN7EXAMPLE",
                                  "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", ""};
  SigV4Request get;
  get.host = "examplebucket.s3.amazonaws.com";
  get.path = "/test.txt";
  get.payload_sha256 = kEmpty;
  get.headers = {{"Range", "bytes=0-9"}, {"x-amz-content-sha256", kEmpty}};
  auto out = sign_v4(get, {"us-east-1", "s3", "20130524T000000Z"}, credentials);
  EXPECT_EQ(out.string_to_sign,
            "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n"
            "7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972");
  EXPECT_EQ(out.signature, "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
  EXPECT_EQ(out.authorization,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
            "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,"
            "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
  SigV4Request list;
  list.host = "examplebucket.s3.amazonaws.com";
  list.path = "/";
  list.query = "max-keys=2&prefix=J";
  list.payload_sha256 = kEmpty;
  list.headers = {{"x-amz-content-sha256", kEmpty}};
  EXPECT_EQ(sign_v4(list, {"us-east-1", "s3", "20130524T000000Z"}, credentials).signature,
            "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7");
}

TEST(DeviceCheckpoint, ReadsWhichCardsTheKubeletHandedToWhichPod) {
  // As Kubernetes 1.20 writes it (DeviceIDs per NUMA node), time-sliced.
  const char* text = R"({"Data":{"PodDeviceEntries":[
    {"PodUID":"u1","ContainerName":"engine","ResourceName":"nvidia.com/gpu",
     "DeviceIDs":{"-1":["GPU-bbb::0","GPU-bbb::1"]},"AllocResp":"Cg=="},
    {"PodUID":"u2","ContainerName":"engine","ResourceName":"nvidia.com/gpu",
     "DeviceIDs":{"0":["GPU-aaa::1"]},"AllocResp":"Cg=="},
    {"PodUID":"u3","ContainerName":"engine","ResourceName":"nvidia.com/mig-1g.10gb",
     "DeviceIDs":{"-1":["MIG-x"]},"AllocResp":null}],
    "RegisteredDevices":{"nvidia.com/gpu":["GPU-bbb::0","GPU-bbb::1","GPU-aaa::0","GPU-aaa::1"],
                         "nvidia.com/mig-1g.10gb":["MIG-x"]}},"Checksum":1234})";
  auto parsed = parse_device_checkpoint(text);
  ASSERT_TRUE(parsed.ok()) << parsed.error().message;
  EXPECT_EQ(parsed->pods["u1"]["nvidia.com/gpu"],
            (std::vector<std::string>{"GPU-bbb::0", "GPU-bbb::1"}));
  // Cards in ID order: GPU-aaa is 0, GPU-bbb is 1; replicas are their card.
  EXPECT_EQ(cards_of(*parsed, "u1"), std::vector<int>{1});
  EXPECT_EQ(cards_of(*parsed, "u2"), std::vector<int>{0});
  EXPECT_TRUE(cards_of(*parsed, "u3").empty());  // MIG: not a card
  EXPECT_TRUE(cards_of(*parsed, "nobody").empty());
  // What the agent serves is what the controller reads.
  auto listed = parse_device_listing(device_listing_json(*parsed));
  ASSERT_TRUE(listed.ok()) << listed.error().message;
  EXPECT_EQ(listed->pods, parsed->pods);
  EXPECT_EQ(listed->registered, parsed->registered);
  // Before 1.20, DeviceIDs was a list; an empty kubelet has nulls.
  auto old = parse_device_checkpoint(
      R"({"Data":{"PodDeviceEntries":[{"PodUID":"u","ResourceName":"r","DeviceIDs":["a"]}],
          "RegisteredDevices":{"r":["a","b"]}}})");
  ASSERT_TRUE(old.ok());
  EXPECT_EQ(cards_of(*old, "u", "r"), std::vector<int>{0});
  EXPECT_TRUE(
      parse_device_checkpoint(R"({"Data":{"PodDeviceEntries":null,"RegisteredDevices":null}})")
          .ok());
  for (
      const char* bad :
      {"", "[]", R"({"Data":1})", R"({"Data":{"PodDeviceEntries":{}}})",
       R"({"Data":{"PodDeviceEntries":[{"PodUID":1}]}})",
       R"({"Data":{"RegisteredDevices":{"r":[1]}}})",
       R"({"Data":{"PodDeviceEntries":[{"PodUID":"u","ResourceName":"r","DeviceIDs":{"0":"a"}}]}})"}) {
    auto r = parse_device_checkpoint(bad);
    EXPECT_FALSE(r.ok()) << bad;
    if (!r.ok()) {
      EXPECT_EQ(r.error().code, ErrorCode::kCorrupt) << bad;
    }
  }
  EXPECT_FALSE(parse_device_listing(R"({"registered":{}})").ok());
}

TEST(Url, ParsesAndRejects) {
  auto u = parse_url("http://10.0.0.7:9000/bucket/a b?x=1");
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->host, "10.0.0.7");
  EXPECT_EQ(u->port, 9000);
  EXPECT_EQ(u->target, "/bucket/a b?x=1");
  EXPECT_EQ(parse_url("https://huggingface.co")->port, 443);
  EXPECT_EQ(parse_url("https://huggingface.co")->target, "/");
  EXPECT_EQ(parse_url("http://[::1]:8080/x")->host, "::1");
  EXPECT_FALSE(parse_url("huggingface.co/x").ok());
  EXPECT_FALSE(parse_url("http://h:99999/").ok());
  auto creds = parse_url("http://user:secret@h/");
  ASSERT_FALSE(creds.ok());
  EXPECT_EQ(creds.error().message.find("secret"), std::string::npos);
  EXPECT_EQ(resolve_location(*u, "/cdn/f")->target, "/cdn/f");
  EXPECT_EQ(resolve_location(*u, "other")->target, "/bucket/other");
  EXPECT_EQ(resolve_location(*u, "https://cdn.example/f")->host, "cdn.example");
  EXPECT_EQ(uri_encode("a b/c~d", true), "a%20b/c~d");
  EXPECT_EQ(uri_encode("a b/c", false), "a%20b%2Fc");
}

TEST(Manifest, RejectsPathsThatLeaveTheDirectory) {
  for (const char* bad :
       {"../etc/passwd", "/etc/passwd", "a/../../b", "a//b", "./a", "a/.", "", "a\\b", "a\nb"})
    EXPECT_FALSE(validate_relative_path(bad).ok()) << bad;
  for (const char* good : {"model.safetensors", "sub/dir/file.json", "a..b", ".hidden"})
    EXPECT_TRUE(validate_relative_path(good).ok()) << good;
  auto parsed = manifest_from_json(R"({"files":[{"path":"../x","size":1}]})");
  ASSERT_FALSE(parsed.ok());
  EXPECT_NE(parsed.error().message.find("'..'"), std::string::npos) << parsed.error().message;
  EXPECT_FALSE(
      manifest_from_json(R"({"files":[{"path":"a","size":1},{"path":"a","size":2}]})").ok());
  EXPECT_FALSE(manifest_from_json(R"({"files":[{"path":"a","size":1,"sha256":"xyz"}]})").ok());
}

TEST(JsonValue, TakesTheFallbackForAMemberOfAnotherType) {
  const auto doc = nlohmann::json::parse(
      R"({"have":null,"staging":0,"chunk_bytes":"16Mi","size":-1,"n":-3,"ok":true,"s":"x"})");
  EXPECT_EQ(value_or(doc, "have", "none"), "none");
  EXPECT_FALSE(value_or(doc, "staging", false));
  EXPECT_EQ(value_or(doc, "chunk_bytes", uint64_t{7}), 7u);
  EXPECT_EQ(value_or(doc, "size", 5u), 5u);  // negative: not an unsigned
  EXPECT_EQ(value_or(doc, "n", 0), -3);
  EXPECT_TRUE(value_or(doc, "ok", false));
  EXPECT_EQ(value_or(doc, "s", ""), "x");
  EXPECT_EQ(value_or(doc, "absent", 1.5), 1.5);
  EXPECT_EQ(value_or(nlohmann::json::array(), "s", "fallback"), "fallback");
}

TEST(Manifest, NamesAMemberOfTheWrongTypeInsteadOfThrowing) {
  // Found by the fuzzer: a number where a digest string belongs threw from json::value.
  auto digest = manifest_from_json(R"({"files":[{"path":"a/b","size":1,"sha256":2e64}]})");
  ASSERT_FALSE(digest.ok());
  EXPECT_NE(digest.error().message.find("entry 'a/b': 'sha256' must be a string, not number"),
            std::string::npos)
      << digest.error().message;
  auto source = manifest_from_json(R"({"source":[1],"files":[]})");
  ASSERT_FALSE(source.ok());
  EXPECT_NE(source.error().message.find("'source' must be a string, not array"), std::string::npos)
      << source.error().message;
  EXPECT_TRUE(manifest_from_json(R"({"source":null,"files":[{"path":"a","size":1}]})").ok());
}

TEST(Manifest, KeysAreContentAddressedWhenTheSourceGivesADigest) {
  Manifest m{"hf://org/m", "abc", {{"a", 3, std::string(64, 'a'), ""}, {"b", 3, "", "etag1"}}};
  EXPECT_EQ(blob_key(m, m.files[0]), "sha256-" + std::string(64, 'a'));
  EXPECT_TRUE(blob_key(m, m.files[1]).starts_with("src-"));
  Manifest other = m;
  other.files[1].etag = "etag2";
  EXPECT_NE(blob_key(m, m.files[1]), blob_key(other, other.files[1]));
  EXPECT_NE(m.version_id(), other.version_id());
  auto round = manifest_from_json(manifest_to_json(m));
  ASSERT_TRUE(round.ok());
  EXPECT_EQ(round->version_id(), m.version_id());
}

TEST(Eviction, LeastRecentlyUsedFirstNeverInUseOrPinned) {
  std::vector<CacheEntry> entries = {{"old", 40, 100, false, false},
                                     {"older-in-use", 40, 50, true, false},
                                     {"pinned", 40, 10, false, true},
                                     {"new", 40, 300, false, false}};
  // 160 used of 200; 70 more needs 30 freed: "old" (40) is enough.
  auto v = choose_victims(entries, 160, 70, 200, "x");
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(*v, std::vector<std::string>{"old"});
  v = choose_victims(entries, 160, 110, 200, "x");
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(*v, (std::vector<std::string>{"old", "new"}));
  v = choose_victims(entries, 160, 130, 200, "big");
  ASSERT_FALSE(v.ok());
  EXPECT_NE(v.error().message.find("'big'"), std::string::npos);
  EXPECT_NE(v.error().message.find("in use or pinned"), std::string::npos);
  EXPECT_TRUE(choose_victims(entries, 160, 130, 0, "x")->empty());  // no capacity set
}

class TempDir : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() /
            fmt::format("loadstar-agent-{}-{}", ::getpid(),
                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override { fs::remove_all(root_); }
  static std::string random_bytes(size_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::string s(n, '\0');
    for (auto& c : s) c = static_cast<char>(rng());
    return s;
  }
  void write(const fs::path& p, const std::string& bytes) {
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << bytes;
  }
  fs::path root_;
};

using PartialFileTest = TempDir;

TEST_F(PartialFileTest, ResumeKeepsOnlyChunksThatStillVerify) {
  const std::string data = random_bytes(10000, 1);
  {
    auto p = PartialFile::open(root_, "k", data.size(), 4096);
    ASSERT_TRUE(p.ok());
    ASSERT_EQ((*p)->chunks(), 3u);
    for (uint64_t i : {0, 2}) {
      std::string_view piece(data.data() + i * 4096, (*p)->chunk_length(i));
      ASSERT_TRUE((*p)->write(i, piece, sha256_hex(piece)).ok());
    }
    EXPECT_EQ((*p)->have_bits(), "101");
  }
  {  // a process killed after these writes: both chunks come back
    auto p = PartialFile::open(root_, "k", data.size(), 4096);
    ASSERT_TRUE(p.ok());
    EXPECT_EQ((*p)->have_bits(), "101");
    EXPECT_EQ((*p)->resumed_bytes(), 4096u + (10000 - 8192));
  }
  {  // a byte of chunk 2 rots on disk: only chunk 0 survives
    const int fd = ::open((root_ / "k.data").c_str(), O_WRONLY);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::pwrite(fd, "X", 1, 9000), 1);
    ::close(fd);
    auto p = PartialFile::open(root_, "k", data.size(), 4096);
    ASSERT_TRUE(p.ok());
    EXPECT_EQ((*p)->have_bits(), "100");
    std::string_view one(data.data() + 4096, 4096), two(data.data() + 8192, 10000 - 8192);
    ASSERT_TRUE((*p)->write(1, one, sha256_hex(one)).ok());
    ASSERT_TRUE((*p)->write(2, two, sha256_hex(two)).ok());
    EXPECT_TRUE((*p)->complete());
    EXPECT_EQ(*(*p)->sha256(), sha256_hex(data));
    ASSERT_TRUE((*p)->finish(root_ / "blob").ok());
  }
  std::ifstream in(root_ / "blob", std::ios::binary);
  std::string back((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(back, data);
  EXPECT_FALSE(fs::exists(root_ / "k.chunks"));
}

using AgentTest = TempDir;

TEST_F(AgentTest, StagesPublishesAndResumes) {
  const std::string a = random_bytes(300000, 2), b = random_bytes(5000, 3);
  write(root_ / "origin/model.safetensors", a);
  write(root_ / "origin/sub/config.json", b);
  write(root_ / "origin/.git/ignored", "x");
  AgentOptions options;
  options.cache.root = root_ / "cache";
  options.cache.chunk_bytes = 65536;
  options.connections = 3;
  const std::string source = "file://" + (root_ / "origin").string();
  // An earlier run left two verified chunks of the big file behind.
  {
    Manifest m{source, "", {{"model.safetensors", a.size(), "", ""}}};
    fs::create_directories(options.cache.root / "partial");
    auto p =
        PartialFile::open(options.cache.root / "partial", blob_key(m, m.files[0]), a.size(), 65536);
    ASSERT_TRUE(p.ok());
    for (uint64_t i : {1, 3}) {
      std::string_view piece(a.data() + i * 65536, 65536);
      ASSERT_TRUE((*p)->write(i, piece, sha256_hex(piece)).ok());
    }
  }
  auto agent = Agent::create(options);
  ASSERT_TRUE(agent.ok()) << agent.error().message;
  (*agent)->stage("m", source);
  auto dir = (*agent)->wait("m", 30);
  ASSERT_TRUE(dir.ok()) << dir.error().message;
  auto p = (*agent)->progress("m");
  EXPECT_EQ(p->bytes_cached, 2u * 65536);  // resumed, not refetched
  EXPECT_EQ(p->bytes_origin, a.size() + b.size() - 2 * 65536);
  std::ifstream in(*dir / "model.safetensors", std::ios::binary);
  std::string back((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(back, a);
  EXPECT_TRUE(fs::exists(*dir / "sub/config.json"));
  EXPECT_FALSE(fs::exists(*dir / ".git"));
  // Hard links into blobs/, not copies.
  EXPECT_EQ(fs::hard_link_count(*dir / "model.safetensors"), 2u);
  EXPECT_TRUE(fs::is_empty(options.cache.root / "partial"));
  // A second agent on the same cache finds it without fetching.
  agent->reset();
  auto again = Agent::create(options);
  ASSERT_TRUE(again.ok());
  (*again)->stage("m", source);
  ASSERT_TRUE((*again)->wait("m", 30).ok());
  EXPECT_EQ((*again)->progress("m")->bytes_origin, 0u);
  EXPECT_NE((*again)->metrics_text().find("loadstar_agent_stagings_total{result=\"cached\"} 1"),
            std::string::npos);
}

TEST_F(AgentTest, EvictsLeastRecentlyUsedAndRefusesWhatCannotFit) {
  for (const char* m : {"m1", "m2", "m3"}) write(root_ / m / "w.bin", random_bytes(40000, m[1]));
  write(root_ / "huge/w.bin", random_bytes(130000, 9));
  AgentOptions options;
  options.cache.root = root_ / "cache";
  options.cache.chunk_bytes = 16384;
  options.cache.capacity_bytes = 100000;
  auto agent = Agent::create(options);
  ASSERT_TRUE(agent.ok());
  auto stage = [&](const std::string& m) {
    (*agent)->stage(m, "file://" + (root_ / m).string());
    return (*agent)->wait(m, 30);
  };
  ASSERT_TRUE(stage("m1").ok());
  ASSERT_TRUE(stage("m2").ok());
  (*agent)->cache().acquire("m1");  // an engine uses m1: m2 is the one to go
  ASSERT_TRUE(stage("m3").ok());
  EXPECT_TRUE((*agent)->cache().find("m1"));
  EXPECT_FALSE((*agent)->cache().find("m2"));
  EXPECT_TRUE((*agent)->cache().find("m3"));
  EXPECT_FALSE(fs::exists(options.cache.root / "models/m2"));
  EXPECT_LE((*agent)->cache().used_bytes(), options.cache.capacity_bytes);
  auto huge = stage("huge");
  ASSERT_FALSE(huge.ok());
  EXPECT_NE(huge.error().message.find("needs"), std::string::npos) << huge.error().message;
  EXPECT_FALSE(fs::exists(options.cache.root / "models/huge"));
  // Nothing is evicted for a model that would not fit anyway.
  EXPECT_EQ((*agent)->cache().evictions(), 1u);
  EXPECT_TRUE((*agent)->cache().find("m3"));
}

TEST_F(AgentTest, AVersionIsStagedExactlyOrRefusedWithTheReason) {
  AgentOptions options;
  options.cache.root = root_ / "cache";
  auto agent = Agent::create(options);
  ASSERT_TRUE(agent.ok());
  const std::string source = "file://" + (root_ / "origin").string();
  // The origin's bytes change three times under the same source.
  std::vector<std::string> versions;
  for (size_t size : {1000, 2000, 3000}) {
    write(root_ / "origin/w.bin", random_bytes(size, static_cast<int>(size / 1000)));
    auto manifest = (*agent)->resolve_source(source);
    ASSERT_TRUE(manifest.ok()) << manifest.error().message;
    versions.push_back(manifest->version_id());
    (*agent)->stage("m", source, false, versions.back());
    auto dir = (*agent)->wait("m", 30);
    ASSERT_TRUE(dir.ok()) << dir.error().message;
    EXPECT_EQ(*dir, options.cache.root / "models/m" / versions.back());
    EXPECT_EQ(fs::file_size(*dir / "w.bin"), size);
    if (versions.size() == 2) {
      // The version replaced stays, and is ready at once when asked for.
      StageProgress held = (*agent)->stage("m", source, false, versions[0]);
      EXPECT_EQ(held.state, StageState::kReady);
      EXPECT_EQ(held.dir, options.cache.root / "models/m" / versions[0]);
      EXPECT_EQ(fs::file_size(held.dir / "w.bin"), 1000u);
    }
  }
  EXPECT_FALSE(fs::exists(options.cache.root / "models/m" / versions[0]));  // older: gone
  EXPECT_TRUE(fs::exists(options.cache.root / "models/m" / versions[1]));
  size_t blobs = 0;
  for ([[maybe_unused]] const auto& b : fs::directory_iterator(options.cache.root / "blobs"))
    ++blobs;
  EXPECT_EQ(blobs, 2u);  // the first version's went with it
  // A version neither held nor at the source any more is refused, saying why.
  (*agent)->stage("m", source, false, versions[0]);
  auto refused = (*agent)->wait("m", 30);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(
      refused.error().message.find("now holds version " + versions[2] + ", not " + versions[0]),
      std::string::npos)
      << refused.error().message;
  EXPECT_FALSE((*agent)->cache().version_dir("m", "../../etc"));
  EXPECT_FALSE((*agent)->cache().version_dir("../m", versions[1]));
  EXPECT_TRUE((*agent)->cache().version_dir("m", versions[1]));
}

TEST_F(AgentTest, BadSourcesFailClearly) {
  AgentOptions options;
  options.cache.root = root_ / "cache";
  options.max_attempts = 2;
  options.backoff_s = 0.01;
  auto agent = Agent::create(options);
  ASSERT_TRUE(agent.ok());
  (*agent)->stage("missing", "file://" + (root_ / "nope").string());
  auto r = (*agent)->wait("missing", 10);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("no such file"), std::string::npos) << r.error().message;
  (*agent)->stage("scheme", "ftp://x/y");
  r = (*agent)->wait("scheme", 10);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("unknown source scheme"), std::string::npos);
  (*agent)->stage("../evil", "file:///tmp");
  r = (*agent)->wait("../evil", 10);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("contains '/'"), std::string::npos) << r.error().message;
}

}  // namespace
}  // namespace loadstar::agent

namespace loadstar::agent {
namespace {

TEST(PeerDiscovery, EveryAddressButTheAgentsOwn) {
  const std::vector<kube::EndpointAddress> addresses = {
      {"10.0.0.1", 8070, "a"}, {"10.0.0.2", 8070, "b"}, {"10.0.0.2", 9000, "b"}};
  EXPECT_EQ(peer_urls(addresses, "http://10.0.0.2:8070"),
            (std::vector<std::string>{"http://10.0.0.1:8070", "http://10.0.0.2:9000"}));
  EXPECT_EQ(peer_urls(addresses, "not a url").size(), 3u);
  EXPECT_TRUE(peer_urls({}, "http://10.0.0.1:8070").empty());
}

}  // namespace
}  // namespace loadstar::agent
