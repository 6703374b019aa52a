#include "common/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

namespace loadstar {

Status init_logging(std::string_view level) {
  auto parsed = spdlog::level::from_str(std::string(level));
  if (parsed == spdlog::level::off && level != "off") {
    return make_error(ErrorCode::kInvalidArgument,
                      "unknown log level '{}' (use trace, debug, info, warn, error, off)", level);
  }
  auto logger = spdlog::stderr_color_mt("loadstar");
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%L%$ %v");
  spdlog::set_default_logger(logger);
  spdlog::set_level(parsed);
  return ok_status();
}

}  // namespace loadstar
