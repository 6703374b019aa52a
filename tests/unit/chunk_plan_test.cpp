// The agent's chunk plan (which chunk to fetch next, from whom) with the time
// injected, and a real Agent over a file:// origin whose peers are a fake
// PeerClient that lies, dies mid-chunk or sends short.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <set>

#include <gtest/gtest.h>

#include "agent/agent.h"
#include "agent/chunk_plan.h"
#include "agent/peer_client.h"
#include "common/digest.h"

namespace loadstar::agent {
namespace {

namespace fs = std::filesystem;

ChunkPlanOptions plan_options(std::string self_url, int origin_limit = 100) {
  ChunkPlanOptions o;
  o.self_url = std::move(self_url);
  o.chunk_bytes = 1024;
  o.origin_limit = origin_limit;
  o.peer_patience_s = 5;
  return o;
}

BlobInfo peer_map(std::string have, bool staging) {
  BlobInfo info;
  info.key = "k";
  info.chunk_bytes = 1024;
  info.staging = staging;
  for (size_t i = 0; i < have.size(); ++i)
    info.digests.push_back(have[i] == '1' ? "digest-" + std::to_string(i) : "");
  info.have = std::move(have);
  return info;
}

// Takes every fetch the plan hands out now.
std::vector<ChunkFetch> drain(ChunkPlan& plan, double now) {
  std::vector<ChunkFetch> out;
  while (auto f = plan.next(now)) out.push_back(*f);
  return out;
}

std::vector<uint64_t> chunks_of(const std::vector<ChunkFetch>& fetches) {
  std::vector<uint64_t> out;
  for (const auto& f : fetches) out.push_back(f.chunk);
  return out;
}

TEST(ChunkPlan, AgentsStagingAFileSplitItsChunksInUrlOrder) {
  ChunkPlan plan(plan_options("http://b"));
  plan.add_file("k", std::vector<bool>(7, false));
  plan.observe_peer("k", "http://c", peer_map("0000000", true), 0);
  plan.observe_peer("k", "http://a", peer_map("0000000", true), 0);
  // Sorted: a, b, c; chunk i belongs to agent i mod 3, so b fetches 1 and 4.
  const auto mine = drain(plan, 1);
  EXPECT_EQ(chunks_of(mine), (std::vector<uint64_t>{1, 4}));
  for (const auto& f : mine) EXPECT_TRUE(f.from_origin());
  EXPECT_EQ(plan.origin_in_flight(), 2);
}

TEST(ChunkPlan, AStalledOwnersChunksAreTakenOverAfterThePatience) {
  ChunkPlan plan(plan_options("http://b"));
  plan.add_file("k", std::vector<bool>(4, false));
  plan.observe_peer("k", "http://a", peer_map("0000", true), 0);
  // b owns 1 and 3; a owns 0 and 2, and has not moved since t=0.
  EXPECT_EQ(chunks_of(drain(plan, 1)), (std::vector<uint64_t>{1, 3}));
  EXPECT_FALSE(plan.next(4.9));
  // A map that changes is progress: the patience starts over.
  plan.observe_peer("k", "http://a", peer_map("2000", true), 4);
  EXPECT_FALSE(plan.next(8.9));
  // A chunk a is fetching ('2') is never taken over; the other one is, one
  // at a time.
  const auto taken = plan.next(9.1);
  ASSERT_TRUE(taken);
  EXPECT_EQ(taken->chunk, 2u);
  EXPECT_TRUE(taken->from_origin());
  EXPECT_FALSE(plan.next(100));
}

TEST(ChunkPlan, AChunkAPeerHoldsComesFromThatPeerWithItsDigest) {
  ChunkPlan plan(plan_options("http://b", 0));  // no origin fetch allowed at all
  plan.add_file("k", std::vector<bool>(3, false));
  plan.observe_peer("k", "http://a", peer_map("010", false), 0);
  auto f = plan.next(0);
  ASSERT_TRUE(f);
  EXPECT_EQ(f->chunk, 1u);
  EXPECT_EQ(f->peer, "http://a");
  EXPECT_EQ(f->peer_digest, "digest-1");
  EXPECT_FALSE(plan.next(0));  // the rest is for the origin, which is at its limit
  EXPECT_FALSE(plan.fetched(*f));
}

TEST(ChunkPlan, APeerWithAnotherChunkSizeOrNoAnswerIsNotUsed) {
  ChunkPlan plan(plan_options("http://b", 0));
  plan.add_file("k", std::vector<bool>(2, false));
  BlobInfo other = peer_map("11", true);
  other.chunk_bytes = 2048;
  plan.observe_peer("k", "http://a", other, 0);
  EXPECT_FALSE(plan.next(0));
  plan.observe_peer("k", "http://c", peer_map("11", true), 0);
  plan.peer_unreachable("k", "http://c", 1);
  EXPECT_FALSE(plan.next(1));
}

TEST(ChunkPlan, ALyingPeerIsNotAskedAgainAndAFailedOneSitsOut) {
  ChunkPlan plan(plan_options("http://self", 0));
  plan.add_file("k", std::vector<bool>(1, false));
  plan.observe_peer("k", "http://liar", peer_map("1", false), 0);
  plan.observe_peer("k", "http://slow", peer_map("1", false), 0);
  auto f = plan.next(0);
  ASSERT_TRUE(f);
  EXPECT_EQ(f->peer, "http://liar");
  plan.peer_failed(*f, PeerFault::kCorrupt, 0);
  f = plan.next(0);
  ASSERT_TRUE(f);
  EXPECT_EQ(f->peer, "http://slow");
  plan.peer_failed(*f, PeerFault::kFailed, 0);
  EXPECT_FALSE(plan.next(4.9));
  // The failed peer is back after its pause; the liar stays out, whatever
  // its map says.
  plan.observe_peer("k", "http://liar", peer_map("1", false), 6);
  f = plan.next(6);
  ASSERT_TRUE(f);
  EXPECT_EQ(f->peer, "http://slow");
  plan.peer_failed(*f, PeerFault::kFailed, 6);
  EXPECT_FALSE(plan.next(10));
  f = plan.next(11.5);
  ASSERT_TRUE(f);
  EXPECT_EQ(f->peer, "http://slow");
}

TEST(ChunkPlan, WhenEveryPeerFailsTheOriginFetchesEverything) {
  ChunkPlan plan(plan_options("http://self"));
  plan.add_file("k", std::vector<bool>(3, false));
  // Two peers staging it too: without them this agent owns every chunk.
  plan.observe_peer("k", "http://a", peer_map("111", true), 0);
  plan.observe_peer("k", "http://z", peer_map("111", true), 0);
  for (const char* peer : {"http://a", "http://z"}) {
    auto f = plan.next(1);
    ASSERT_TRUE(f);
    EXPECT_EQ(f->peer, peer);
    plan.peer_failed(*f, PeerFault::kFailed, 1);
  }
  const auto rest = drain(plan, 1);
  EXPECT_EQ(chunks_of(rest), (std::vector<uint64_t>{0, 1, 2}));
  for (const auto& f : rest) EXPECT_TRUE(f.from_origin());
}

TEST(ChunkPlan, TheOriginLimitIsRespected) {
  ChunkPlan plan(plan_options("http://self", 2));
  plan.add_file("k", std::vector<bool>(5, false));
  auto first = drain(plan, 0);
  ASSERT_EQ(first.size(), 2u);
  EXPECT_EQ(plan.origin_in_flight(), 2);
  EXPECT_EQ(plan.origin_failed(first[0]), 1);  // a retry frees its slot too
  EXPECT_EQ(plan.origin_in_flight(), 1);
  EXPECT_FALSE(plan.fetched(first[1]));
  auto second = drain(plan, 0);
  EXPECT_EQ(chunks_of(second), (std::vector<uint64_t>{0, 2}));
  auto again = second[0];
  EXPECT_EQ(plan.origin_failed(again), 2);  // attempts are counted per chunk
}

TEST(ChunkPlan, EveryMissingChunkIsPlannedExactlyOnce) {
  std::mt19937 rng(7);
  ChunkPlan plan(plan_options("http://m", 3));
  plan.add_complete_file("cached");
  plan.add_file("k1", {true, false, false, true, false, false, false, false, false});
  plan.add_file("k2", std::vector<bool>(6, false));
  plan.add_file("empty", {});
  plan.observe_peer("k1", "http://a", peer_map("011000110", true), 0);
  plan.observe_peer("k2", "http://z", peer_map("101000", true), 0);
  EXPECT_TRUE(plan.start_finishing(3));  // nothing to fetch: finished at once
  plan.finished(3);
  std::set<std::pair<size_t, uint64_t>> planned;
  std::vector<ChunkFetch> in_flight;
  std::map<size_t, int> completed_files;
  double now = 0;
  while (!plan.all_done()) {
    ASSERT_LT(now, 1000) << "stuck";
    for (auto& f : drain(plan, now)) {
      EXPECT_TRUE(planned.insert({f.file, f.chunk}).second) << f.file << "/" << f.chunk;
      in_flight.push_back(f);
    }
    if (in_flight.empty()) {  // waiting for stalled owners
      now += 1;
      continue;
    }
    const size_t pick = rng() % in_flight.size();
    const ChunkFetch f = in_flight[pick];
    in_flight.erase(in_flight.begin() + static_cast<long>(pick));
    if (plan.fetched(f)) {
      ++completed_files[f.file];
      plan.finished(f.file);
    }
  }
  EXPECT_EQ(planned.size(), 7u + 6u);
  EXPECT_EQ(completed_files, (std::map<size_t, int>{{1, 1}, {2, 1}}));
  EXPECT_EQ(plan.unfinished_keys(), std::vector<std::string>{});
}

TEST(ChunkPlan, AFileThatFailsItsDigestIsRefetchedFromTheOriginOnly) {
  ChunkPlan plan(plan_options("http://self"));
  plan.add_file("k", std::vector<bool>(3, false));
  plan.observe_peer("k", "http://a", peer_map("010", false), 0);
  std::vector<ChunkFetch> all = drain(plan, 0);
  ASSERT_EQ(all.size(), 3u);
  bool last = false;
  for (const auto& f : all) last = plan.fetched(f);
  ASSERT_TRUE(last);
  Refetch r = plan.mismatch(0);
  EXPECT_TRUE(r.peers_involved);
  EXPECT_FALSE(r.give_up);
  EXPECT_EQ(r.chunks, std::vector<uint64_t>{1});
  EXPECT_FALSE(plan.next(0)) << "nothing until the chunks are forgotten";
  plan.refetch(0);
  auto f = plan.next(0);
  ASSERT_TRUE(f);
  EXPECT_EQ(f->chunk, 1u);
  EXPECT_TRUE(f->from_origin()) << "the peer still lists it, but sent bad bytes";
  ASSERT_TRUE(plan.fetched(*f));
  // The origin alone sent it wrong: the whole file once more, then give up.
  r = plan.mismatch(0);
  EXPECT_FALSE(r.peers_involved);
  EXPECT_EQ(r.chunks, (std::vector<uint64_t>{0, 1, 2}));
  plan.refetch(0);
  for (const auto& g : drain(plan, 0)) plan.fetched(g);
  EXPECT_TRUE(plan.mismatch(0).give_up);
}

// Peers as a test wants them: each holds some chunks of the one file of
// the origin and misbehaves in its own way.
class FakePeers : public PeerClient {
 public:
  enum class Behaviour { kGood, kLies, kDiesMidChunk, kSendsShort };
  struct Peer {
    Behaviour behaviour = Behaviour::kGood;
    std::string have;  // '1' per chunk it claims
    int chunk_calls = 0;
  };

