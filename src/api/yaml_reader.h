// How resources.cpp reads YAML: a Decoder collects every error of a file
// with where it is (file:line:column, the object, the field path), and a
// MapReader walks one map, reads fields by name and reports the keys nobody
// read as unknown, with the closest known name as a hint. Private to
// src/api (yaml-cpp stays out of every other header).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include "common/result.h"
#include "common/strings.h"
#include "common/units.h"

namespace loadstar::api::detail {

// While decoder_field_paths() runs: every field path the decoder asks for.
extern thread_local std::vector<std::string>* g_field_log;

// Collects errors for one document; every message says where.
class Decoder {
 public:
  explicit Decoder(std::string_view file) : file_(file) {}

  void set_subject(std::string subject) { subject_ = std::move(subject); }
  void error(const YAML::Node& at, std::string_view field, std::string_view message) {
    const YAML::Mark mark = at.Mark();
    std::string where = std::string(file_);
    if (mark.line >= 0) where += fmt::format(":{}:{}", mark.line + 1, mark.column + 1);
    errors_.push_back(fmt::format("{}: {}{}{}: {}", where, subject_, subject_.empty() ? "" : ": ",
                                  field, message));
  }
  std::vector<std::string>& errors() { return errors_; }

 private:
  std::string_view file_;
  std::string subject_;  // "InferenceService chat"
  std::vector<std::string> errors_;
};

// Walks one YAML map: fields are read by name, and finish() reports every
// key nobody read as unknown, with the closest known name as a hint.
class MapReader {
 public:
  MapReader(Decoder& d, const YAML::Node& node, std::string path)
      : d_(d), node_(node), path_(std::move(path)) {
    ok_ = node_.IsMap();
    if (!ok_ && node_.IsDefined() && !node_.IsNull()) d_.error(node_, path_, "must be a map");
  }
  bool ok() const { return ok_; }
  std::string field(std::string_view key) const {
    return path_.empty() ? std::string(key) : path_ + "." + std::string(key);
  }

  YAML::Node get(const char* key) {
    known_.insert(key);
    if (g_field_log) log_field(field(key));
    if (!ok_) return YAML::Node();
    return node_[key];
  }

  bool string(const char* key, std::string& out, bool required) {
    YAML::Node v = get(key);
    if (!v || v.IsNull()) {
      if (required) d_.error(node_, field(key), "required");
      return false;
    }
    if (!v.IsScalar()) {
      d_.error(v, field(key), "must be a string");
      return false;
    }
    out = v.Scalar();
    return true;
  }

  bool uint(const char* key, uint32_t& out) {
    YAML::Node v = get(key);
    if (!v || v.IsNull()) return false;
    const std::string s = v.IsScalar() ? v.Scalar() : "";
    char* end = nullptr;
    unsigned long long n = s.empty() ? 0 : std::strtoull(s.c_str(), &end, 10);
    if (s.empty() || *end != '\0' || s[0] == '-' || n > UINT32_MAX) {
      d_.error(v, field(key), fmt::format("must be a non-negative integer, got '{}'", s));
      return false;
    }
    out = static_cast<uint32_t>(n);
    return true;
  }

  bool number(const char* key, std::optional<double>& out, double min, double max) {
    YAML::Node v = get(key);
    if (!v || v.IsNull()) return false;
    double value = 0;
    if (!v.IsScalar() || !YAML::convert<double>::decode(v, value) || !std::isfinite(value) ||
        value < min || value > max) {
      d_.error(v, field(key), fmt::format("must be a number from {} to {}", min, max));
      return false;
    }
    out = value;
    return true;
  }

  bool optional_uint(const char* key, std::optional<uint32_t>& out) {
    uint32_t value = 0;
    if (!uint(key, value)) return false;
    out = value;
    return true;
  }

  bool integer(const char* key, int32_t& out) {
    YAML::Node v = get(key);
    if (!v || v.IsNull()) return false;
    if (!v.IsScalar() || !YAML::convert<int32_t>::decode(v, out)) {
      d_.error(v, field(key), "must be an integer");
      return false;
    }
    return true;
  }

  bool boolean(const char* key, bool& out) {
    YAML::Node v = get(key);
    if (!v || v.IsNull()) return false;
    if (!v.IsScalar() || !YAML::convert<bool>::decode(v, out)) {
      d_.error(v, field(key), "must be true or false");
      return false;
    }
    return true;
  }

  bool duration(const char* key, double& seconds) {
    YAML::Node v = get(key);
    if (!v || v.IsNull()) return false;
    auto parsed =
        v.IsScalar()
            ? parse_duration(v.Scalar())
            : Result<double>(Error{ErrorCode::kInvalidArgument, "must be a duration such as 30s"});
    if (!parsed.ok()) {
      d_.error(v, field(key), parsed.error().message);
      return false;
    }
    seconds = *parsed;
    return true;
  }

  // Calls `each(item, path)` for every element of a list field.
  template <typename Each>
  void list(const char* key, Each&& each) {
    YAML::Node v = get(key);
    if (!v || v.IsNull()) return;
    if (!v.IsSequence()) {
      d_.error(v, field(key), "must be a list");
      return;
    }
    for (size_t i = 0; i < v.size(); ++i) each(v[i], fmt::format("{}[{}]", field(key), i));
  }

  bool quantity(const char* key, std::optional<uint64_t>& out) {
    YAML::Node v = get(key);
    if (!v || v.IsNull()) return false;
    auto bytes = v.IsScalar() ? parse_bytes(v.Scalar())
                              : Result<uint64_t>(Error{ErrorCode::kInvalidArgument,
                                                       "must be a quantity such as 40Gi"});
    if (!bytes.ok()) {
      d_.error(v, field(key), bytes.error().message);
      return false;
    }
    out = *bytes;
    return true;
  }

  static void log_field(const std::string& path) {
    std::string out;  // list indexes as "[]"
    for (size_t i = 0; i < path.size(); ++i) {
      out.push_back(path[i]);
      if (path[i] == '[') {
        while (i + 1 < path.size() && path[i + 1] != ']') ++i;
      }
    }
    if (std::find(g_field_log->begin(), g_field_log->end(), out) == g_field_log->end())
      g_field_log->push_back(out);
  }

  void finish() {
    if (!ok_) return;
    for (const auto& kv : node_) {
      const std::string key = kv.first.Scalar();
      if (known_.count(key)) continue;
      const std::string near = closest(key, std::vector<std::string>(known_.begin(), known_.end()));
      d_.error(kv.first, field(key),
               "unknown field" + (near.empty() ? "" : fmt::format(" (did you mean '{}'?)", near)));
    }
  }

 private:
  Decoder& d_;
  YAML::Node node_;
  std::string path_;
  bool ok_ = false;
  std::set<std::string> known_;
};

}  // namespace loadstar::api::detail
