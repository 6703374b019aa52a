// The scheduler's pure core: placement, fragmentation, queues, gangs,
// preemption and reclaim, accounting, and the openb trace replay.
#include <map>
#include <random>
#include <set>

#include <gtest/gtest.h>

#include "scheduler/placement.h"
#include "scheduler/queue_sim.h"
#include "scheduler/scheduler.h"
#include "scheduler/trace.h"

namespace loadstar::scheduler {
namespace {

Node gpu_node(Cluster& c, std::string name, int gpus, std::string model = "A100-80GB",
              uint64_t cpu = 64000) {
  Node n;
  n.name = std::move(name);
  n.cpu_milli = cpu;
  n.memory_mib = 512 * 1024;
  n.devices.assign(gpus, Device{c.intern_model(model), 81920, 7});
  return n;
}

PodRequest gpus(uint32_t count) {
  PodRequest p;
  p.gpu_count = count;
  p.cpu_milli = 1000;
  p.memory_mib = 1024;
  return p;
}

PodRequest share(uint32_t milli) {
  PodRequest p;
  p.gpu_milli = milli;
  p.cpu_milli = 500;
  return p;
}

Workload job(std::string name, std::string queue, std::vector<PodRequest> pods, int priority = 0,
             bool preemptible = true) {
  Workload w;
  w.name = std::move(name);
  w.queue = std::move(queue);
  w.pods = std::move(pods);
  w.priority = priority;
  w.preemptible = preemptible;
  return w;
}

PlacementPolicy policy(const char* name) {
  return *PlacementPolicy::named(name);
}

TEST(Placement, BestFitPacksSharesOntoTheFullestCard) {
  Cluster c;
  c.add_node(gpu_node(c, "a", 2));
  c.add_node(gpu_node(c, "b", 2));
  Placer placer(c, policy("best-fit"), nullptr);
  auto first = placer.place(share(600));
  ASSERT_GE(first.node, 0);
  (void)c.allocate(first.node, share(600), first.choice);
  auto second = placer.place(share(300));
  ASSERT_EQ(second.node, first.node);
  EXPECT_EQ(second.choice[0].device, first.choice[0].device);  // same card: 900 of 1000
}

// The FGD paper simulator's Best-fit weighs CPU left as much as GPU left
// (ours looks at GPUs only), scores in whole points, and takes the
// tightest card within the node it picked.
TEST(Placement, PaperBestFitWeighsCpuHalfAndTakesTheTightestCard) {
  Cluster c;
  c.add_node(gpu_node(c, "roomy", 8, "A100-80GB", 128000));
  c.add_node(gpu_node(c, "tight", 8, "A100-80GB", 16000));
  auto use = [&](int node, int device, uint32_t milli) {
    (void)c.allocate(node, share(milli), {Allocation::Share{.device = device, .milli = milli}});
  };
  use(0, 3, 900);
  use(0, 4, 600);  // roomy: 6.5 GPUs left, 127 cores
  use(1, 2, 200);
  use(1, 5, 600);  // tight: 7.2 GPUs left, 15 cores
  Placer ours(c, policy("best-fit"), nullptr);
  Placer paper(c, policy("best-fit-paper"), nullptr);
  // Ours looks at GPUs: the node with fewer left.
  EXPECT_EQ(ours.place(share(300)).node, 0);
  // The paper's: 0.5 * 14.5 / 128 cores + 0.5 * 6.9 / 8 GPUs left is 50
  // points on `tight`, against 11 on `roomy`; there, the card with 400 left
  // rather than the one with 800.
  auto placed = paper.place(share(300));
  ASSERT_EQ(placed.node, 1);
  EXPECT_EQ(placed.choice[0].device, 5);
  // Given as weights, its whole-point scores still tie below the card's term.
  EXPECT_EQ(PlacementPolicy::parse("bestFitPaper=1")->tie_tolerance, 1e-6);
  EXPECT_EQ(PlacementPolicy::parse("bestFit=1")->tie_tolerance, 1e-12);
  // On a node larger than the paper's (256 cores), all its CPU counts as
  // all left: the score stays within 0-100 (a tie-break under one point of
  // FGD stays under it): 0.5 * 1 + 0.5 * 7 / 8 GPUs left is 6 points.
  Cluster big;
  big.add_node(gpu_node(big, "big", 8, "H100", 256000));
  Placer bounded(big, *PlacementPolicy::parse("bestFitPaper=1"), nullptr);
  EXPECT_DOUBLE_EQ(bounded.node_cost(0, gpus(1)), -6);
}

TEST(Placement, FragmentationCountsCardsTooSmallAndNodesThatCannotHost) {
  Cluster c;
  c.add_node(gpu_node(c, "a", 2, "A100-80GB", 4000));
  Node& n = c.nodes()[0];
  n.devices[0].milli_used = 700;  // 300 free, 1000 free
  // A whole-card task can run: the 300 left on card 0 is a fragment to it.
  Fragmentation whole({{gpus(1), 1.0}});
  EXPECT_DOUBLE_EQ(whole.of(n), 300);
  // A half-card task can run on card 1: card 0's 300 is too small for it.
  Fragmentation half({{share(500), 1.0}});
  EXPECT_DOUBLE_EQ(half.of(n), 300);
  // A task needing more CPU than the node has: every free milli is lost to it.
  PodRequest big = share(100);
  big.cpu_milli = 8000;
  Fragmentation cpu_bound({{big, 1.0}});
  EXPECT_DOUBLE_EQ(cpu_bound.of(n), 1300);
  // Weighted: the sum over the target workload.
  Fragmentation mix({{gpus(1), 0.5}, {big, 0.5}});
  EXPECT_DOUBLE_EQ(mix.of(n), 0.5 * 300 + 0.5 * 1300);
  // A task that wants no GPU can use none of them, fitting or not (the
  // paper's XL and XR cases): a constant share of every node's free GPUs.
  PodRequest cpu_only;
  cpu_only.cpu_milli = 1000;
  EXPECT_DOUBLE_EQ(Fragmentation({{cpu_only, 1.0}}).of(n), 1300);
  cpu_only.cpu_milli = 8000;
  EXPECT_DOUBLE_EQ(Fragmentation({{cpu_only, 1.0}}).of(n), 1300);
}

// The FGD authors' simulator scores a node int(100 * sigmoid((F - F') /
// 1000)) and, among equal scores, takes the node first in an order drawn
// from the seed (node names prefixed by a seeded permutation, the smallest
// name winning).
TEST(Placement, PaperFgdScoresWholePointsAndBreaksTiesInASeededOrder) {
  Cluster c;
  for (int i = 0; i < 16; ++i) c.add_node(gpu_node(c, fmt::format("n{}", i), 2));
  c.nodes()[3].devices[0].milli_used = 190;  // 810 free on n3's card 0
  auto f = std::make_shared<const Fragmentation>(std::vector<TaskType>{{gpus(1), 1.0}});
  // An 810 share on an idle card leaves 190 that a whole-card task cannot
  // use: 0.19 GPU more fragmented, 45 points; on n3's card 0 it closes the
  // 810 fragment instead: F falls by 0.81 GPU, 69 points.
  Placer paper(c, policy("fgd-paper"), f, 7);
  EXPECT_DOUBLE_EQ(paper.node_cost(0, share(810)), -45);
  DeviceChoice on_n3;
  EXPECT_DOUBLE_EQ(paper.node_cost(3, share(810), &on_n3), -69);
  EXPECT_EQ(on_n3[0].device, 0);
  EXPECT_EQ(paper.place(share(810)).node, 3);
  // A whole card changes no node's F (50 points everywhere): the seeded
  // order decides, the same node every time for one seed, not the same for
  // all seeds.
  std::set<int> firsts;
  for (uint64_t seed = 1; seed <= 8; ++seed) {
    Placer p(c, policy("fgd-paper"), f, seed);
    const int first = p.place(gpus(1)).node;
    for (int again = 0; again < 3; ++again) EXPECT_EQ(p.place(gpus(1)).node, first);
    firsts.insert(first);
  }
  EXPECT_GT(firsts.size(), 1u);
  // loadstar scores FGD the same way; among equal scores the paper's
  // Best-fit (under one point) takes the tighter node: n3, 0.81 GPU left
  // after, over idle ones, then n5 once it has a card taken (none left
  // after).
  Placer ours(c, policy("loadstar"), f);
  EXPECT_EQ(ours.place(gpus(1)).node, 3);
  (void)c.allocate(5, gpus(1), {Allocation::Share{.device = 0, .milli = 1000}});
  EXPECT_EQ(ours.place(gpus(1)).node, 5);
}

// The paper's Best-fit weighs the CPU a node has left with its GPUs: among
// nodes FGD scores alike, loadstar fills the one whose CPU is nearer spent,
// rather than stranding cards behind the spent CPU of others later.
TEST(Placement, LoadstarBreaksEqualFgdScoresByCpuAndGpuLeft) {
  Cluster c;
  for (int i = 0; i < 4; ++i) c.add_node(gpu_node(c, fmt::format("n{}", i), 2));
  c.nodes()[2].cpu_used = 48000;  // 16 of its 64 cores left
  auto f = std::make_shared<const Fragmentation>(std::vector<TaskType>{{gpus(1), 1.0}});
  Placer ours(c, policy("loadstar"), f);
  EXPECT_EQ(ours.place(gpus(1)).node, 2);
  // Best-fit on the GPU share alone sees the four alike: the first wins.
  Placer gpu_share(c, *PlacementPolicy::parse("fragmentationPaper=1,bestFit=0.01"), f);
  EXPECT_EQ(gpu_share.place(gpus(1)).node, 0);
}

// The FGD authors' typical pods: types told apart by CPU, GPU and models
// (not memory), the most popular up to 95% of the tasks.
TEST(Placement, TypicalPodsCoverNinetyFivePercentIgnoringMemory) {
  std::vector<PodRequest> tasks;
  for (int i = 0; i < 60; ++i) {
    PodRequest r = share(500);
    r.memory_mib = 1024 * (i % 3);  // three memory sizes, one type
    tasks.push_back(r);
  }
  for (int i = 0; i < 30; ++i) tasks.push_back(gpus(1));
  for (int i = 0; i < 6; ++i) tasks.push_back(gpus(8));
  for (int i = 0; i < 4; ++i) tasks.push_back(share(100));
  const auto target = Fragmentation::typical(tasks).target();
  ASSERT_EQ(target.size(), 3u);  // 90% after two types, 96% after three
  EXPECT_EQ(target[0].request.gpu_milli, 500u);
  EXPECT_EQ(target[0].request.memory_mib, 0u);
  EXPECT_DOUBLE_EQ(target[0].weight, 60.0 / 96);
  EXPECT_EQ(target[1].request.gpu_count, 1u);
  EXPECT_DOUBLE_EQ(target[1].weight, 30.0 / 96);
  EXPECT_EQ(target[2].request.gpu_count, 8u);
}

TEST(Placement, FgdFillsTheFragmentInsteadOfOpeningACard) {
  Cluster c;
  c.add_node(gpu_node(c, "a", 1));
  c.add_node(gpu_node(c, "b", 1));
  c.nodes()[0].devices[0].milli_used = 500;
  // Workload: whole cards and halves. A half on node a leaves node b whole.
  auto f = std::make_shared<const Fragmentation>(
      std::vector<TaskType>{{gpus(1), 0.5}, {share(500), 0.5}});
  Placer placer(c, policy("fgd"), f);
  EXPECT_EQ(placer.place(share(500)).node, 0);
}

TEST(Placement, LocalityPrefersANodeHoldingTheWeights) {
  Cluster c;
  c.add_node(gpu_node(c, "a", 1));
  c.add_node(gpu_node(c, "b", 1));
  c.nodes()[1].cached_models.insert("llama-8b");
  auto f = std::make_shared<const Fragmentation>(std::vector<TaskType>{{gpus(1), 1.0}});
  Placer placer(c, policy("loadstar"), f);
  PodRequest p = gpus(1);
  p.model = "llama-8b";
  EXPECT_EQ(placer.place(p).node, 1);
  p.model = "other";
  EXPECT_EQ(placer.place(p).node, 0);
}

TEST(Placement, MigAndMemorySharesAndModelConstraints) {
  Cluster c;
  c.add_node(gpu_node(c, "a100", 1));
  c.add_node(gpu_node(c, "t4", 1, "T4"));
  c.nodes()[1].devices[0] = Device{c.intern_model("T4"), 16384, 0};
  Placer placer(c, policy("best-fit"), nullptr);
  PodRequest mig;
  auto profile = parse_mig_profile("3g.40gb");
  ASSERT_TRUE(profile.ok());
  mig.mig_slices = profile->first;
  mig.mig_memory_mib = profile->second;
  auto d = placer.place(mig);
  ASSERT_EQ(d.node, 0);  // the T4 has no MIG
  auto a = c.allocate(d.node, mig, d.choice);
  EXPECT_EQ(a.gpu_milli(), 428u);  // 3 of 7 slices
  // A share by compute cannot land on a card in MIG use.
  PodRequest s = share(100);
  s.allowed_models = {c.intern_model("A100-80GB")};
  EXPECT_LT(placer.place(s).node, 0);
  EXPECT_EQ(c.misfit(0, s), "insufficient GPU");
  EXPECT_EQ(c.misfit(1, s), "GPU model not allowed");
  // 8 GiB of a 16 GiB T4 is half of it.
  PodRequest mem;
  mem.gpu_memory_mib = 8192;
  d = placer.place(mem);
  ASSERT_EQ(d.node, 1);
  EXPECT_EQ(d.choice[0].milli, 500u);
  EXPECT_FALSE(parse_mig_profile("3g").ok());
  EXPECT_FALSE(parse_mig_profile("0g.10gb").ok());
}

// Random clusters, random work (gangs, shares, whole cards, MIG, priorities,
// queues with limits), random departures: the invariants hold every cycle.
TEST(SchedulerProperty, InvariantsHoldOnRandomClusters) {
  for (uint64_t seed = 1; seed <= 12; ++seed) {
    std::mt19937_64 rng(seed);
    auto uniform = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
    Cluster c;
    const int nodes = uniform(2, 12);
    for (int i = 0; i < nodes; ++i) {
      Node n = gpu_node(c, "n" + std::to_string(i), uniform(0, 8), i % 3 ? "A100-80GB" : "L4",
                        uniform(8, 64) * 1000);
      n.topology["rack"] = "r" + std::to_string(i % 3);
      c.add_node(std::move(n));
    }
    auto f = std::make_shared<const Fragmentation>(
        std::vector<TaskType>{{gpus(1), 0.4}, {share(500), 0.3}, {share(250), 0.3}});
    Scheduler s(c, policy(seed % 2 ? "loadstar" : "best-fit"), f, seed);
    std::vector<QueueSpec> queues = {{"root", "", {8, 100, 1000}, std::nullopt, 1},
                                     {"a", "root", {4, 50, 500}, Resources{12, 1e9, 1e9}, 1},
                                     {"b", "root", {4, 50, 500}, std::nullopt, 2},
                                     {"c", "", {2, 10, 100}, Resources{6, 1e9, 1e9}, 1}};
    ASSERT_TRUE(s.set_queues(queues).ok());
    std::set<std::string> live, never_preempt;
    for (int step = 0; step < 60; ++step) {
      const double now = step;
      for (int k = uniform(0, 4); k > 0; --k) {
        Workload w;
        w.name = "w" + std::to_string(seed) + "-" + std::to_string(step) + "-" + std::to_string(k);
        w.queue = std::vector<std::string>{"a", "b", "c"}[uniform(0, 2)];
        w.priority = uniform(0, 3);
        w.preemptible = uniform(0, 4) > 0;
        const int members = uniform(0, 3) == 0 ? uniform(2, 4) : 1;
        for (int m = 0; m < members; ++m) {
          switch (uniform(0, 3)) {
            case 0:
              w.pods.push_back(gpus(uniform(1, 4)));
              break;
            case 1:
              w.pods.push_back(share(uniform(1, 9) * 100));
              break;
            case 2: {
              PodRequest p;
              p.mig_slices = uniform(1, 3);
              w.pods.push_back(p);
              break;
            }
            default:
              w.pods.push_back(PodRequest{.cpu_milli = 2000});
          }
        }
        if (members > 1) {
          w.min_members = uniform(0, 1) ? 0 : members - 1;
          w.topology_level = "rack";
          w.topology_required = uniform(0, 1);
        }
        if (!w.preemptible) never_preempt.insert(w.name);
        live.insert(w.name);
        ASSERT_TRUE(s.submit(std::move(w), now).ok());
      }
      CycleReport report = s.schedule(now);
      for (const auto& v : report.preempted) EXPECT_FALSE(never_preempt.count(v)) << v;
      // No device double-booked: per-device sums equal what the cluster holds.
      std::map<std::pair<int, int>, uint32_t> milli;
      std::map<int, uint64_t> cpu;
      std::map<std::string, Resources> per_queue;
      for (const auto& name : live) {
        const WorkloadStatus* st = s.status(name);
        const Workload* w = s.workload(name);
        ASSERT_TRUE(st && w);
        if (st->state == WorkloadState::kPending) {
          EXPECT_TRUE(st->allocations.empty()) << name;  // a gang is never partly placed
          continue;
        }
        const size_t need = w->min_members ? w->min_members : w->pods.size();
        EXPECT_GE(st->allocations.size(), need) << name;
        std::set<std::string> racks;
        for (const auto& a : st->allocations) {
          cpu[a.node] += a.cpu_milli;
          racks.insert(c.nodes()[a.node].topology.at("rack"));
          for (const auto& sh : a.shares) {
            EXPECT_LE(sh.milli, kMilliPerGpu);  // a fraction never exceeds a card
            milli[{a.node, sh.device}] += sh.milli;
          }
          per_queue[w->queue] += resources_of(a);
        }
        if (w->topology_required && w->pods.size() > 1) {
          EXPECT_EQ(racks.size(), 1u) << name;
        }
      }
      for (size_t n = 0; n < c.nodes().size(); ++n) {
        const Node& node = c.nodes()[n];
        EXPECT_EQ(node.cpu_used, cpu[static_cast<int>(n)]);
        for (size_t d = 0; d < node.devices.size(); ++d) {
          EXPECT_EQ(node.devices[d].milli_used,
                    (milli[{static_cast<int>(n), static_cast<int>(d)}]));
          EXPECT_LE(node.devices[d].milli_used, kMilliPerGpu);
        }
      }
      // Limits are never exceeded (a's limit also bounds nothing above it).
      EXPECT_LE(per_queue["a"].gpu, 12 + 1e-9);
      EXPECT_LE(per_queue["c"].gpu, 6 + 1e-9);
      for (const auto& q : s.queues()) {
        if (q.name == "root") continue;
        EXPECT_NEAR(q.allocated.gpu, per_queue[q.name].gpu, 1e-6) << q.name;
      }
      // Some work finishes.
      for (auto it = live.begin(); it != live.end();) {
        if (uniform(0, 5) == 0) {
          s.remove(*it, now);
          it = live.erase(it);
        } else {
          ++it;
        }
      }
    }
  }
}

TEST(Scheduler, PreemptionPicksTheLowestPriorityThatFreesEnough) {
  Cluster c;
  c.add_node(gpu_node(c, "n", 4));
  Scheduler s(c, policy("best-fit"), nullptr);
  ASSERT_TRUE(s.set_queues({{"q", "", {4, 100, 1000}, std::nullopt, 1}}).ok());
  ASSERT_TRUE(s.submit(job("p5", "q", {gpus(1)}, 5), 0).ok());
  ASSERT_TRUE(s.submit(job("p1", "q", {gpus(1)}, 1), 0).ok());
  ASSERT_TRUE(s.submit(job("p3", "q", {gpus(2)}, 3), 0).ok());
  EXPECT_EQ(s.schedule(0).started.size(), 3u);
  ASSERT_TRUE(s.submit(job("urgent", "q", {gpus(1)}, 10), 1).ok());
  CycleReport r = s.schedule(1);
  EXPECT_EQ(r.preempted, std::vector<std::string>{"p1"});
  EXPECT_EQ(r.started_by_preemption, std::vector<std::string>{"urgent"});
  EXPECT_EQ(s.status("urgent")->state, WorkloadState::kRunning);
  EXPECT_EQ(s.status("p1")->state, WorkloadState::kPending);
  EXPECT_NE(s.status("p1")->reason.find("preempted by 'urgent'"), std::string::npos);
  // Two cards: p1 is pending already; p3 (2 cards, priority 3) is the lowest
  // that frees enough on its own, so p5 is spared.
  ASSERT_TRUE(s.submit(job("big", "q", {gpus(2)}, 10), 2).ok());
  r = s.schedule(2);
  EXPECT_EQ(r.preempted, std::vector<std::string>{"p3"});
  EXPECT_EQ(s.status("p5")->state, WorkloadState::kRunning);
  // Equal priority never preempts; nor does anything touch non-preemptible work.
  ASSERT_TRUE(s.submit(job("peer", "q", {gpus(1)}, 5), 3).ok());
  EXPECT_TRUE(s.schedule(3).preempted.empty());
  EXPECT_EQ(s.status("peer")->state, WorkloadState::kPending);
}

// What a previous controller recorded is checked before it is held: a
// card the node does not have, or a GPU pod whose cards were not recorded,
// is not adopted (the work is placed again instead of its cards being
// handed out twice).
TEST(Scheduler, AdoptionRefusesCardsTheNodeLacksAndGpuPodsWithoutCards) {
  Cluster c;
  c.add_node(gpu_node(c, "n", 2));
  Scheduler s(c, policy("best-fit"), nullptr);
  ASSERT_TRUE(s.set_queues({{"q", "", {2, 100, 1000}, std::nullopt, 1}}).ok());
  auto on = [](std::vector<Allocation::Share> shares) {
    Allocation a;
    a.node = 0;
    a.cpu_milli = 1000;
    a.memory_mib = 1024;
    a.shares = std::move(shares);
    return a;
  };
  EXPECT_FALSE(s.adopt(job("ghost", "q", {gpus(1)}, 0, false), {on({{7, 1000, 0}})}, 0).ok());
  EXPECT_FALSE(s.adopt(job("neg", "q", {gpus(1)}, 0, false), {on({{-1, 1000, 0}})}, 0).ok());
  auto unrecorded = s.adopt(job("blind", "q", {gpus(1)}, 0, false), {on({})}, 0);
  ASSERT_FALSE(unrecorded.ok());
  EXPECT_NE(unrecorded.error().message.find("asks for GPUs and its allocation names none"),
            std::string::npos);
  ASSERT_TRUE(s.adopt(job("real", "q", {gpus(1)}, 0, false), {on({{1, 1000, 0}})}, 0).ok());
  ASSERT_NE(s.status("real"), nullptr);
  EXPECT_EQ(s.status("real")->state, WorkloadState::kRunning);
  EXPECT_EQ(s.status("ghost"), nullptr);
}

TEST(Scheduler, PreemptionFreesRoomOnOneNode) {
  Cluster c;
  c.add_node(gpu_node(c, "a", 2));
  c.add_node(gpu_node(c, "b", 2));
  Scheduler s(c, policy("best-fit"), nullptr);
  ASSERT_TRUE(s.set_queues({{"q", "", {4, 100, 1000}, std::nullopt, 1}}).ok());
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(s.submit(job("low" + std::to_string(i), "q", {gpus(1)}, 0), i).ok());
    (void)s.schedule(i);
  }
  // A two-card job needs both cards of one node: two victims, on the same
  // node, not the two most recent wherever they are.
  ASSERT_TRUE(s.submit(job("pair", "q", {gpus(2)}, 5), 10).ok());
  CycleReport r = s.schedule(10);
  ASSERT_EQ(s.status("pair")->state, WorkloadState::kRunning);
  ASSERT_EQ(r.preempted.size(), 2u);
  const int node = s.status("pair")->allocations[0].node;
  int still_there = 0;
  for (int i = 0; i < 4; ++i) {
    const auto* st = s.status("low" + std::to_string(i));
    if (st->state == WorkloadState::kRunning) {
      EXPECT_NE(st->allocations[0].node, node);
      ++still_there;
    }
  }
  EXPECT_EQ(still_there, 2);
}

TEST(Scheduler, ABacklogOfLikeWorkloadsAllSayWhyAndASmallerOneStillStarts) {
  // One pass decides a like workload once until a start or a preemption
  // changes the cluster: every one of the backlog still says why it waits.
  Cluster c;
  c.add_node(gpu_node(c, "n", 2));
  Scheduler s(c, policy("best-fit"), nullptr);
  ASSERT_TRUE(s.set_queues({{"q", "", {2, 100, 1000}, std::nullopt, 1}}).ok());
  ASSERT_TRUE(s.submit(job("running", "q", {gpus(1)}, 5), 0).ok());
  EXPECT_EQ(s.schedule(0).started.size(), 1u);
  for (int i = 0; i < 50; ++i)
    ASSERT_TRUE(s.submit(job("big" + std::to_string(i), "q", {gpus(2)}, 5), 1).ok());
  ASSERT_TRUE(s.submit(job("small", "q", {gpus(1)}, 5), 1).ok());
  const CycleReport r = s.schedule(1);
  EXPECT_EQ(r.started, std::vector<std::string>{"small"});
  for (int i = 0; i < 50; ++i) {
    const WorkloadStatus* st = s.status("big" + std::to_string(i));
    EXPECT_EQ(st->state, WorkloadState::kPending);
    EXPECT_NE(st->reason.find("fits on no node"), std::string::npos) << st->reason;
  }
  // A higher priority like one is its own decision: it preempts.
  ASSERT_TRUE(s.submit(job("urgent", "q", {gpus(2)}, 9), 2).ok());
  EXPECT_EQ(s.schedule(2).started_by_preemption, std::vector<std::string>{"urgent"});
}

TEST(Scheduler, NeverPreemptsWhatIsNotPreemptible) {
  Cluster c;
  c.add_node(gpu_node(c, "n", 2));
  Scheduler s(c, policy("best-fit"), nullptr);
  ASSERT_TRUE(s.set_queues({{"q", "", {2, 100, 1000}, std::nullopt, 1}}).ok());
  ASSERT_TRUE(s.submit(job("serving", "q", {gpus(2)}, 0, false), 0).ok());
  (void)s.schedule(0);
  ASSERT_TRUE(s.submit(job("urgent", "q", {gpus(1)}, 100), 1).ok());
  EXPECT_TRUE(s.schedule(1).preempted.empty());
  EXPECT_EQ(s.status("serving")->state, WorkloadState::kRunning);
  EXPECT_NE(s.status("urgent")->reason.find("fits on no node"), std::string::npos);
}

TEST(Scheduler, AdmittedByQuotaButFitsOnNoNodeSaysWhy) {
  Cluster c;
  c.add_node(gpu_node(c, "a", 2));
  c.add_node(gpu_node(c, "b", 2));
  Scheduler s(c, policy("best-fit"), nullptr);
  ASSERT_TRUE(s.set_queues({{"q", "", {8, 100, 1000}, std::nullopt, 1}}).ok());
  ASSERT_TRUE(s.submit(job("eight", "q", {gpus(4)}), 0).ok());
  (void)s.schedule(0);
  const WorkloadStatus* st = s.status("eight");
  EXPECT_EQ(st->state, WorkloadState::kPending);
  EXPECT_EQ(st->reason, "fits on no node: 0/2 nodes are available: 2 insufficient GPU");
}

TEST(Scheduler, LimitIsNeverExceededAndSaysSo) {
  Cluster c;
  c.add_node(gpu_node(c, "a", 8));
  Scheduler s(c, policy("best-fit"), nullptr);
  ASSERT_TRUE(s.set_queues({{"q", "", {1, 100, 1000}, Resources{2, 1e9, 1e9}, 1}}).ok());
  ASSERT_TRUE(s.submit(job("one", "q", {gpus(2)}), 0).ok());
  ASSERT_TRUE(s.submit(job("two", "q", {gpus(1)}), 0).ok());
  (void)s.schedule(0);
  EXPECT_EQ(s.status("one")->state, WorkloadState::kRunning);
  EXPECT_EQ(s.status("two")->state, WorkloadState::kPending);
  EXPECT_NE(s.status("two")->reason.find("would exceed its limit"), std::string::npos);
}

TEST(Scheduler, AtItsLimitAQueueMayPreemptItsOwnLowerPriorityWork) {
  Cluster c;
  c.add_node(gpu_node(c, "n", 8));
  Scheduler s(c, policy("best-fit"), nullptr);
  ASSERT_TRUE(s.set_queues({{"q", "", {2, 100, 1000}, Resources{2, 1e9, 1e9}, 1}}).ok());
  ASSERT_TRUE(s.submit(job("low-a", "q", {gpus(1)}, 0), 0).ok());
  ASSERT_TRUE(s.submit(job("low-b", "q", {gpus(1)}, 0), 1).ok());
  (void)s.schedule(1);
  ASSERT_TRUE(s.submit(job("high", "q", {gpus(1)}, 9), 2).ok());
  CycleReport r = s.schedule(2);
  EXPECT_EQ(s.status("high")->state, WorkloadState::kRunning);
  ASSERT_EQ(r.preempted, std::vector<std::string>{"low-b"});  // the most recent
  EXPECT_NE(s.status("low-b")->reason.find("at its limit"), std::string::npos);
  for (const auto& q : s.queues()) EXPECT_LE(q.allocated.gpu, 2 + 1e-9);
  // An equal priority waits and says why.
  ASSERT_TRUE(s.submit(job("peer", "q", {gpus(1)}, 0), 3).ok());
  EXPECT_TRUE(s.schedule(3).preempted.empty());
  EXPECT_EQ(s.status("peer")->reason, "queue 'q' would exceed its limit of 2 GPUs (2 in use)");
}

TEST(Scheduler, MigSlicesAreChargedAsSlicesAgainstALimit) {
  Cluster c;
  c.add_node(gpu_node(c, "n", 2));
  Scheduler s(c, policy("best-fit"), nullptr);
  ASSERT_TRUE(s.set_queues({{"q", "", {1, 100, 1000}, Resources{1, 1e9, 1e9}, 1}}).ok());
  PodRequest slice;
  slice.mig_slices = 1;
  for (int i = 0; i < 8; ++i)
    ASSERT_TRUE(s.submit(job("s" + std::to_string(i), "q", {slice}), 0).ok());
  (void)s.schedule(0);
  int running = 0;
  for (int i = 0; i < 8; ++i)
    running += s.status("s" + std::to_string(i))->state == WorkloadState::kRunning;
  EXPECT_EQ(running, 7);  // one card's seven slices make exactly the 1-GPU limit
  EXPECT_DOUBLE_EQ(s.queues()[0].allocated.gpu, 1.0);
}

TEST(Placement, RequestsDifferingOnlyInMigMemoryAreScoredApart) {
  Cluster c;
  c.add_node(gpu_node(c, "x", 1));
  c.add_node(gpu_node(c, "y", 1));
  c.nodes()[0].devices[0].memory_mib = 40960;
  c.nodes()[1].devices[0].memory_mib = 40960;
  Node big = gpu_node(c, "z", 1);
  c.add_node(std::move(big));
  // No random tie-break: y (scored for the small profile) comes before z.
  Placer placer(c, *PlacementPolicy::parse("bestFit=1"), nullptr);
  PodRequest small, large;
  small.mig_slices = large.mig_slices = 7;
  small.mig_memory_mib = 40960;
  large.mig_memory_mib = 81920;
  const std::vector<int> forty = {0, 1};
  auto d = placer.place(small, &forty);
  ASSERT_GE(d.node, 0);
  (void)c.allocate(d.node, small, d.choice);
  // Only z's 80 GB card can take the large profile; a score cached for the
  // small one must not say otherwise.
  EXPECT_EQ(placer.place(large).node, 2);
}

TEST(Scheduler, GangIsAllOrNothingWithinOneRack) {
  Cluster c;
  for (int i = 0; i < 4; ++i) {
    Node n = gpu_node(c, "n" + std::to_string(i), 8);
    n.topology["rack"] = i < 2 ? "r0" : "r1";
    c.add_node(std::move(n));
  }
  Scheduler s(c, policy("loadstar"),
              std::make_shared<const Fragmentation>(std::vector<TaskType>{{gpus(8), 1.0}}));
  ASSERT_TRUE(s.set_queues({{"q", "", {32, 1000, 10000}, std::nullopt, 1}}).ok());
  // One card taken in each rack: no rack can now hold two 8-card pods.
  ASSERT_TRUE(s.submit(job("x", "q", {gpus(1)}), 0).ok());
  (void)s.schedule(0);
  const int x_node = s.status("x")->allocations[0].node;
  ASSERT_TRUE(s.submit(job("y", "q", {gpus(1)}), 0).ok());
  (void)s.schedule(0);
  // best rack for y is x's rack (tightest); force the other rack busy too
  const int y_node = s.status("y")->allocations[0].node;
  if (c.nodes()[x_node].topology.at("rack") == c.nodes()[y_node].topology.at("rack")) {
    s.remove("y", 0);
    const int other = x_node < 2 ? 2 : 0;
    PodRequest p = gpus(1);
    (void)c.allocate(other, p, {{0, kMilliPerGpu, 0}});
  }
  Workload gang = job("gang", "q", {gpus(8), gpus(8)});
  gang.topology_level = "rack";
  gang.topology_required = true;
  ASSERT_TRUE(s.submit(gang, 1).ok());
  (void)s.schedule(1);
  EXPECT_EQ(s.status("gang")->state, WorkloadState::kPending);
  EXPECT_TRUE(s.status("gang")->allocations.empty());
  EXPECT_EQ(s.status("gang")->reason, "no rack domain can hold 2 of its 2 pods together");
  uint64_t used = 0;
  for (const auto& n : c.nodes()) used += n.gpu_milli_total() - n.gpu_milli_free();
  EXPECT_EQ(used, 2000u);  // nothing of the gang left behind
  // Preferred instead of required: it runs, across racks.
  Workload relaxed = job("relaxed", "q", {gpus(8), gpus(8)});
  relaxed.topology_level = "rack";
  ASSERT_TRUE(s.submit(relaxed, 2).ok());
  (void)s.schedule(2);
  EXPECT_EQ(s.status("relaxed")->state, WorkloadState::kRunning);
  EXPECT_EQ(s.status("relaxed")->allocations.size(), 2u);
}

TEST(Scheduler, FairShareFollowsWeightsAndReclaimReturnsDeservedQuota) {
  Cluster c;
  for (int i = 0; i < 4; ++i) c.add_node(gpu_node(c, "n" + std::to_string(i), 8, "H100", 256000));
  Scheduler s(c, policy("best-fit"), nullptr);
  // 32 GPUs: a deserves 8, b deserves 8; the other 16 split 1:3 by weight.
  ASSERT_TRUE(s.set_queues({{"a", "", {8, 1000, 10000}, std::nullopt, 1},
                            {"b", "", {8, 1000, 10000}, std::nullopt, 3}})
                  .ok());
  int n = 0;
  for (int i = 0; i < 40; ++i)
    ASSERT_TRUE(s.submit(job("a" + std::to_string(n++), "a", {gpus(1)}), 0).ok());
  (void)s.schedule(0);
  auto share = [&](const char* q) {
    for (const auto& st : s.queues())
      if (st.name == q) return std::pair{st.allocated.gpu, st.fair_share.gpu};
    return std::pair{-1.0, -1.0};
  };
  EXPECT_DOUBLE_EQ(share("a").first, 32);  // alone, a borrows everything
  for (int i = 0; i < 40; ++i)
    ASSERT_TRUE(s.submit(job("b" + std::to_string(n++), "b", {gpus(1)}), 1).ok());
  CycleReport r = s.schedule(1);
  // b reclaims up to its fair share at once: 8 + 16 * 3/4 = 20; a keeps 12.
  EXPECT_DOUBLE_EQ(share("b").second, 20);
  EXPECT_DOUBLE_EQ(share("a").second, 12);
  EXPECT_DOUBLE_EQ(share("b").first, 20);
  EXPECT_DOUBLE_EQ(share("a").first, 12);
  EXPECT_EQ(r.preempted.size(), 20u);
  for (const auto& v : r.preempted) EXPECT_EQ(v[0], 'a');
  // Steady: another pass changes nothing (no flapping).
  EXPECT_TRUE(s.schedule(2).preempted.empty());
  // GPU-seconds: a had 32 GPUs for 1 s, then 12 for 1 s.
  s.advance(3);
  EXPECT_NEAR(s.tenant_gpu_seconds().at("a"), 32 + 12 + 12, 1e-6);
  EXPECT_NEAR(s.tenant_gpu_seconds().at("b"), 20 + 20, 1e-6);
}

TEST(Scheduler, HierarchicalFairShareSplitsTheParentsShareByWeight) {
  Cluster c;
  for (int i = 0; i < 2; ++i) c.add_node(gpu_node(c, "n" + std::to_string(i), 8, "H100", 256000));
  Scheduler s(c, policy("best-fit"), nullptr);
  // 16 GPUs. org (deserves 8) holds a (2, weight 1) and b (2, weight 3);
  // other (deserves 8) wants only 2, so org's share is 8 + 6 = 14, split
  // 2 + 2.5 and 2 + 7.5 between its children.
  ASSERT_TRUE(s.set_queues({{"org", "", {8, 1000, 10000}, std::nullopt, 1},
                            {"a", "org", {2, 500, 5000}, std::nullopt, 1},
                            {"b", "org", {2, 500, 5000}, std::nullopt, 3},
                            {"other", "", {8, 1000, 10000}, std::nullopt, 1}})
                  .ok());
  int n = 0;
  for (const char* q : {"a", "b"})
    for (int i = 0; i < 10; ++i)
      ASSERT_TRUE(s.submit(job("j" + std::to_string(n++), q, {gpus(1)}), 0).ok());
  for (int i = 0; i < 2; ++i)
    ASSERT_TRUE(s.submit(job("j" + std::to_string(n++), "other", {gpus(1)}), 0).ok());
  (void)s.schedule(0);
  std::map<std::string, QueueStatus> q;
  for (auto& st : s.queues()) q[st.name] = st;
  EXPECT_DOUBLE_EQ(q["other"].fair_share.gpu, 2);
  EXPECT_DOUBLE_EQ(q["org"].fair_share.gpu, 14);
  EXPECT_DOUBLE_EQ(q["a"].fair_share.gpu, 4.5);
  EXPECT_DOUBLE_EQ(q["b"].fair_share.gpu, 9.5);
  // Whole cards: the leaf furthest below its share goes first, so a and b
  // end within a card of their shares and the parent holds the sum.
  EXPECT_NEAR(q["a"].allocated.gpu, 4.5, 0.5 + 1e-9);
  EXPECT_NEAR(q["b"].allocated.gpu, 9.5, 0.5 + 1e-9);
  EXPECT_DOUBLE_EQ(q["org"].allocated.gpu, q["a"].allocated.gpu + q["b"].allocated.gpu);
  EXPECT_DOUBLE_EQ(q["other"].allocated.gpu, 2);
  // A workload in a queue with children is not run; it says why.
  ASSERT_TRUE(s.submit(job("misplaced", "org", {gpus(1)}), 1).ok());
  (void)s.schedule(1);
  EXPECT_EQ(s.status("misplaced")->reason, "queue 'org' has child queues; submit to a leaf queue");
}

TEST(Scheduler, QueueTreeErrors) {
  Cluster c;
  Scheduler s(c, policy("best-fit"), nullptr);
  EXPECT_EQ(s.set_queues({{"a", "nope", {}, std::nullopt, 1}}).error().message,
            "queue 'a': parent 'nope' does not exist");
  EXPECT_EQ(s.set_queues({{"a", "b", {}, std::nullopt, 1}, {"b", "a", {}, std::nullopt, 1}})
                .error()
                .message,
            "queue 'a': parents form a loop");
  EXPECT_FALSE(s.set_queues({{"a", "", {}, std::nullopt, 1}, {"a", "", {}, std::nullopt, 1}}).ok());
}

TEST(QueueSim, SharesConvergeToFairShares) {
  QueueSimOptions o;
  o.duration_s = 3600;
  auto result = run_queue_sim(o);
  EXPECT_GT(result.preemptions, 0u);         // reclaim happened
  EXPECT_LT(result.worst_steady_gap, 0.05);  // within 5% of the cluster in steady state
}

constexpr const char* kNodes =
    "sn,cpu_milli,memory_mib,gpu,model\n"
    "n0,32000,262144,2,V100M16\n"
    "n1,96000,393216,8,G2\n"
    "n2,64000,262144,4,T4\n";
constexpr const char* kPods =
    "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,"
    "deletion_time,scheduled_time\n"
    "p2,4000,8192,1,500,,LS,Running,20,30,20\n"
    "p0,8000,16384,1,1000,,LS,Running,0,10,0\n"
    "p1,4000,8192,1,250,T4|V100M16,LS,Running,10,30,10\n"
    "p3,2000,4096,0,0,,BE,Running,30,40,30\n"
    "p4,16000,65536,4,1000,nan,LS,Running,40,50,40\n";

TEST(Trace, ReadsOpenbAndReplaysDeterministically) {
  Cluster c;
  ASSERT_TRUE(load_openb_nodes(kNodes, "nodes.csv", c).ok());
  EXPECT_EQ(c.nodes().size(), 3u);
  EXPECT_EQ(c.gpu_milli_total(), 14000u);
  auto pods = load_openb_pods(kPods, "pods.csv", c);
  ASSERT_TRUE(pods.ok()) << pods.error().message;
  ASSERT_EQ(pods->size(), 5u);
  EXPECT_EQ((*pods)[0].name, "p0");  // sorted by creation time
  EXPECT_EQ((*pods)[1].request.gpu_milli, 250u);
  EXPECT_EQ((*pods)[1].request.allowed_models.size(), 2u);
  EXPECT_EQ((*pods)[4].request.gpu_count, 4u);
  auto tasks = inflate(*pods, c.gpu_milli_total(), 1.3, 5);
  auto run = [&] {
    Cluster fresh;
    EXPECT_TRUE(load_openb_nodes(kNodes, "nodes.csv", fresh).ok());
    for (const auto& m : c.models()) fresh.intern_model(m);
    std::vector<PodRequest> reqs;
    for (const auto& t : *pods) reqs.push_back(t.request);
    auto f = std::make_shared<const Fragmentation>(Fragmentation::from_tasks(reqs, 1.0));
    Placer placer(fresh, policy("fgd"), f, 9);
    return fill(fresh, placer, tasks, 0.05);
  };
  auto a = run(), b = run();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].allocated, b[i].allocated);
    EXPECT_EQ(a[i].unplaced, b[i].unplaced);
  }
  EXPECT_GE(a.back().arrived, 1.3);
  EXPECT_LE(a.back().allocated, 1.0);
}

