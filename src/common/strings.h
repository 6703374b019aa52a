#pragma once

#include <string>
#include <string_view>

namespace loadstar {

// Appends `text` to `out` as the inside of a JSON string literal (no quotes).
void append_json_escaped(std::string& out, std::string_view text);

// Levenshtein distance, for "did you mean" hints on misspelled fields.
size_t edit_distance(std::string_view a, std::string_view b);

}  // namespace loadstar
