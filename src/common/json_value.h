// Reading members of JSON that another process wrote (a peer agent, the Hub,
// an engine, the API server): nlohmann's `j.value(key, fallback)` throws when
// the member exists with another type, and an exception on a worker thread
// ends the process. `value_or` takes the fallback instead.
//
// Header-only; include it only from targets that link nlohmann_json.
#pragma once
#include <string>
#include <string_view>
#include <type_traits>

#include <nlohmann/json.hpp>

namespace loadstar {

// True when `v` holds a T without conversion loss: a string for
// std::string, a boolean for bool, a non-negative integer for unsigned
// types, an integer for signed ones, any number for floating point.
template <typename T>
bool json_holds(const nlohmann::json& v) {
  if constexpr (std::is_same_v<T, std::string>)
    return v.is_string();
  else if constexpr (std::is_same_v<T, bool>)
    return v.is_boolean();
  else if constexpr (std::is_integral_v<T> && std::is_unsigned_v<T>)
    return v.is_number_unsigned();
  else if constexpr (std::is_integral_v<T>)
    return v.is_number_integer();
  else if constexpr (std::is_floating_point_v<T>)
    return v.is_number();
  else
    static_assert(sizeof(T) == 0, "value_or: unsupported type");
}

// The member `key` of `object` when `object` is an object and the member
// holds a T (see json_holds), else `fallback`.
template <typename T>
T value_or(const nlohmann::json& object, std::string_view key, T fallback) {
  if (!object.is_object()) return fallback;
  auto it = object.find(key);
  if (it == object.end() || !json_holds<T>(*it)) return fallback;
  return it->template get<T>();
}

inline std::string value_or(const nlohmann::json& object, std::string_view key,
                            const char* fallback) {
  return value_or<std::string>(object, key, std::string(fallback));
}

}  // namespace loadstar
