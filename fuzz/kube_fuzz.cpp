// The Kubernetes client's parsers of what comes over the wire or from disk:
// watch streams (split at any byte) applied to the informer's cache,
// kubeconfig files and quantities. Invariants: a stream decodes to the same
// events however it is split; the cache never throws on a corrupt event;
// a parsed quantity is a non-negative number.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/check.h"
#include "kube/client.h"
#include "kube/informer.h"
#include "kube/objects.h"

using loadstar::kube::WatchEvent;

namespace {

std::vector<std::string> decode(std::string_view a, std::string_view b) {
  loadstar::kube::WatchDecoder decoder;
  loadstar::kube::ObjectCache cache;
  std::vector<std::string> seen;
  auto on_event = [&](WatchEvent event) {
    seen.push_back(event.type + event.object.dump());
    (void)cache.apply(event);
    return true;
  };
  if (auto r = decoder.feed(a, on_event); !r.ok()) return seen;
  (void)decoder.feed(b, on_event);
  return seen;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  // Split where the first byte says; one piece or two, the same events
  // come out as long as no line is malformed.
  const size_t split = size ? data[0] % (size + 1) : 0;
  auto whole = decode(text, "");
  auto pieces = decode(text.substr(0, split), text.substr(split));
  LS_CHECK(whole == pieces);
  (void)loadstar::kube::parse_kubeconfig(text, "fuzz");
  if (auto q = loadstar::kube::parse_quantity(text.substr(0, 64)); q) LS_CHECK(*q >= 0);
  loadstar::kube::ObjectCache cache;
  const auto doc = nlohmann::json::parse(text, nullptr, false);
  cache.replace(doc);
  const loadstar::kube::Pod pod = loadstar::kube::pod_from_json(doc);
  LS_CHECK(!pod.phase.empty());
  for (const auto& [resource, q] : loadstar::kube::node_from_json(doc).allocatable)
    LS_CHECK(q >= 0);
  return 0;
}