// The FGD paper's own simulator's arrival: every trace task once, shuffled
// by the seed, then draws with replacement until the next would pass the
// target by its per-card request.
TEST(Trace, ThePapersArrivalShufflesThenDrawsUpToTheTarget) {
  Cluster c;
  ASSERT_TRUE(load_openb_nodes(kNodes, "nodes.csv", c).ok());
  auto pods = load_openb_pods(kPods, "pods.csv", c);
  ASSERT_TRUE(pods.ok());
  const auto a = paper_arrival(*pods, c.gpu_milli_total(), 1.3, 42);
  EXPECT_EQ(a.size(), paper_arrival(*pods, c.gpu_milli_total(), 1.3, 42).size());
  std::vector<std::string> first, names;
  for (size_t i = 0; i < pods->size(); ++i) first.push_back(a[i].name);
  for (const auto& p : *pods) names.push_back(p.name);
  std::sort(first.begin(), first.end());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(first, names);  // the trace itself, in some order, comes first
  double arrived = 0;
  for (const auto& t : a) arrived += static_cast<double>(t.request.gpu_milli_request());
  const double goal = 1.3 * static_cast<double>(c.gpu_milli_total());
  EXPECT_GT(arrived, goal - 1000);  // the draw that ended it asked for at most a card
  EXPECT_LE(arrived, goal + 7000);  // a multi-card draw may pass it (as the paper's does)
  for (size_t i = pods->size(); i < a.size(); ++i)
    EXPECT_NE(a[i].name.find("-tuned-"), std::string::npos);
  // Another seed, another order.
  const auto b = paper_arrival(*pods, c.gpu_milli_total(), 1.3, 43);
  bool same = a.size() == b.size();
  for (size_t i = 0; same && i < a.size(); ++i) same = a[i].name == b[i].name;
  EXPECT_FALSE(same);
}