  FakePeers(std::string data, uint64_t chunk_bytes)
      : data_(std::move(data)), chunk_bytes_(chunk_bytes) {}

  void add(const std::string& url, Behaviour behaviour, std::string have) {
    peers_[url] = Peer{behaviour, std::move(have), 0};
  }
  int chunk_calls(const std::string& url) {
    std::lock_guard lock(mu_);
    return peers_.at(url).chunk_calls;
  }

  Result<BlobInfo> blob_info(const std::string& peer, const std::string& key) override {
    std::lock_guard lock(mu_);
    BlobInfo info;
    info.key = key;
    info.size = data_.size();
    info.chunk_bytes = chunk_bytes_;
    info.complete = true;
    info.have = peers_.at(peer).have;
    for (uint64_t i = 0; i < info.have.size(); ++i)
      info.digests.push_back(info.have[i] == '1' ? sha256_hex(piece(i)) : "");
    return info;
  }

  Result<std::string> chunk(const std::string& peer, const std::string& key, uint64_t index,
                            const ByteSink& sink) override {
    Behaviour behaviour = Behaviour::kGood;
    {
      std::lock_guard lock(mu_);
      Peer& p = peers_.at(peer);
      ++p.chunk_calls;
      behaviour = p.behaviour;
    }
    std::string bytes(piece(index));
    switch (behaviour) {
      case Behaviour::kGood:
        sink(bytes);
        return sha256_hex(bytes);
      case Behaviour::kLies:  // rotted after verification: digest of what it sends
        bytes[bytes.size() / 2] ^= 0x5a;
        sink(bytes);
        return sha256_hex(bytes);
      case Behaviour::kDiesMidChunk:
        sink(std::string_view(bytes).substr(0, bytes.size() / 2));
        return make_error(ErrorCode::kUnavailable, "peer {}: connection reset reading {}", peer,
                          key);
      case Behaviour::kSendsShort:
        sink(std::string_view(bytes).substr(0, bytes.size() / 2));
        return sha256_hex(bytes);
    }
    return make_error(ErrorCode::kInternal, "unreachable");
  }

