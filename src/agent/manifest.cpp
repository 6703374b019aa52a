#include "agent/manifest.h"

#include <set>

#include <nlohmann/json.hpp>

#include "common/digest.h"

namespace loadstar::agent {

using nlohmann::json;

uint64_t Manifest::total_bytes() const {
  uint64_t total = 0;
  for (const auto& f : files) total += f.size;
  return total;
}

std::string Manifest::version_id() const {
  std::string key = revision;
  for (const auto& f : files)
    key += "\n" + f.path + "\t" + std::to_string(f.size) + "\t" + f.sha256 + "\t" + f.etag;
  return sha256_hex(key).substr(0, 16);
}

Status validate_relative_path(std::string_view path) {
  if (path.empty()) return make_error(ErrorCode::kInvalidArgument, "empty file name");
  if (path.size() > 1024)
    return make_error(ErrorCode::kInvalidArgument, "file name longer than 1024 bytes");
  if (path[0] == '/')
    return make_error(ErrorCode::kInvalidArgument, "'{}' is an absolute path", path);
  for (unsigned char c : path)
    if (c < 0x20 || c == 0x7f || c == '\\')
      return make_error(ErrorCode::kInvalidArgument,
                        "'{}' contains a control character or a backslash", path);
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string_view::npos) end = path.size();
    std::string_view part = path.substr(start, end - start);
    if (part.empty() || part == "." || part == "..")
      return make_error(ErrorCode::kInvalidArgument,
                        "'{}' has an empty, '.' or '..' component; files must stay inside the "
                        "model directory",
                        path);
    start = end + 1;
  }
  return {};
}

Status validate_manifest(const Manifest& manifest) {
  std::set<std::string> seen;
  for (const auto& f : manifest.files) {
    if (Status s = validate_relative_path(f.path); !s.ok())
      return std::move(s).error().context("manifest of " + manifest.source);
    if (!seen.insert(f.path).second)
      return make_error(ErrorCode::kInvalidArgument, "manifest of {}: '{}' listed twice",
                        manifest.source, f.path);
    if (!f.sha256.empty()) {
      bool hex = f.sha256.size() == 64;
      for (char c : f.sha256) hex = hex && ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'));
      if (!hex)
        return make_error(ErrorCode::kInvalidArgument,
                          "manifest of {}: '{}' has a malformed sha256 '{}'", manifest.source,
                          f.path, f.sha256);
    }
  }
  if (manifest.files.empty())
    return make_error(ErrorCode::kNotFound, "{} lists no files", manifest.source);
  return {};
}

std::string blob_key(const Manifest& manifest, const FileEntry& file) {
  if (!file.sha256.empty()) return "sha256-" + file.sha256;
  return "src-" + sha256_hex(manifest.source + "\n" + manifest.revision + "\n" + file.path + "\n" +
                             std::to_string(file.size) + "\n" + file.etag);
}

std::string manifest_to_json(const Manifest& manifest) {
  json files = json::array();
  for (const auto& f : manifest.files) {
    json entry = {{"path", f.path}, {"size", f.size}};
    if (!f.sha256.empty()) entry["sha256"] = f.sha256;
    if (!f.etag.empty()) entry["etag"] = f.etag;
    files.push_back(std::move(entry));
  }
  return json{{"source", manifest.source}, {"revision", manifest.revision}, {"files", files}}.dump(
      2);
}

namespace {

// An optional string member of a manifest object: absent is "", any other type
// is an error naming the member.
Result<std::string> optional_string(const json& object, const char* key, std::string_view where) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return std::string();
  if (!it->is_string())
    return make_error(ErrorCode::kCorrupt, "manifest {}: '{}' must be a string, not {}", where, key,
                      it->type_name());
  return it->get<std::string>();
}

}  // namespace

Result<Manifest> manifest_from_json(std::string_view text) {
  json doc = json::parse(text, nullptr, false);
  if (doc.is_discarded() || !doc.is_object() || !doc.contains("files") || !doc["files"].is_array())
    return make_error(ErrorCode::kCorrupt, "not a manifest (JSON object with a files array)");
  Manifest m;
  LS_ASSIGN_OR_RETURN(m.source, optional_string(doc, "source", "document"));
  LS_ASSIGN_OR_RETURN(m.revision, optional_string(doc, "revision", "document"));
  for (const auto& f : doc["files"]) {
    if (!f.is_object() || !f.contains("path") || !f["path"].is_string() || !f.contains("size") ||
        !f["size"].is_number_unsigned())
      return make_error(ErrorCode::kCorrupt, "manifest entry without a path and a size");
    FileEntry file{f["path"].get<std::string>(), f["size"].get<uint64_t>(), "", ""};
    const std::string where = "entry '" + file.path + "'";
    LS_ASSIGN_OR_RETURN(file.sha256, optional_string(f, "sha256", where));
    LS_ASSIGN_OR_RETURN(file.etag, optional_string(f, "etag", where));
    m.files.push_back(std::move(file));
  }
  LS_RETURN_IF_ERROR(validate_manifest(m));
  return m;
}

}  // namespace loadstar::agent
