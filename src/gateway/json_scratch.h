// A thread's simdjson parser and padded copy of the text being parsed,
// reused from one call to the next: a new parser allocates its buffers
// every time, and the gateway parses on every request (the request's
// peek, a stream's usage event, an engine's /tokenize answer). One
// document at a time per thread: what view() returns is valid until the
// next call.
#pragma once

#include <string>
#include <string_view>

#include <simdjson.h>

namespace loadstar::gateway {

struct JsonScratch {
  simdjson::ondemand::parser parser;
  std::string padded;

  simdjson::padded_string_view view(std::string_view text) {
    // A big document's buffers (the parser's are several times its size)
    // are not kept for the small ones after it.
    constexpr size_t kKeep = 1 << 20;
    if (padded.capacity() > kKeep && text.size() < kKeep) {
      padded = std::string();
      parser = simdjson::ondemand::parser();
    }
    padded.assign(text);
    padded.append(simdjson::SIMDJSON_PADDING, '\0');
    return simdjson::padded_string_view(padded.data(), text.size(), padded.size());
  }
};

inline JsonScratch& json_scratch() {
  thread_local JsonScratch scratch;
  return scratch;
}

}  // namespace loadstar::gateway
