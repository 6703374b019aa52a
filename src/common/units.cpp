#include "common/units.h"

#include <charconv>
#include <cmath>

namespace loadstar {
namespace {

// Splits "1.5GiB" into 1.5 and "GiB". Returns false when no number leads.
bool split_number(std::string_view text, double& number, std::string_view& suffix) {
  size_t i = 0;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.'))
    ++i;
  if (i == 0) return false;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + i, number);
  if (ec != std::errc() || ptr != text.data() + i) return false;
  suffix = text.substr(i);
  while (!suffix.empty() && suffix.front() == ' ') suffix.remove_prefix(1);
  return true;
}

}  // namespace

Result<uint64_t> parse_bytes(std::string_view text) {
  double number = 0;
  std::string_view suffix;
  if (!split_number(text, number, suffix)) {
    return make_error(ErrorCode::kInvalidArgument,
                      "'{}' is not a size (expected e.g. 2GiB, 512Mi, 80G)", text);
  }
  std::string unit(suffix);
  if (!unit.empty() && unit.back() == 'B') unit.pop_back();
  double scale = 0;
  if (unit.empty())
    scale = 1;
  else if (unit == "k" || unit == "K")
    scale = 1e3;
  else if (unit == "M")
    scale = 1e6;
  else if (unit == "G")
    scale = 1e9;
  else if (unit == "T")
    scale = 1e12;
  else if (unit == "Ki")
    scale = 1024.0;
  else if (unit == "Mi")
    scale = 1024.0 * 1024;
  else if (unit == "Gi")
    scale = 1024.0 * 1024 * 1024;
  else if (unit == "Ti")
    scale = 1024.0 * 1024 * 1024 * 1024;
  else {
    return make_error(ErrorCode::kInvalidArgument,
                      "'{}' has an unknown size unit '{}' (use B, k, M, G, T, Ki, Mi, Gi, Ti)",
                      text, suffix);
  }
  double bytes = number * scale;
  if (bytes >= 1.8e19) return make_error(ErrorCode::kOutOfRange, "'{}' is too large", text);
  return static_cast<uint64_t>(std::llround(bytes));
}

std::string format_bytes(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024 && unit < 4) {
    value /= 1024;
    ++unit;
  }
  if (unit == 0) return fmt::format("{} B", bytes);
  return fmt::format("{:.1f} {}", value, kUnits[unit]);
}

Result<double> parse_duration(std::string_view text) {
  double number = 0;
  std::string_view suffix;
  if (!split_number(text, number, suffix)) {
    return make_error(ErrorCode::kInvalidArgument,
                      "'{}' is not a duration (expected e.g. 250ms, 2s, 5m)", text);
  }
  if (suffix == "ms") return number / 1000;
  if (suffix == "s" || suffix.empty()) return number;
  if (suffix == "m") return number * 60;
  if (suffix == "h") return number * 3600;
  return make_error(ErrorCode::kInvalidArgument,
                    "'{}' has an unknown duration unit '{}' (use ms, s, m, h)", text, suffix);
}

Result<std::pair<uint32_t, uint64_t>> parse_mig_profile(std::string_view profile) {
  // "<slices>g.<memory>gb", as nvidia-smi and the device plugin name them.
  const auto bad = [&] {
    return make_error(ErrorCode::kInvalidArgument,
                      "'{}' is not a MIG profile such as 1g.10gb or 3g.40gb", profile);
  };
  const size_t g = profile.find("g.");
  if (g == std::string_view::npos || !profile.ends_with("gb")) return bad();
  uint32_t slices = 0;
  uint64_t gb = 0;
  const char* begin = profile.data();
  if (std::from_chars(begin, begin + g, slices).ptr != begin + g) return bad();
  const std::string_view mem = profile.substr(g + 2, profile.size() - g - 4);
  if (std::from_chars(mem.data(), mem.data() + mem.size(), gb).ptr != mem.data() + mem.size())
    return bad();
  if (slices == 0 || slices > 8 || gb == 0) return bad();
  return std::pair<uint32_t, uint64_t>{slices, gb * 1024};
}

}  // namespace loadstar
