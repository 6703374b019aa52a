#include "controller/revisions.h"

#include <algorithm>

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "controller/model_versions.h"
#include "controller/rollout.h"

namespace loadstar::controller {

using nlohmann::json;

std::string encode_revision(const Revision& revision) {
  json doc = {{"service", api::encode_resource(revision.service)},
              {"created", revision.created},
              {"model", nullptr}};
  if (revision.model) doc["model"] = api::encode_resource(*revision.model);
  if (!revision.model_version.empty()) doc["modelVersion"] = revision.model_version;
  return doc.dump();
}

Result<Revision> decode_revision(const store::RevisionRecord& record) {
  const json doc = json::parse(record.data, nullptr, false);
  if (!doc.is_object() || !doc["service"].is_string())
    return make_error(ErrorCode::kCorrupt, "revision {}: no service spec in its data", record.hash);
  Revision out;
  out.hash = record.hash;
  out.number = record.number;
  out.created = doc.value("created", "");
  if (doc.contains("modelVersion") && doc["modelVersion"].is_string()) {
    out.model_version = doc["modelVersion"].get<std::string>();
    if (!valid_model_version(out.model_version))
      return make_error(ErrorCode::kCorrupt, "revision {}: model version '{}' is not a version id",
                        record.hash, out.model_version);
  }
  auto decode = [&](const json& text) -> Result<api::Resource> {
    auto resources = api::decode_resources(text.get<std::string>(), "revision " + record.hash);
    if (!resources.ok()) return resources.error();
    if (resources->size() != 1)
      return make_error(ErrorCode::kCorrupt, "revision {}: one resource expected", record.hash);
    return std::move(resources->front());
  };
  LS_ASSIGN_OR_RETURN(api::Resource svc, decode(doc["service"]));
  if (!std::holds_alternative<api::InferenceService>(svc))
    return make_error(ErrorCode::kCorrupt, "revision {}: not an InferenceService", record.hash);
  out.service = std::get<api::InferenceService>(std::move(svc));
  if (doc["model"].is_string()) {
    LS_ASSIGN_OR_RETURN(api::Resource model, decode(doc["model"]));
    if (auto* m = std::get_if<api::Model>(&model)) out.model = std::move(*m);
  }
  return out;
}

RevisionHistory::Service& RevisionHistory::load(const std::string& service) {
  auto [it, added] = services_.try_emplace(service);
  if (!added) return it->second;
  auto records = store_.revisions(service);
  if (!records.ok()) {
    spdlog::warn("service {}: cannot read its rollout history: {}", service,
                 records.error().message);
    return it->second;
  }
  for (const auto& record : *records) {
    auto revision = decode_revision(record);
    if (!revision.ok()) {
      spdlog::warn("service {}: {}", service, revision.error().message);
      continue;
    }
    if (!record.state.empty()) it->second.states[record.hash] = record.state;
    it->second.revisions.push_back(std::make_shared<const Revision>(std::move(*revision)));
  }
  std::sort(it->second.revisions.begin(), it->second.revisions.end(),
            [](const auto& a, const auto& b) { return a->number < b->number; });
  return it->second;
}

void RevisionHistory::save(const std::string& service, Service& s) {
  while (s.revisions.size() > limit_) {
    const std::string hash = s.revisions.front()->hash;
    s.revisions.erase(s.revisions.begin());
    std::erase(s.unsaved, hash);
    s.states.erase(hash);
    if (Status removed = store_.remove_revision(service, hash); !removed.ok())
      spdlog::warn("service {}: {}", service, removed.error().message);
  }
  for (auto it = s.unsaved.begin(); it != s.unsaved.end();) {
    auto rev = std::find_if(s.revisions.begin(), s.revisions.end(),
                            [&](const auto& r) { return r->hash == *it; });
    if (rev == s.revisions.end()) {
      it = s.unsaved.erase(it);
      continue;
    }
    Status saved = store_.save_revision(
        service, {(*rev)->hash, (*rev)->number, encode_revision(**rev), s.states[*it]});
    if (!saved.ok()) {
      // Kept in memory; the next pass tries again.
      spdlog::warn("service {}: cannot record revision {}: {}", service, (*rev)->hash,
                   saved.error().message);
      return;
    }
    it = s.unsaved.erase(it);
  }
}

std::shared_ptr<const Revision> RevisionHistory::current(const api::InferenceService& svc,
                                                         const api::Model* model,
                                                         const std::string& model_version,
                                                         std::chrono::system_clock::time_point now,
                                                         std::span<const api::Model> adapters) {
  const std::string& service = svc.metadata.name;
  Service& s = load(service);
  const std::string hash = revision_hash(svc, model, model_version, adapters);
  if (!s.revisions.empty() && s.revisions.back()->hash == hash) {
    if (!s.unsaved.empty()) save(service, s);
    return s.revisions.back();
  }
  const uint32_t number = s.revisions.empty() ? 1 : s.revisions.back()->number + 1;
  auto old = std::find_if(s.revisions.begin(), s.revisions.end(),
                          [&](const auto& r) { return r->hash == hash; });
  std::shared_ptr<Revision> revision;
  if (old != s.revisions.end()) {
    revision = std::make_shared<Revision>(**old);  // its replicas keep the old object
    s.revisions.erase(old);
  } else {
    revision = std::make_shared<Revision>();
    revision->hash = hash;
    revision->service = svc;
    if (model) revision->model = *model;
    revision->model_version = model_version;
    revision->created =
        fmt::format("{:%Y-%m-%dT%H:%M:%S}Z", std::chrono::floor<std::chrono::seconds>(now));
  }
  revision->number = number;
  spdlog::info("service {}: revision {} ({})", service, number, hash);
  s.revisions.push_back(std::move(revision));
  s.unsaved.push_back(hash);
  save(service, s);
  return s.revisions.back();
}

std::shared_ptr<const Revision> RevisionHistory::latest_of(const api::InferenceService& svc,
                                                           const api::Model* model,
                                                           std::span<const api::Model> adapters) {
  const auto& revisions = load(svc.metadata.name).revisions;
  for (auto it = revisions.rbegin(); it != revisions.rend(); ++it)
    if ((*it)->hash == revision_hash(svc, model, (*it)->model_version, adapters)) return *it;
  return nullptr;
}

std::shared_ptr<const Revision> RevisionHistory::find(const std::string& service,
                                                      const std::string& hash) {
  for (const auto& r : load(service).revisions)
    if (r->hash == hash) return r;
  return nullptr;
}

std::shared_ptr<const Revision> RevisionHistory::numbered(const std::string& service,
                                                          uint32_t number) {
  for (const auto& r : load(service).revisions)
    if (r->number == number) return r;
  return nullptr;
}

std::vector<std::shared_ptr<const Revision>> RevisionHistory::of(const std::string& service) {
  return load(service).revisions;
}

std::string RevisionHistory::state(const std::string& service, const std::string& hash) {
  Service& s = load(service);
  auto it = s.states.find(hash);
  return it == s.states.end() ? std::string() : it->second;
}

void RevisionHistory::set_state(const std::string& service, const std::string& hash,
                                std::string state) {
  Service& s = load(service);
  if (s.states[hash] == state) return;
  s.states[hash] = std::move(state);
  if (std::find(s.unsaved.begin(), s.unsaved.end(), hash) == s.unsaved.end())
    s.unsaved.push_back(hash);
  save(service, s);
}

}  // namespace loadstar::controller
