#include "gateway/shared_messages.h"

#include <algorithm>
#include <cstring>

namespace loadstar::gateway {

namespace {

constexpr std::string_view kMagic = "LSP2";
constexpr std::string_view kLoadMagic = "LSL1";

void put_string(std::string& out, std::string_view s) {
  out.push_back(static_cast<char>(std::min<size_t>(s.size(), 255)));
  out.append(s.substr(0, 255));
}

template <typename T>
void put(std::string& out, T value) {
  char bytes[sizeof(T)];
  std::memcpy(bytes, &value, sizeof(T));
  out.append(bytes, sizeof(T));
}

struct Reader {
  std::string_view in;
  bool ok = true;
  std::string string() {
    if (in.empty()) return ok = false, std::string();
    const size_t n = static_cast<unsigned char>(in[0]);
    if (in.size() < 1 + n) return ok = false, std::string();
    std::string s(in.substr(1, n));
    in.remove_prefix(1 + n);
    return s;
  }
  template <typename T>
  T get() {
    T value{};
    if (in.size() < sizeof(T)) return ok = false, value;
    std::memcpy(&value, in.data(), sizeof(T));
    in.remove_prefix(sizeof(T));
    return value;
  }
};

}  // namespace

std::string encode_pick(std::string_view instance, const SharedPick& pick) {
  std::string out(kMagic);
  put_string(out, instance);
  put_string(out, pick.replica);
  put_string(out, pick.address);
  put<uint64_t>(out, pick.session);
  put<int64_t>(out, pick.prefill);
  put<uint32_t>(out, static_cast<uint32_t>(pick.blocks.size()));
  for (uint64_t b : pick.blocks) put<uint64_t>(out, b);
  return out;
}

std::optional<DecodedPick> decode_pick(std::string_view message) {
  if (!message.starts_with(kMagic)) return std::nullopt;
  Reader r{message.substr(kMagic.size())};
  DecodedPick out;
  out.instance = r.string();
  out.pick.replica = r.string();
  out.pick.address = r.string();
  out.pick.session = r.get<uint64_t>();
  out.pick.prefill = r.get<int64_t>();
  const uint32_t n = r.get<uint32_t>();
  if (!r.ok || r.in.size() != size_t{n} * sizeof(uint64_t)) return std::nullopt;
  out.pick.blocks.resize(n);
  if (n > 0) std::memcpy(out.pick.blocks.data(), r.in.data(), r.in.size());
  return out;
}

std::string encode_load(std::string_view instance, const std::vector<SharedLoad>& load) {
  std::string out(kLoadMagic);
  put_string(out, instance);
  put<uint32_t>(out, static_cast<uint32_t>(load.size()));
  for (const SharedLoad& l : load) {
    put_string(out, l.replica);
    put_string(out, l.address);
    put<int64_t>(out, l.in_flight);
    put<int64_t>(out, l.pending_prefill);
  }
  return out;
}

std::optional<DecodedLoad> decode_load(std::string_view message) {
  if (!message.starts_with(kLoadMagic)) return std::nullopt;
  Reader r{message.substr(kLoadMagic.size())};
  DecodedLoad out;
  out.instance = r.string();
  const uint32_t n = r.get<uint32_t>();
  for (uint32_t i = 0; r.ok && i < n; ++i) {
    SharedLoad l;
    l.replica = r.string();
    l.address = r.string();
    l.in_flight = r.get<int64_t>();
    l.pending_prefill = r.get<int64_t>();
    out.load.push_back(std::move(l));
  }
  if (!r.ok || !r.in.empty()) return std::nullopt;
  return out;
}

}  // namespace loadstar::gateway
