// The node agent's parsers of untrusted input: manifests (from an origin or
// the Hub), URLs and Location headers, sources and addresses against the
// source policy. Invariants: a validated path never leaves the model
// directory; a parsed URL has a target starting with '/'; an admitted
// file:// source is under the allowed directory; no 169.254.x.x address is
// ever admitted; a kubelet device checkpoint (and the agent's listing of
// it) parses or is refused, round-trips, and names only cards it registers.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string_view>

#include "agent/device_checkpoint.h"
#include "agent/manifest.h"
#include "agent/source_policy.h"
#include "common/check.h"
#include "common/url.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  if (auto m = loadstar::agent::manifest_from_json(text); m.ok()) {
    for (const auto& f : m->files) {
      auto normal = (std::filesystem::path("/model") / f.path).lexically_normal().string();
      LS_CHECK(normal.starts_with("/model/"));
    }
    auto again = loadstar::agent::manifest_from_json(loadstar::agent::manifest_to_json(*m));
    LS_CHECK(again.ok() && again->version_id() == m->version_id());
  }
  if (loadstar::agent::validate_relative_path(text).ok()) {
    auto normal = (std::filesystem::path("/model") / std::string(text)).lexically_normal().string();
    LS_CHECK(normal.starts_with("/model/"));
  }
  const size_t split = text.find('\n');
  if (auto url = loadstar::parse_url(text.substr(0, split)); url.ok()) {
    LS_CHECK(!url->target.empty() && url->target[0] == '/');
    if (split != std::string_view::npos)
      if (auto next = loadstar::resolve_location(*url, text.substr(split + 1)); next.ok())
        LS_CHECK(!next->target.empty() && next->target[0] == '/');
  }
  static const auto policy =
      loadstar::agent::SourcePolicy::create({"file:///srv/models", "hf://org/"}, false);
  if (policy->admit(text).ok() && text.starts_with("file://")) {
    auto normal = std::filesystem::path(std::string(text.substr(7))).lexically_normal().string();
    LS_CHECK(normal.starts_with("/srv/models"));
  }
  for (auto parsed : {loadstar::agent::parse_device_checkpoint(text),
                      loadstar::agent::parse_device_listing(text)}) {
    if (!parsed.ok()) continue;
    auto again =
        loadstar::agent::parse_device_listing(loadstar::agent::device_listing_json(*parsed));
    LS_CHECK(again.ok() && again->pods == parsed->pods && again->registered == parsed->registered);
    for (const auto& [uid, resources] : parsed->pods)
      for (const auto& [resource, ids] : resources) {
        const auto cards = loadstar::agent::cards_of(*parsed, uid, resource);
        const auto registered = parsed->registered.find(resource);
        LS_CHECK(cards.size() <= ids.size());
        for (int c : cards)
          LS_CHECK(c >= 0 && registered != parsed->registered.end() &&
                   static_cast<size_t>(c) < registered->second.size());
      }
  }
  if (loadstar::agent::admit_fetch_address(text, true).ok())
    LS_CHECK(!text.starts_with("169.254."));
  return 0;
}
