#include "gateway/engine_load.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <string>

namespace loadstar::gateway {

namespace {

std::optional<double> parse_value(std::string_view s) {
  if (s == "NaN" || s.empty()) return std::nullopt;
  if (s == "+Inf" || s == "-Inf") return std::nullopt;
  double v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || !std::isfinite(v)) return std::nullopt;
  return v;
}

void add(std::optional<double>& slot, double v) {
  slot = slot.value_or(0) + v;
}

// The raw value of label `key` in `labels` (`{a="1",b="x,y"}`; escapes kept
// as they are: adapter names have none).
std::optional<std::string_view> label_text(std::string_view labels, std::string_view key) {
  const std::string pattern = std::string(key) + "=\"";
  size_t at = 0;
  while ((at = labels.find(pattern, at)) != std::string_view::npos) {
    if (at == 0 || labels[at - 1] == '{' || labels[at - 1] == ',') {
      const size_t start = at + pattern.size();
      const size_t end = labels.find('"', start);
      if (end == std::string_view::npos) return std::nullopt;
      return labels.substr(start, end - start);
    }
    at += pattern.size();
  }
  return std::nullopt;
}

std::optional<double> label_number(std::string_view labels, std::string_view key) {
  auto text = label_text(labels, key);
  if (!text) return std::nullopt;
  return parse_value(*text);
}

std::vector<std::string> split_names(std::string_view list) {
  std::vector<std::string> names;
  while (!list.empty()) {
    const size_t comma = list.find(',');
    const std::string_view name = list.substr(0, comma);
    if (!name.empty()) names.emplace_back(name);
    if (comma == std::string_view::npos) break;
    list.remove_prefix(comma + 1);
  }
  return names;
}

}  // namespace

EngineLoad parse_engine_load(std::string_view text) {
  EngineLoad load;
  double loras_at = -1;  // the value (time) of the newest lora_requests_info series
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    if (line.empty() || line[0] == '#') continue;
    const size_t name_end = line.find_first_of("{ ");
    if (name_end == std::string_view::npos) continue;
    const std::string_view name = line.substr(0, name_end);
    std::optional<double>* slot = nullptr;
    if (name == "vllm:num_requests_waiting" || name == "sglang:num_queue_reqs" ||
        name == "llamacpp:requests_deferred")
      slot = &load.waiting;
    else if (name == "vllm:num_requests_running" || name == "sglang:num_running_reqs" ||
             name == "llamacpp:requests_processing")
      slot = &load.running;
    else if (name == "vllm:kv_cache_usage_perc" || name == "vllm:gpu_cache_usage_perc" ||
             name == "sglang:token_usage" || name == "llamacpp:kv_cache_usage_ratio")
      slot = &load.kv_usage;
    else if (name == "sglang:max_total_num_tokens")
      slot = &load.kv_capacity_tokens;
    if (name == "vllm:cache_config_info" && line[name_end] == '{') {
      const std::string_view labels = line.substr(name_end, line.find('}', name_end) - name_end);
      auto blocks = label_number(labels, "num_gpu_blocks");
      auto block_size = label_number(labels, "block_size");
      if (blocks && block_size) add(load.kv_capacity_tokens, *blocks * *block_size);
      continue;
    }
    const bool loras = name == "vllm:lora_requests_info" && line[name_end] == '{';
    if (!slot && !loras) continue;
    // The value follows the labels (which may hold spaces inside quotes).
    size_t value_start = name_end;
    if (line[name_end] == '{') {
      bool quoted = false;
      size_t i = name_end + 1;
      for (; i < line.size(); ++i) {
        if (line[i] == '\\' && quoted) {
          ++i;
        } else if (line[i] == '"') {
          quoted = !quoted;
        } else if (line[i] == '}' && !quoted) {
          break;
        }
      }
      if (i >= line.size()) continue;
      value_start = i + 1;
    }
    while (value_start < line.size() && line[value_start] == ' ') ++value_start;
    const size_t value_end = line.find(' ', value_start);
    auto value = parse_value(line.substr(value_start, value_end == std::string_view::npos
                                                          ? std::string_view::npos
                                                          : value_end - value_start));
    if (!value) continue;
    if (slot) {
      add(*slot, *value);
    } else if (*value > loras_at) {
      loras_at = *value;
      const std::string_view labels = line.substr(name_end, value_start - name_end);
      EngineLoad::Loras l;
      l.running = split_names(label_text(labels, "running_lora_adapters").value_or(""));
      l.waiting = split_names(label_text(labels, "waiting_lora_adapters").value_or(""));
      l.max_loras =
          static_cast<uint32_t>(std::clamp(label_number(labels, "max_lora").value_or(0), 0.0, 1e6));
      load.loras = std::move(l);
    }
  }
  return load;
}

}  // namespace loadstar::gateway