 private:
  std::string_view piece(uint64_t index) const {
    return std::string_view(data_).substr(index * chunk_bytes_, chunk_bytes_);
  }
  const std::string data_;
  const uint64_t chunk_bytes_;
  std::mutex mu_;
  std::map<std::string, Peer> peers_;
};

class AgentWithFakePeers : public ::testing::Test {
 protected:
  static constexpr uint64_t kChunk = 4096;
  void SetUp() override {
    root_ = fs::temp_directory_path() /
            fmt::format("loadstar-chunk-plan-{}-{}", ::getpid(),
                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_ / "origin");
    std::mt19937 rng(11);
    data_.resize(11 * kChunk + 100);  // 12 chunks, the last one short
    for (auto& c : data_) c = static_cast<char>(rng());
    std::ofstream(root_ / "origin/w.bin", std::ios::binary) << data_;
  }
  void TearDown() override { fs::remove_all(root_); }

  AgentOptions options(std::shared_ptr<FakePeers> peers, std::vector<std::string> urls) {
    AgentOptions o;
    o.cache.root = root_ / "cache";
    o.cache.chunk_bytes = kChunk;
    o.self_url = "http://self";
    o.peers = std::move(urls);
    o.peer_client = std::move(peers);
    o.peer_poll_s = 0.02;
    return o;
  }
  std::string read(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }
  std::string source() const { return "file://" + (root_ / "origin").string(); }

