#pragma once

#include <string_view>

#include "common/result.h"

namespace loadstar {

// Sets up spdlog's default logger on stderr at `level` (trace, debug, info,
// warn, error, off).
Status init_logging(std::string_view level);

}  // namespace loadstar
