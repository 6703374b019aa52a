#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace loadstar {

// Appends `text` to `out` as the inside of a JSON string literal (no quotes).
void append_json_escaped(std::string& out, std::string_view text);

// At most `max_bytes` of `text` as valid UTF-8: cut at a character's start,
// each byte of an invalid sequence replaced by '?'. For text from outside
// (an engine's output or error body, a peer's report) that a JSON document
// or a status line will carry: nlohmann's dump() throws on invalid UTF-8.
std::string utf8_clip(std::string_view text, size_t max_bytes);

// Whether `a` and `b` are equal but for the case of ASCII letters (HTTP
// field names, tokens).
bool iequals(std::string_view a, std::string_view b);

// A random UUID (version 4), as Python's uuid.uuid4(): vLLM's engine ids,
// request ids.
std::string random_uuid();

// Levenshtein distance, for "did you mean" hints on misspelled fields.
size_t edit_distance(std::string_view a, std::string_view b);

// Of `candidates`, the nearest to `word` within `max_distance` edits (the
// first of equals), or the one `word` begins (a prefix of at least two
// letters); empty: none. What a "did you mean" hint names.
std::string closest(std::string_view word, const std::vector<std::string>& candidates,
                    size_t max_distance = 2);

// Of a program's output, the last line that says what went wrong (error,
// fatal, exception, failed, invalid, unknown, cannot, abort; any case), else
// its last non-empty line; at most 400 characters, empty when there is none.
// What a user is shown of an engine that ended.
std::string last_error_line_of(std::string_view output);

}  // namespace loadstar
