#include "kvevents/kv_events.h"

#include <msgpuck.h>
#include <xxhash.h>

#include <nlohmann/json.hpp>

namespace loadstar::kvevents {

namespace {

// ---- encoding -------------------------------------------------------------

void put_array(std::string& out, uint32_t n) {
  char b[8];
  out.append(b, static_cast<size_t>(mp_encode_array(b, n) - b));
}
void put_uint(std::string& out, uint64_t v) {
  char b[16];
  out.append(b, static_cast<size_t>(mp_encode_uint(b, v) - b));
}
void put_int(std::string& out, int64_t v) {
  if (v >= 0) return put_uint(out, static_cast<uint64_t>(v));
  char b[16];
  out.append(b, static_cast<size_t>(mp_encode_int(b, v) - b));
}
void put_nil(std::string& out) {
  char b[2];
  out.append(b, static_cast<size_t>(mp_encode_nil(b) - b));
}
void put_double(std::string& out, double v) {
  char b[16];
  out.append(b, static_cast<size_t>(mp_encode_double(b, v) - b));
}
void put_str(std::string& out, std::string_view s) {
  char b[8];
  out.append(b, static_cast<size_t>(mp_encode_strl(b, static_cast<uint32_t>(s.size())) - b));
  out.append(s);
}
void put_optional_str(std::string& out, std::string_view s) {
  if (s.empty())
    put_nil(out);
  else
    put_str(out, s);
}
void put_hashes(std::string& out, const std::vector<uint64_t>& hashes) {
  put_array(out, static_cast<uint32_t>(hashes.size()));
  for (uint64_t h : hashes) put_uint(out, h);
}

struct Encoder {
  std::string& out;
  void operator()(const BlockStored& e) const {
    put_array(out, 8);
    put_str(out, "BlockStored");
    put_hashes(out, e.block_hashes);
    if (e.parent_block_hash)
      put_uint(out, *e.parent_block_hash);
    else
      put_nil(out);
    put_array(out, static_cast<uint32_t>(e.token_ids.size()));
    for (uint32_t t : e.token_ids) put_uint(out, t);
    put_uint(out, e.block_size);
    if (e.lora_id)
      put_int(out, *e.lora_id);
    else
      put_nil(out);
    put_optional_str(out, e.medium);
    put_optional_str(out, e.lora_name);
  }
  void operator()(const BlockRemoved& e) const {
    put_array(out, 3);
    put_str(out, "BlockRemoved");
    put_hashes(out, e.block_hashes);
    put_optional_str(out, e.medium);
  }
  void operator()(const AllBlocksCleared&) const {
    put_array(out, 1);
    put_str(out, "AllBlocksCleared");
  }
};

// ---- decoding (of a payload mp_check has validated) ---------------------

Error bad(std::string what) {
  return make_error(ErrorCode::kInvalidArgument, "KV event batch: {}", what);
}

// Every read checks its own bounds: mp_check's element counter is an int,
// so a 2^32-1 element array header can wrap it and pass a payload that is
// not complete. A count is never trusted beyond the bytes left (an element
// is at least one byte).
class Reader {
 public:
  Reader(const char* p, const char* end) : p_(p), end_(end) {}
  mp_type type() const { return p_ < end_ ? mp_typeof(*p_) : MP_EXT; }
  bool nil() {
    if (type() != MP_NIL || mp_check_nil(p_, end_) > 0) return false;
    mp_decode_nil(&p_);
    return true;
  }
  Status skip(std::string_view field) {
    if (p_ >= end_ || mp_check(&p_, end_) != 0) return bad(fmt::format("{}: truncated", field));
    return ok_status();
  }
  Result<uint32_t> map(std::string_view field) {
    if (type() != MP_MAP || mp_check_map(p_, end_) > 0)
      return bad(fmt::format("{}: not a map", field));
    const uint32_t n = mp_decode_map(&p_);
    if (n > static_cast<size_t>(end_ - p_) / 2)
      return bad(fmt::format("{}: {} entries in {} bytes", field, n, end_ - p_));
    return n;
  }
  Result<uint32_t> array(std::string_view field) {
    if (type() != MP_ARRAY || mp_check_array(p_, end_) > 0)
      return bad(fmt::format("{}: not an array", field));
    const uint32_t n = mp_decode_array(&p_);
    if (n > static_cast<size_t>(end_ - p_))
      return bad(fmt::format("{}: {} elements in {} bytes", field, n, end_ - p_));
    return n;
  }
  Result<int64_t> integer(std::string_view field) {
    if (type() == MP_UINT && mp_check_uint(p_, end_) <= 0) {
      const uint64_t v = mp_decode_uint(&p_);
      if (v > static_cast<uint64_t>(INT64_MAX)) return bad(fmt::format("{}: out of range", field));
      return static_cast<int64_t>(v);
    }
    if (type() == MP_INT && mp_check_int(p_, end_) <= 0) return mp_decode_int(&p_);
    return bad(fmt::format("{}: not an integer", field));
  }
  Result<double> number(std::string_view field) {
    if (type() == MP_DOUBLE && mp_check_double(p_, end_) <= 0) return mp_decode_double(&p_);
    if (type() == MP_FLOAT && mp_check_float(p_, end_) <= 0)
      return static_cast<double>(mp_decode_float(&p_));
    if (type() == MP_UINT || type() == MP_INT) {
      LS_ASSIGN_OR_RETURN(int64_t v, integer(field));
      return static_cast<double>(v);
    }
    return bad(fmt::format("{}: not a number", field));
  }
  Result<std::string_view> string(std::string_view field) {
    if (type() != MP_STR) return bad(fmt::format("{}: not a string", field));
    return bytes(field, false);
  }
  // An integer hash as its 64-bit pattern; a bytes (or string) hash folded.
  Result<uint64_t> hash(std::string_view field) {
    switch (type()) {
      case MP_UINT:
        if (mp_check_uint(p_, end_) > 0) break;
        return mp_decode_uint(&p_);
      case MP_INT:
        if (mp_check_int(p_, end_) > 0) break;
        return static_cast<uint64_t>(mp_decode_int(&p_));
      case MP_BIN:
      case MP_STR: {
        LS_ASSIGN_OR_RETURN(std::string_view b, bytes(field, type() == MP_BIN));
        return XXH3_64bits(b.data(), b.size());
      }
      default:
        break;
    }
    return bad(fmt::format("{}: not a block hash", field));
  }
  Result<std::vector<uint64_t>> hashes(std::string_view field) {
    LS_ASSIGN_OR_RETURN(uint32_t n, array(field));
    std::vector<uint64_t> out;
    out.reserve(n);
    for (uint32_t i = 0; i < n; ++i) {
      LS_ASSIGN_OR_RETURN(uint64_t h, hash(field));
      out.push_back(h);
    }
    return out;
  }
  Result<std::string> optional_string(std::string_view field) {
    if (nil()) return std::string();
    LS_ASSIGN_OR_RETURN(std::string_view s, string(field));
    return std::string(s);
  }

