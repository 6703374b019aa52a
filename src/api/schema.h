// The shape of Loadstar's resources as OpenAPI v3 schemas, and the
// CustomResourceDefinitions made from them (`loadstar crds`, deploy/crds).
// The decoder in resources.cpp is the authority on what a field means; a
// unit test decodes a document holding every field of these schemas and
// checks that the decoder asks for exactly these fields, so the CRDs and
// the local mode cannot drift apart.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace loadstar::api {

inline constexpr const char* kGroup = "loadstar.dev";
inline constexpr const char* kVersion = "v1alpha1";

enum class FieldType {
  kString,
  kInteger,
  kNumber,
  kBoolean,
  kQuantity,      // 40Gi or a number of bytes (int-or-string)
  kDuration,      // 30s, 5m, 1h
  kIntOrPercent,  // 3 or "25%"
  kObject,        // `fields` are its properties
  kList,          // of objects with `fields`
  kStrings,       // a list of strings
  kStringMap,     // string keys to string values
};

struct Field {
  std::string name;
  FieldType type = FieldType::kString;
  std::string description;
  std::vector<Field> fields;
  bool required = false;
  std::vector<std::string> enum_values;
};

struct PrinterColumn {
  std::string name, type, json_path, description;
  int priority = 0;  // 1: only with -o wide
};

struct KindSchema {
  std::string kind, plural, singular;
  std::vector<std::string> short_names;
  std::string description;
  std::vector<Field> spec;
  std::vector<PrinterColumn> columns;
};

// The kinds served as CRDs: every kind but Node (Kubernetes has Nodes).
const std::vector<KindSchema>& kind_schemas();

// Every field path of a kind's spec ("spec.routing.hold.timeout",
// "spec.backends[].url"), in order.
std::vector<std::string> field_paths(const KindSchema& kind);

// The CustomResourceDefinition (apiextensions.k8s.io/v1) of a kind, as YAML.
std::string crd_yaml(const KindSchema& kind);

// The field paths the decoder reads while decoding `yaml_text` (whatever
// errors it finds), list indexes written as "[]". For the drift test.
std::vector<std::string> decoder_field_paths(std::string_view yaml_text);

}  // namespace loadstar::api
