#include <filesystem>
#include <fstream>
#include <memory>

#include <fmt/core.h>
#include <CLI/CLI.hpp>

#include "api/resources.h"
#include "api/schema.h"
#include "app/commands.h"

namespace loadstar::app {

std::function<int()> setup_validate(CLI::App& app) {
  auto files = std::make_shared<std::vector<std::string>>();
  app.add_option("-f,--filename", *files, "Resource files (YAML, several documents each)")
      ->required();
  return [files] {
    std::vector<api::Resource> all;
    bool failed = false;
    for (const auto& file : *files) {
      auto resources = api::load_resource_file(file);
      if (!resources.ok()) {
        fmt::print(stderr, "{}\n", resources.error().message);
        failed = true;
        continue;
      }
      for (auto& r : *resources) all.push_back(std::move(r));
    }
    if (!failed) {
      if (Status s = api::check_references(all); !s.ok()) {
        fmt::print(stderr, "{}\n", s.error().message);
        failed = true;
      }
    }
    if (failed) return 1;
    for (const auto& r : all)
      fmt::print("{} '{}' is valid\n", api::kind_of(r), api::metadata_of(r).name);
    return 0;
  };
}

std::function<int()> setup_crds(CLI::App& app) {
  auto dir = std::make_shared<std::string>();
  app.add_option("--dir", *dir,
                 "Write one file per CRD (PLURAL.loadstar.dev.yaml) here instead of printing");
  return [dir] {
    std::string all;
    for (const api::KindSchema& kind : api::kind_schemas()) {
      const std::string yaml = api::crd_yaml(kind);
      if (dir->empty()) {
        all += "---\n" + yaml;
        continue;
      }
      std::filesystem::create_directories(*dir);
      const std::string path = fmt::format("{}/{}.{}.yaml", *dir, kind.plural, api::kGroup);
      std::ofstream out(path, std::ios::trunc);
      out << yaml;
      if (!out) {
        fmt::print(stderr, "cannot write {}\n", path);
        return 1;
      }
      fmt::print("wrote {}\n", path);
    }
    fmt::print("{}", all);
    return 0;
  };
}

}  // namespace loadstar::app
