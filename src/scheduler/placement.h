// Placement: filter the nodes a pod fits on, score each (node, devices)
// choice by a weighted sum of scorers, take the cheapest. Pure: no I/O, no
// clock; randomness only from a seeded generator.
//
// Scorers (every one a cost: lower is better):
//   random        uniform noise (Random-fit)
//   best-fit      share of the node's CPU and GPU left free after placing
//   best-fit-paper the FGD paper simulator's Best-fit, as it computes it:
//                 CPU and GPU left free half and half, normalised by a
//                 largest node (128 cores, 8 GPUs), cut to an integer score
//                 0-100; ties at random, the tightest card within the node
//   dot-product   minus the alignment of demand and free capacity (Tetris)
//   gpu-packing   prefer partly used cards, then used nodes, then idle ones
//   fragmentation FGD: growth of the node's expected GPU fragmentation for
//                 the target workload (Weng et al., ATC'23), in GPUs
//   fragmentationPaper FGD as the paper's simulator scores it: whole points
//                 of 100 x sigmoid(-growth in GPUs), higher better (about
//                 0.04 GPU a point near no growth)
//   locality      -1 on a node whose agent already holds the pod's weights,
//                 -1 more where the pod's group has pods on it or in its
//                 NVLink domain or rack (a disaggregated service's prefill
//                 and decode pools, whose KV crosses between them)
//
// Scores depend only on a node's state and the request, so they are cached
// per (request shape, node) and recomputed only for nodes that changed.
#pragma once

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/result.h"
#include "scheduler/cluster.h"

namespace loadstar::scheduler {

enum class Scorer {
  kRandom,
  kBestFit,
  kDotProduct,
  kGpuPacking,
  kFragmentation,
  kLocality,
  kBestFitPaper,
  kFragmentationPaper
};
inline constexpr int kScorerCount = 8;
std::string_view scorer_name(Scorer scorer);
Result<Scorer> parse_scorer(std::string_view name);

// How a node is chosen among nodes of equal cost.
enum class Ties {
  kFirst,   // the first in the cluster's node order
  kRandom,  // at random (kube-scheduler's selectHost)
  // The first in a random order drawn once per Placer from its seed: the
  // FGD paper's simulator, which prefixes node names with a seeded
  // permutation and takes the smallest name among equal scores.
  kShuffledOrder,
};

struct PlacementPolicy {
  std::string name;
  double weights[kScorerCount] = {};
  Ties ties = Ties::kFirst;
  // FGD's target workload in the simulator: the FGD authors' typical pods
  // (Fragmentation::typical) rather than every task type.
  bool typical_target = false;
  // Nodes whose costs differ by at most this are tied; below it, only the
  // choice of devices within a node is decided.
  double tie_tolerance = 1e-12;

  double weight(Scorer s) const { return weights[static_cast<int>(s)]; }
  // The named policies: random, best-fit, best-fit-paper, dot-product,
  // gpu-packing, fgd, fgd-paper, and loadstar (the default: FGD at the
  // paper's score resolution, the paper's Best-fit among equal scores, and
  // locality).
  static Result<PlacementPolicy> named(std::string_view name);
  // A named policy, or weights such as "fragmentation=1,bestFit=0.05,locality=0.5"
  // (scorer names as in scorer_name; exact ties then go to the first node).
  static Result<PlacementPolicy> parse(std::string_view text);
  static std::vector<std::string> names();
};

// One kind of task in the workload the cluster expects, with its share of
// all tasks (popularity). FGD measures fragmentation against it.
struct TaskType {
  PodRequest request;
  double weight = 0;
};

// FGD's fragmentation measure. F_n(m), for a node n and a task m: all of n's
// free GPU capacity if m cannot run on n, or if m wants no GPU (it can use
// none of them, fitting or not: the paper's XL and XR cases); otherwise the
// free capacity of the cards too small for m (free < m's demand on one card,
// capped at a whole card; a card of a model m may not use counts as too
// small). F_n(M) is the popularity-weighted sum over the target workload M.
// In milli-GPUs.
class Fragmentation {
 public:
  explicit Fragmentation(std::vector<TaskType> target);
  // The most popular task types covering `coverage` (0..1] of `tasks`, each
  // weighted by its popularity.
  static Fragmentation from_tasks(const std::vector<PodRequest>& tasks, double coverage);
  // The FGD authors' typical pods (their simulator's GetTypicalPods with
  // the settings of their experiments): task types told apart by CPU, GPU
  // share, card count and models only (memory is not compared, a task
  // without CPU counts 100 millicores, as kube-scheduler's non-zero
  // requests), the most popular ones up to 95% of the tasks, weighted by
  // their share of those.
  static Fragmentation typical(const std::vector<PodRequest>& tasks);

  double of(const Node& node) const;
  // F of `node` as if `request` were placed there with `choice`.
  double after(const Node& node, const PodRequest& request, const DeviceChoice& choice) const;
  const std::vector<TaskType>& target() const { return target_; }

 private:
  struct View;
  double measure(const View& view) const;
  std::vector<TaskType> target_;
};

class Placer {
 public:
  // Without `fragmentation` (no target workload known) the FGD scorer is off.
  Placer(const Cluster& cluster, PlacementPolicy policy,
         std::shared_ptr<const Fragmentation> fragmentation, uint64_t seed = 1);

  struct Decision {
    int node = -1;
    DeviceChoice choice;
    double cost = 0;
  };
  // The best node and devices for `request` among `candidates` (all nodes
  // when null), or node -1 when it fits nowhere.
  Decision place(const PodRequest& request, const std::vector<int>* candidates = nullptr);
  // The cost of the best choice on node `n` (+inf when it does not fit).
  double node_cost(int n, const PodRequest& request, DeviceChoice* best = nullptr);

  const PlacementPolicy& policy() const { return policy_; }
  // A new target workload for FGD (the expected mix changed); drops cached
  // scores.
  void set_fragmentation(std::shared_ptr<const Fragmentation> fragmentation);

 private:
  struct Cached {
    uint64_t generation = 0;  // node generation + 1; 0: empty
    double cost = 0;
    int choice = -1;  // index into Cluster::choices, -1: does not fit
  };
  double evaluate(int n, const PodRequest& request, int& best_choice);
  double choice_cost(const Node& node, const PodRequest& request, const DeviceChoice& choice,
                     double frag_before);
  std::vector<Cached>& cache_for(const PodRequest& request);
  // Whether node `a` goes before node `b` among equal costs (kShuffledOrder).
  bool before(int a, int b);

  const Cluster& cluster_;
  PlacementPolicy policy_;
  std::shared_ptr<const Fragmentation> fragmentation_;
  std::mt19937_64 rng_;
  bool cacheable_;
  std::unordered_map<std::string, std::vector<Cached>> cache_;  // by request shape
  std::vector<std::pair<uint64_t, double>> frag_before_;        // per node: generation+1, F
  std::vector<DeviceChoice> scratch_;
  std::vector<uint32_t> rank_;  // Ties::kShuffledOrder: each node's place in the order
};

}  // namespace loadstar::scheduler