  fs::path root_;
  std::string data_;
};

TEST_F(AgentWithFakePeers, BadPeersAreCaughtBannedAndTheFileStillComplete) {
  auto peers = std::make_shared<FakePeers>(data_, kChunk);
  // In URL order: the liar is asked first, then the one that dies, then the
  // good one, which holds the even chunks; the origin sends the rest.
  peers->add("http://peer-a", FakePeers::Behaviour::kLies, std::string(12, '1'));
  peers->add("http://peer-b", FakePeers::Behaviour::kDiesMidChunk, std::string(12, '1'));
  peers->add("http://peer-c", FakePeers::Behaviour::kGood, "101010101010");
  AgentOptions o = options(peers, {"http://peer-a", "http://peer-b", "http://peer-c"});
  o.connections = 1;  // one fetch at a time: the order above is exact
  auto agent = Agent::create(o);
  ASSERT_TRUE(agent.ok()) << agent.error().message;
  (*agent)->stage("m", source());
  auto dir = (*agent)->wait("m", 30);
  ASSERT_TRUE(dir.ok()) << dir.error().message;
  EXPECT_EQ(read(*dir / "w.bin"), data_);
  EXPECT_EQ(peers->chunk_calls("http://peer-a"), 1);
  EXPECT_EQ(peers->chunk_calls("http://peer-b"), 1);  // sits out 5 s: the staging is done by then
  EXPECT_EQ(peers->chunk_calls("http://peer-c"), 6);
  auto p = (*agent)->progress("m");
  EXPECT_EQ(p->bytes_peers, 6 * kChunk);
  EXPECT_EQ(p->bytes_origin, data_.size() - 6 * kChunk);
  const std::string metrics = (*agent)->metrics_text();
  EXPECT_NE(metrics.find("loadstar_agent_corrupt_total{source=\"peer\"} 1"), std::string::npos)
      << metrics;
  EXPECT_NE(metrics.find("loadstar_agent_peer_failures_total 2"), std::string::npos) << metrics;
}

TEST_F(AgentWithFakePeers, WhenEveryPeerFailsTheOriginSendsEverything) {
  auto peers = std::make_shared<FakePeers>(data_, kChunk);
  peers->add("http://peer-a", FakePeers::Behaviour::kDiesMidChunk, std::string(12, '1'));
  peers->add("http://peer-b", FakePeers::Behaviour::kSendsShort, std::string(12, '1'));
  AgentOptions o = options(peers, {"http://peer-a", "http://peer-b"});
  o.connections = 4;
  auto agent = Agent::create(o);
  ASSERT_TRUE(agent.ok()) << agent.error().message;
  (*agent)->stage("m", source());
  auto dir = (*agent)->wait("m", 30);
  ASSERT_TRUE(dir.ok()) << dir.error().message;
  EXPECT_EQ(read(*dir / "w.bin"), data_);
  auto p = (*agent)->progress("m");
  EXPECT_EQ(p->bytes_peers, 0u);
  EXPECT_EQ(p->bytes_origin, data_.size());
  // Each is asked at most once per worker that picked it before it failed.
  for (const char* peer : {"http://peer-a", "http://peer-b"}) {
    EXPECT_GE(peers->chunk_calls(peer), 1) << peer;
    EXPECT_LE(peers->chunk_calls(peer), 4) << peer;
  }
  EXPECT_TRUE(fs::is_empty(o.cache.root / "partial"));
}

}  // namespace
}  // namespace loadstar::agent
