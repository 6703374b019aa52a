#include "store/store.h"

#include <fstream>
#include <sstream>

#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

namespace loadstar::store {

namespace fs = std::filesystem;

namespace {

// Written to a temporary file and renamed: the old or the new, never half.
Status write_replacing(const fs::path& path, std::string_view text) {
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << text;
    if (!out.flush()) return make_error(ErrorCode::kIo, "cannot write {}", tmp.string());
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) return make_error(ErrorCode::kIo, "cannot rename {}: {}", tmp.string(), ec.message());
  return ok_status();
}

}  // namespace

Result<std::unique_ptr<LocalStore>> LocalStore::open(const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return make_error(ErrorCode::kIo, "cannot create {}: {}", dir.string(), ec.message());
  auto store = std::unique_ptr<LocalStore>(new LocalStore(dir));
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    if (entry.path().extension() != ".yaml")
      continue;  // leftovers of an interrupted write are .tmp
    auto resources = api::load_resource_file(entry.path().string());
    if (!resources.ok()) return std::move(resources).error().context("the local store");
    for (const auto& r : *resources) {
      store->objects_.insert_or_assign({std::string(api::kind_of(r)), api::metadata_of(r).name},
                                       Object{r, api::encode_resource(r)});
      ++store->revision_;
    }
  }
  if (ec) return make_error(ErrorCode::kIo, "cannot read {}: {}", dir.string(), ec.message());
  // The event log: a line each, the same event again a line with its count.
  std::ifstream events(dir / "events.jsonl");
  std::vector<Event>& past = store->past_events_;
  for (std::string line; std::getline(events, line);) {
    const nlohmann::json doc = nlohmann::json::parse(line, nullptr, false);
    ++store->event_lines_;
    if (!doc.is_object()) continue;  // a line cut by a crash
    Event e{doc.value("time", ""), doc.value("kind", ""),   doc.value("name", ""),
            doc.value("type", ""), doc.value("reason", ""), doc.value("message", ""),
            doc.value("count", 1u)};
    if (!past.empty() && e.count > 1 && past.back().kind == e.kind && past.back().name == e.name &&
        past.back().reason == e.reason && past.back().message == e.message)
      past.back() = std::move(e);
    else
      past.push_back(std::move(e));
  }
  if (past.size() > kMaxEvents) past.erase(past.begin(), past.end() - kMaxEvents);
  return store;
}

fs::path LocalStore::file_of(std::string_view kind, std::string_view name) const {
  return dir_ / fmt::format("{}.{}.yaml", kind, name);
}

std::vector<api::Resource> LocalStore::list() const {
  std::lock_guard lock(mu_);
  std::vector<api::Resource> out;
  out.reserve(objects_.size());
  for (const auto& [key, object] : objects_) out.push_back(object.resource);
  return out;
}

std::optional<api::Resource> LocalStore::get(std::string_view kind, std::string_view name) const {
  std::lock_guard lock(mu_);
  auto it = objects_.find({std::string(kind), std::string(name)});
  if (it == objects_.end()) return std::nullopt;
  return it->second.resource;
}

Status LocalStore::apply(const api::Resource& resource) {
  const std::string kind(api::kind_of(resource));
  const std::string& name = api::metadata_of(resource).name;
  const std::string yaml = api::encode_resource(resource);
  WatchEvent event{EventType::kAdded, kind, name};
  {
    std::lock_guard lock(mu_);
    auto it = objects_.find({kind, name});
    if (it != objects_.end()) {
      if (it->second.yaml == yaml) return ok_status();  // unchanged: no event
      event.type = EventType::kModified;
    }
    LS_RETURN_IF_ERROR(write_replacing(file_of(kind, name), yaml));
    objects_.insert_or_assign({kind, name}, Object{resource, yaml});
    event.revision = ++revision_;
  }
  notify(event);
  return ok_status();
}

Status LocalStore::remove(std::string_view kind, std::string_view name) {
  WatchEvent event{EventType::kDeleted, std::string(kind), std::string(name)};
  {
    std::lock_guard lock(mu_);
    auto it = objects_.find({std::string(kind), std::string(name)});
    if (it == objects_.end())
      return make_error(ErrorCode::kNotFound, "{} '{}' does not exist", kind, name);
    std::error_code ec;
    fs::remove(file_of(kind, name), ec);
    if (ec)
      return make_error(ErrorCode::kIo, "cannot remove {}: {}", file_of(kind, name).string(),
                        ec.message());
    objects_.erase(it);
    event.revision = ++revision_;
  }
  notify(event);
  return ok_status();
}

