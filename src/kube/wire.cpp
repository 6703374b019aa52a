// The API's wire formats, pure: watch streams, paths, quantities, status
// codes, and the informer's cache of a collection.
#include <cstdlib>

#include <fmt/format.h>

#include "common/strings.h"
#include "kube/client.h"
#include "kube/informer.h"

namespace loadstar::kube {

Result<bool> WatchDecoder::feed(std::string_view data,
                                const std::function<bool(WatchEvent)>& on_event) {
  pending_.append(data);
  size_t start = 0;
  for (size_t nl; (nl = pending_.find('\n', start)) != std::string::npos; start = nl + 1) {
    std::string_view line(pending_.data() + start, nl - start);
    if (line.find_first_not_of(" \r\t") == std::string_view::npos) continue;
    json parsed = json::parse(line, nullptr, false);
    if (!parsed.is_object() || !parsed.contains("type") || !parsed["type"].is_string() ||
        !parsed.contains("object") || !parsed["object"].is_object()) {
      return make_error(ErrorCode::kCorrupt, "watch stream: not an event: {}",
                        utf8_clip(line, 200));
    }
    WatchEvent event{parsed["type"].get<std::string>(), std::move(parsed["object"])};
    if (!on_event(std::move(event))) {
      pending_.erase(0, nl + 1);
      return false;
    }
  }
  pending_.erase(0, start);
  return true;
}

std::string collection_path(std::string_view group_version, std::string_view namespace_name,
                            std::string_view plural) {
  const bool core = group_version == "v1";
  std::string path = core ? "/api/v1" : fmt::format("/apis/{}", group_version);
  if (!namespace_name.empty()) path += fmt::format("/namespaces/{}", namespace_name);
  return path + "/" + std::string(plural);
}

std::optional<double> parse_quantity(std::string_view text) {
  static const std::pair<std::string_view, double> kSuffixes[] = {{"Ki", 1024.0},
                                                                  {"Mi", 1048576.0},
                                                                  {"Gi", 1073741824.0},
                                                                  {"Ti", 1099511627776.0},
                                                                  {"Pi", 1125899906842624.0},
                                                                  {"Ei", 1152921504606846976.0},
                                                                  {"m", 1e-3},
                                                                  {"k", 1e3},
                                                                  {"M", 1e6},
                                                                  {"G", 1e9},
                                                                  {"T", 1e12},
                                                                  {"P", 1e15},
                                                                  {"E", 1e18}};
  double scale = 1;
  for (const auto& [suffix, factor] : kSuffixes)
    if (text.size() > suffix.size() && text.ends_with(suffix)) {
      text.remove_suffix(suffix.size());
      scale = factor;
      break;
    }
  if (text.empty()) return std::nullopt;
  const std::string number(text);
  char* end = nullptr;
  const double value = std::strtod(number.c_str(), &end);
  if (end != number.c_str() + number.size() || value < 0) return std::nullopt;
  return value * scale;
}

ErrorCode error_code_for_status(int status) {
  switch (status) {
    case 400:
    case 422:
      return ErrorCode::kInvalidArgument;
    case 401:
    case 403:
      return ErrorCode::kPermissionDenied;
    case 404:
      return ErrorCode::kNotFound;
    case 409:
      return ErrorCode::kConflict;
    case 410:
      return ErrorCode::kExpired;
    case 429:
      return ErrorCode::kResourceExhausted;
    default:
      return status >= 500 ? ErrorCode::kUnavailable : ErrorCode::kInternal;
  }
}

namespace {

// A string field of an object; empty when absent or of another type (the
// server never sends that, but a corrupt stream must not throw).
std::string string_field(const json& object, const char* key) {
  if (!object.is_object()) return {};
  auto it = object.find(key);
  return it != object.end() && it->is_string() ? it->get<std::string>() : std::string();
}

const json& metadata(const json& object) {
  static const json kEmpty = json::object();
  if (!object.is_object()) return kEmpty;
  auto it = object.find("metadata");
  return it != object.end() && it->is_object() ? *it : kEmpty;
}

}  // namespace

std::string object_key(const json& object) {
  const json& meta = metadata(object);
  const std::string name = string_field(meta, "name");
  const std::string ns = string_field(meta, "namespace");
  return ns.empty() ? name : ns + "/" + name;
}

void ObjectCache::replace(const json& list) {
  objects_.clear();
  if (list.is_object() && list.contains("items") && list["items"].is_array())
    for (const auto& item : list["items"]) objects_[object_key(item)] = item;
  resource_version_ = string_field(metadata(list), "resourceVersion");
}

Status ObjectCache::apply(const WatchEvent& event) {
  if (event.type == "ERROR") {
    const json* code =
        event.object.is_object() && event.object.contains("code") ? &event.object["code"] : nullptr;
    const int status = code && code->is_number_integer() ? code->get<int>() : 0;
    return Error{error_code_for_status(status),
                 fmt::format("watch error {}: {}", status, string_field(event.object, "message"))};
  }
  const std::string version = string_field(metadata(event.object), "resourceVersion");
  if (event.type == "ADDED" || event.type == "MODIFIED") {
    objects_[object_key(event.object)] = event.object;
  } else if (event.type == "DELETED") {
    objects_.erase(object_key(event.object));
  } else if (event.type != "BOOKMARK") {
    return make_error(ErrorCode::kCorrupt, "watch event of unknown type '{}'", event.type);
  }
  if (!version.empty()) resource_version_ = version;
  return ok_status();
}

}  // namespace loadstar::kube