TEST(Trace, CurvesAreAveragedPointByPoint) {
  const std::vector<FillPoint> a = {{0.5, 0.5, 10, 0}, {1.0, 0.9, 20, 1}, {1.3, 0.92, 30, 4}};
  const std::vector<FillPoint> b = {
      {0.5, 0.4, 12, 0}, {1.0, 0.8, 22, 3}, {1.2, 0.85, 25, 5}, {1.31, 0.88, 28, 6}};
  const auto m = mean_curve({a, b});
  ASSERT_EQ(m.size(), 3u);  // the two points both have, then the ends
  EXPECT_DOUBLE_EQ(m[0].allocated, 0.45);
  EXPECT_DOUBLE_EQ(m[1].arrived, 1.0);
  EXPECT_EQ(m[1].unplaced, 2u);
  EXPECT_DOUBLE_EQ(m[2].arrived, 1.305);
  EXPECT_DOUBLE_EQ(m[2].allocated, 0.90);
  EXPECT_EQ(m[2].tasks, 29u);
  EXPECT_TRUE(mean_curve({}).empty());
}

// Found by fuzz/scheduler_trace_fuzz: pods and no nodes looped forever,
// recording points at arrived = demand / 0.
TEST(Trace, FillWithoutGpusEnds) {
  Cluster c;
  auto pods = load_openb_pods(kPods, "pods.csv", c);
  ASSERT_TRUE(pods.ok());
  Placer placer(c, policy("best-fit"), nullptr);
  auto points = fill(c, placer, *pods, 0.1);
  ASSERT_EQ(points.size(), 1u);
  EXPECT_EQ(points[0].unplaced, pods->size());
  EXPECT_EQ(points[0].allocated, 0);
}

TEST(Trace, ErrorsNameTheLineAndColumn) {
  Cluster c;
  EXPECT_EQ(load_openb_nodes("sn,cpu_milli,memory_mib,gpu\n", "nodes.csv", c).error().message,
            "nodes.csv:1: missing column 'model'");
  EXPECT_EQ(load_openb_nodes("sn,cpu_milli,memory_mib,gpu,model\nn0,lots,1,1,T4\n", "nodes.csv", c)
                .error()
                .message,
            "nodes.csv:2: cpu_milli: 'lots' is not a non-negative number");
  EXPECT_EQ(load_openb_nodes("sn,cpu_milli,memory_mib,gpu,model\nn0,1,1\n", "nodes.csv", c)
                .error()
                .message,
            "nodes.csv:2: has 3 fields, the header has 5");
  auto bad = load_openb_pods(
      "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,creation_time\np,1,1,1,1500,,0\n",
      "pods.csv", c);
  EXPECT_EQ(bad.error().message, "pods.csv:2: gpu_milli: 1500 is above 1000");
}

}  // namespace
}  // namespace loadstar::scheduler