Result<std::vector<RevisionRecord>> LocalStore::revisions(std::string_view service) const {
  std::vector<RevisionRecord> out;
  const fs::path dir = dir_ / "revisions" / std::string(service);
  std::error_code ec;
  if (!fs::exists(dir, ec)) return out;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    if (entry.path().extension() != ".json") continue;
    std::ifstream in(entry.path());
    std::stringstream text;
    text << in.rdbuf();
    const nlohmann::json doc = nlohmann::json::parse(text.str(), nullptr, false);
    if (!doc.is_object() || !doc["hash"].is_string() || !doc["number"].is_number_unsigned() ||
        !doc["data"].is_string())
      return make_error(ErrorCode::kCorrupt, "{}: not a revision record (hash, number, data)",
                        entry.path().string());
    out.push_back({doc["hash"].get<std::string>(), doc["number"].get<uint32_t>(),
                   doc["data"].get<std::string>(), doc.value("state", std::string())});
  }
  if (ec) return make_error(ErrorCode::kIo, "cannot read {}: {}", dir.string(), ec.message());
  return out;
}

Status LocalStore::save_revision(std::string_view service, const RevisionRecord& record) {
  const fs::path dir = dir_ / "revisions" / std::string(service);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return make_error(ErrorCode::kIo, "cannot create {}: {}", dir.string(), ec.message());
  const nlohmann::json doc = {{"hash", record.hash},
                              {"number", record.number},
                              {"data", record.data},
                              {"state", record.state}};
  return write_replacing(dir / (record.hash + ".json"), doc.dump(2) + "\n");
}

Status LocalStore::remove_revision(std::string_view service, std::string_view hash) {
  std::error_code ec;
  fs::remove(dir_ / "revisions" / std::string(service) / (std::string(hash) + ".json"), ec);
  if (ec)
    return make_error(ErrorCode::kIo, "cannot remove revision {} of {}: {}", hash, service,
                      ec.message());
  return ok_status();
}

namespace {

nlohmann::json event_json(const Event& e) {
  return {{"time", e.time},     {"kind", e.kind},       {"name", e.name},  {"type", e.type},
          {"reason", e.reason}, {"message", e.message}, {"count", e.count}};
}

}  // namespace

void LocalStore::record_event(const Event& event) {
  std::lock_guard lock(mu_);
  const fs::path path = dir_ / "events.jsonl";
  // Compacted to the last kMaxEvents lines once it holds twice that.
  if (event_lines_ >= 2 * kMaxEvents) {
    std::ifstream in(path);
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);) lines.push_back(std::move(line));
    if (lines.size() > kMaxEvents) lines.erase(lines.begin(), lines.end() - kMaxEvents);
    std::string text;
    for (const auto& line : lines) text += line + "\n";
    if (!write_replacing(path, text).ok()) return;
    event_lines_ = lines.size();
  }
  std::ofstream out(path, std::ios::app);
  out << event_json(event).dump() << "\n";
  if (out.flush()) ++event_lines_;
}

Result<std::string> LocalStore::load_usage() const {
  const fs::path path = dir_ / "usage.json";
  std::error_code ec;
  if (!fs::exists(path, ec)) return std::string();
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  if (!in.good() && !in.eof()) return make_error(ErrorCode::kIo, "cannot read {}", path.string());
  return text.str();
}

Status LocalStore::save_usage(const std::string& document) {
  return write_replacing(dir_ / "usage.json", document);
}

std::vector<Event> LocalStore::past_events() const {
  std::lock_guard lock(mu_);
  return past_events_;
}

uint64_t LocalStore::revision() const {
  std::lock_guard lock(mu_);
  return revision_;
}

std::shared_ptr<void> LocalStore::watch(WatchCallback callback) {
  auto handle = std::make_shared<WatchCallback>(std::move(callback));
  std::lock_guard lock(mu_);
  watchers_.push_back(handle);
  return handle;
}

void LocalStore::notify(const WatchEvent& event) {
  std::vector<std::shared_ptr<WatchCallback>> live;
  {
    std::lock_guard lock(mu_);
    std::erase_if(watchers_, [](const auto& w) { return w.expired(); });
    for (const auto& w : watchers_)
      if (auto cb = w.lock()) live.push_back(std::move(cb));
  }
  for (const auto& cb : live) (*cb)(event);
}

}  // namespace loadstar::store
