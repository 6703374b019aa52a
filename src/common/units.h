// Parsing and printing of sizes and durations as people write them.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "common/result.h"

namespace loadstar {

// "2GiB", "512Mi", "1.5GB", "80G", "4096" -> bytes. Suffixes with an 'i' are
// binary (Ki, Mi, Gi, Ti), without are decimal (k, M, G, T), as in Kubernetes
// quantities; a trailing "B" is optional.
Result<uint64_t> parse_bytes(std::string_view text);

// 1536 -> "1.5 KiB".
std::string format_bytes(uint64_t bytes);

// "250ms", "2s", "1.5m", "1h" -> seconds.
Result<double> parse_duration(std::string_view text);

// A MIG profile as NVIDIA names them, "<slices>g.<memory>gb" ("1g.10gb",
// "3g.40gb") -> compute slices (1..8) and memory in MiB.
Result<std::pair<uint32_t, uint64_t>> parse_mig_profile(std::string_view profile);

}  // namespace loadstar