 private:
  Result<std::string_view> bytes(std::string_view field, bool bin) {
    if ((bin ? mp_check_binl(p_, end_) : mp_check_strl(p_, end_)) > 0)
      return bad(fmt::format("{}: truncated", field));
    const uint32_t len = bin ? mp_decode_binl(&p_) : mp_decode_strl(&p_);
    if (len > static_cast<size_t>(end_ - p_)) return bad(fmt::format("{}: truncated", field));
    std::string_view out(p_, len);
    p_ += len;
    return out;
  }

  const char* p_;
  const char* end_;
};

Status read_parent(Reader& r, BlockStored& e) {
  if (r.nil()) return ok_status();
  LS_ASSIGN_OR_RETURN(uint64_t parent, r.hash("BlockStored.parent_block_hash"));
  e.parent_block_hash = parent;
  return ok_status();
}

Status read_tokens(Reader& r, BlockStored& e) {
  LS_ASSIGN_OR_RETURN(uint32_t tokens, r.array("BlockStored.token_ids"));
  e.token_ids.reserve(tokens);
  for (uint32_t i = 0; i < tokens; ++i) {
    LS_ASSIGN_OR_RETURN(int64_t t, r.integer("BlockStored.token_ids"));
    if (t < 0 || t > UINT32_MAX) return bad("BlockStored.token_ids: a token id out of range");
    e.token_ids.push_back(static_cast<uint32_t>(t));
  }
  return ok_status();
}

Status read_block_size(Reader& r, BlockStored& e) {
  LS_ASSIGN_OR_RETURN(int64_t block_size, r.integer("BlockStored.block_size"));
  if (block_size <= 0 || block_size > 65536)
    return bad(fmt::format("BlockStored.block_size: {} is not in 1..65536", block_size));
  e.block_size = static_cast<uint32_t>(block_size);
  return ok_status();
}

Status read_lora_id(Reader& r, BlockStored& e) {
  if (r.nil()) return ok_status();
  LS_ASSIGN_OR_RETURN(int64_t id, r.integer("BlockStored.lora_id"));
  e.lora_id = id;
  return ok_status();
}

Status check_stored(const BlockStored& e) {
  if (e.block_size == 0) return bad("BlockStored: no block_size");
  if (e.token_ids.size() != static_cast<uint64_t>(e.block_hashes.size()) * e.block_size)
    return bad(fmt::format("BlockStored: {} token ids for {} blocks of {}", e.token_ids.size(),
                           e.block_hashes.size(), e.block_size));
  return ok_status();
}

// The array encoding (msgspec's array_like=True): fields by position.
Result<BlockStored> decode_stored(Reader& r, uint32_t fields) {
  if (fields < 5) return bad("BlockStored: fewer than 4 fields");
  BlockStored e;
  LS_ASSIGN_OR_RETURN(e.block_hashes, r.hashes("BlockStored.block_hashes"));
  LS_RETURN_IF_ERROR(read_parent(r, e));
  LS_RETURN_IF_ERROR(read_tokens(r, e));
  LS_RETURN_IF_ERROR(read_block_size(r, e));
  LS_RETURN_IF_ERROR(check_stored(e));
  uint32_t read = 5;
  if (read < fields) {
    ++read;
    LS_RETURN_IF_ERROR(read_lora_id(r, e));
  }
  if (read < fields) {
    ++read;
    LS_ASSIGN_OR_RETURN(e.medium, r.optional_string("BlockStored.medium"));
  }
  if (read < fields) {
    ++read;
    LS_ASSIGN_OR_RETURN(e.lora_name, r.optional_string("BlockStored.lora_name"));
  }
  for (; read < fields; ++read) LS_RETURN_IF_ERROR(r.skip("BlockStored"));
  return e;
}

Result<BlockRemoved> decode_removed(Reader& r, uint32_t fields) {
  if (fields < 2) return bad("BlockRemoved: no block_hashes");
  BlockRemoved e;
  LS_ASSIGN_OR_RETURN(e.block_hashes, r.hashes("BlockRemoved.block_hashes"));
  uint32_t read = 2;
  if (read < fields) {
    ++read;
    LS_ASSIGN_OR_RETURN(e.medium, r.optional_string("BlockRemoved.medium"));
  }
  for (; read < fields; ++read) LS_RETURN_IF_ERROR(r.skip("BlockRemoved"));
  return e;
}

// The map encoding (msgspec without array_like, as newer engines send):
// fields by name, the tag under "type"; fields not known here are skipped.
// `pairs` entries are left after the tag, which the caller has read.
Result<Event> decode_event_map(Reader& r, std::string_view tag, uint32_t pairs) {
  BlockStored stored;
  BlockRemoved removed;
  for (uint32_t i = 0; i < pairs; ++i) {
    LS_ASSIGN_OR_RETURN(std::string_view key, r.string("event field name"));
    if (tag == "BlockStored" && key == "block_hashes") {
      LS_ASSIGN_OR_RETURN(stored.block_hashes, r.hashes("BlockStored.block_hashes"));
    } else if (tag == "BlockStored" && key == "parent_block_hash") {
      LS_RETURN_IF_ERROR(read_parent(r, stored));
    } else if (tag == "BlockStored" && key == "token_ids") {
      LS_RETURN_IF_ERROR(read_tokens(r, stored));
    } else if (tag == "BlockStored" && key == "block_size") {
      LS_RETURN_IF_ERROR(read_block_size(r, stored));
    } else if (tag == "BlockStored" && key == "lora_id") {
      LS_RETURN_IF_ERROR(read_lora_id(r, stored));
    } else if (tag == "BlockStored" && key == "medium") {
      LS_ASSIGN_OR_RETURN(stored.medium, r.optional_string("BlockStored.medium"));
    } else if (tag == "BlockStored" && key == "lora_name") {
      LS_ASSIGN_OR_RETURN(stored.lora_name, r.optional_string("BlockStored.lora_name"));
    } else if (tag == "BlockRemoved" && key == "block_hashes") {
      LS_ASSIGN_OR_RETURN(removed.block_hashes, r.hashes("BlockRemoved.block_hashes"));
    } else if (tag == "BlockRemoved" && key == "medium") {
      LS_ASSIGN_OR_RETURN(removed.medium, r.optional_string("BlockRemoved.medium"));
    } else {
      LS_RETURN_IF_ERROR(r.skip("event field"));
    }
  }
  if (tag == "BlockStored") {
    LS_RETURN_IF_ERROR(check_stored(stored));
    return Event(std::move(stored));
  }
  if (tag == "BlockRemoved") return Event(std::move(removed));
  return Event(AllBlocksCleared{});
}

// One event, in either encoding; nullopt for an event kind not known here.
Result<std::optional<Event>> decode_event(Reader& r) {
  if (r.type() == MP_MAP) {
    LS_ASSIGN_OR_RETURN(uint32_t pairs, r.map("event"));
    // The tag is msgspec's first entry; a map whose "type" comes later is
    // refused (and its batch with it).
    if (pairs == 0) return bad("event: empty (no type)");
    LS_ASSIGN_OR_RETURN(std::string_view key, r.string("event field name"));
    if (key != "type") return bad("event: its first field is not \"type\"");
    LS_ASSIGN_OR_RETURN(std::string_view tag, r.string("event type"));
    if (tag != "BlockStored" && tag != "BlockRemoved" && tag != "AllBlocksCleared") {
      for (uint32_t i = 1; i < pairs; ++i) {
        LS_RETURN_IF_ERROR(r.skip("event field name"));
        LS_RETURN_IF_ERROR(r.skip("event field"));
      }
      return std::optional<Event>();
    }
    LS_ASSIGN_OR_RETURN(Event e, decode_event_map(r, tag, pairs - 1));
    return std::optional<Event>(std::move(e));
  }
  LS_ASSIGN_OR_RETURN(uint32_t n, r.array("event"));
  if (n == 0) return bad("event: empty (no tag)");
  LS_ASSIGN_OR_RETURN(std::string_view tag, r.string("event tag"));
  if (tag == "BlockStored") {
    LS_ASSIGN_OR_RETURN(BlockStored e, decode_stored(r, n));
    return std::optional<Event>(std::move(e));
  }
  if (tag == "BlockRemoved") {
    LS_ASSIGN_OR_RETURN(BlockRemoved e, decode_removed(r, n));
    return std::optional<Event>(std::move(e));
  }
  // AllBlocksCleared, or an event kind of a newer engine: not ours to know.
  for (uint32_t k = 1; k < n; ++k) LS_RETURN_IF_ERROR(r.skip("event"));
  if (tag == "AllBlocksCleared") return std::optional<Event>(AllBlocksCleared{});
  return std::optional<Event>();
}

Status decode_events(Reader& r, EventBatch& batch) {
  LS_ASSIGN_OR_RETURN(uint32_t events, r.array("batch.events"));
  for (uint32_t i = 0; i < events; ++i) {
    LS_ASSIGN_OR_RETURN(std::optional<Event> e, decode_event(r));
    if (e) batch.events.push_back(std::move(*e));
  }
  return ok_status();
}

}  // namespace

std::string encode_batch(const EventBatch& batch) {
  std::string out;
  put_array(out, batch.data_parallel_rank ? 3 : 2);
  put_double(out, batch.ts);
  put_array(out, static_cast<uint32_t>(batch.events.size()));
  for (const Event& e : batch.events) std::visit(Encoder{out}, e);
  if (batch.data_parallel_rank) put_int(out, *batch.data_parallel_rank);
  return out;
}

Result<EventBatch> decode_batch(std::string_view payload) {
  const char* check = payload.data();
  if (payload.empty() || mp_check(&check, payload.data() + payload.size()) != 0)
    return bad("not one complete msgpack value");
  if (check != payload.data() + payload.size()) return bad("bytes after the msgpack value");
  Reader r(payload.data(), payload.data() + payload.size());
  EventBatch batch;
  if (r.type() == MP_MAP) {
    // {"ts": ..., "events": [...], "data_parallel_rank" (SGLang:
    // "attn_dp_rank"): ...}
    LS_ASSIGN_OR_RETURN(uint32_t pairs, r.map("batch"));
    bool ts = false, events = false;
    for (uint32_t i = 0; i < pairs; ++i) {
      LS_ASSIGN_OR_RETURN(std::string_view key, r.string("batch field name"));
      if (key == "ts") {
        LS_ASSIGN_OR_RETURN(batch.ts, r.number("batch.ts"));
        ts = true;
      } else if (key == "events") {
        LS_RETURN_IF_ERROR(decode_events(r, batch));
        events = true;
      } else if ((key == "data_parallel_rank" || key == "attn_dp_rank") && !r.nil()) {
        LS_ASSIGN_OR_RETURN(int64_t rank, r.integer("batch.data_parallel_rank"));
        batch.data_parallel_rank = rank;
      } else if (key != "data_parallel_rank" && key != "attn_dp_rank") {
        LS_RETURN_IF_ERROR(r.skip("batch field"));
      }
    }
    if (!ts || !events) return bad("batch: no ts or no events");
    return batch;
  }
  LS_ASSIGN_OR_RETURN(uint32_t fields, r.array("batch"));
  if (fields < 2) return bad("batch: fewer than 2 fields (ts, events)");
  LS_ASSIGN_OR_RETURN(batch.ts, r.number("batch.ts"));
  LS_RETURN_IF_ERROR(decode_events(r, batch));
  if (fields > 2 && !r.nil()) {
    LS_ASSIGN_OR_RETURN(int64_t rank, r.integer("batch.data_parallel_rank"));
    batch.data_parallel_rank = rank;
  }
  return batch;
}

std::string encode_sequence(uint64_t seq) {
  std::string out(8, '\0');
  for (int i = 7; i >= 0; --i, seq >>= 8)
    out[static_cast<size_t>(i)] = static_cast<char>(seq & 0xff);
  return out;
}

std::optional<uint64_t> decode_sequence(std::string_view frame) {
  if (frame.size() != 8) return std::nullopt;
  uint64_t seq = 0;
  for (char c : frame) seq = (seq << 8) | static_cast<uint8_t>(c);
  return seq;
}

Result<EventsConfig> parse_events_config(std::string_view text) {
  auto bad_config = [](std::string what) {
    return make_error(ErrorCode::kInvalidArgument, "--kv-events-config: {}", what);
  };
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (!j.is_object()) return bad_config("not a JSON object");
  EventsConfig c;
  for (const auto& [key, value] : j.items()) {
    if (key == "enable_kv_cache_events") {
      if (!value.is_boolean()) return bad_config("enable_kv_cache_events: not a boolean");
      c.enabled = value.get<bool>();
    } else if (key == "publisher") {
      if (!value.is_string() || (value != "zmq" && value != "null"))
        return bad_config("publisher: must be \"zmq\" or \"null\"");
      c.publisher = value.get<std::string>();
    } else if (key == "endpoint") {
      if (!value.is_string() || value.get<std::string>().empty())
        return bad_config("endpoint: not a ZeroMQ endpoint string");
      c.endpoint = value.get<std::string>();
    } else if (key == "topic") {
      if (!value.is_string()) return bad_config("topic: not a string");
      c.topic = value.get<std::string>();
    } else if (key == "hwm") {
      if (!value.is_number_integer() || value.get<int64_t>() <= 0 ||
          value.get<int64_t>() > INT32_MAX)
        return bad_config("hwm: not a positive integer");
      c.hwm = value.get<int>();
    } else if (key == "replay_endpoint") {
      if (!value.is_null()) return bad_config("replay_endpoint: not supported by engine-sim");
    } else if (key == "buffer_steps" || key == "max_queue_size") {
      if (!value.is_number_integer()) return bad_config(key + ": not an integer");
    } else {
      return bad_config(fmt::format("unknown field '{}'", key));
    }
  }
  if (c.enabled && !j.contains("publisher")) c.publisher = "zmq";
  return c;
}

std::string events_config_json(std::string_view endpoint, std::string_view topic,
                               bool enable_field) {
  nlohmann::json config = {{"publisher", "zmq"}, {"endpoint", endpoint}, {"topic", topic}};
  if (enable_field) config["enable_kv_cache_events"] = true;
  return config.dump();
}

}  // namespace loadstar::kvevents
