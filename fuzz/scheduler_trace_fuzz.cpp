// libFuzzer: the openb trace reader never crashes on any bytes, and whatever
// it accepts the scheduler can place without breaking an invariant (a task
// it admits fits the cluster's accounting: nothing over a card, nothing
// freed twice).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "scheduler/placement.h"
#include "scheduler/trace.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  // The first line that starts with "sn," begins the node list; everything
  // before it is the pod list.
  const size_t split = text.find("\nsn,");
  using namespace loadstar::scheduler;
  Cluster cluster;
  std::string_view pods_text = split == std::string_view::npos ? text : text.substr(0, split);
  if (split != std::string_view::npos)
    if (!load_openb_nodes(text.substr(split + 1), "nodes", cluster).ok()) return 0;
  auto pods = load_openb_pods(pods_text, "pods", cluster);
  if (!pods.ok() || cluster.nodes().size() > 64 || pods->size() > 256) return 0;
  std::vector<PodRequest> requests;
  for (const auto& t : *pods) requests.push_back(t.request);
  auto f = std::make_shared<const Fragmentation>(Fragmentation::from_tasks(requests, 1.0));
  Placer placer(cluster, *PlacementPolicy::named("loadstar"), f);
  auto points = fill(cluster, placer, *pods, 0.1);
  if (cluster.gpu_milli_used() > cluster.gpu_milli_total()) std::abort();
  for (const auto& n : cluster.nodes())
    for (const auto& d : n.devices)
      if (d.milli_used > kMilliPerGpu) std::abort();
  return 0;
}
