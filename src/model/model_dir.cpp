#include "model/model_dir.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <set>

#include <nlohmann/json.hpp>
#define XXH_STATIC_LINKING_ONLY  // XXH3_state_t on the stack
#include <xxhash.h>

#include "model/safetensors.h"

namespace loadstar::model {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kIndexFile = "model.safetensors.index.json";

Result<json> read_json_file(const fs::path& path) {
  std::ifstream in(path);
  if (!in)
    return make_error(ErrorCode::kNotFound, "{}: cannot open: {}", path.string(),
                      std::strerror(errno));
  json doc = json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded())
    return make_error(ErrorCode::kCorrupt, "{}: not valid JSON", path.string());
  return doc;
}

class File {
 public:
  explicit File(int fd) : fd_(fd) {}
  File(const File&) = delete;
  File& operator=(const File&) = delete;
  ~File() {
    if (fd_ >= 0) ::close(fd_);
  }
  int fd() const { return fd_; }

 private:
  int fd_;
};

Status read_exact(int fd, void* buf, size_t len, uint64_t offset, const fs::path& path) {
  auto* p = static_cast<char*>(buf);
  while (len > 0) {
    ssize_t n = ::pread(fd, p, len, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0)
      return make_error(ErrorCode::kIo, "{}: read failed: {}", path.string(), std::strerror(errno));
    if (n == 0)
      return make_error(ErrorCode::kCorrupt, "{}: file ends early at byte {}", path.string(),
                        offset);
    p += n;
    len -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return ok_status();
}

Status write_all(int fd, const void* buf, size_t len, const fs::path& path) {
  const auto* p = static_cast<const char*>(buf);
  while (len > 0) {
    ssize_t n = ::write(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0)
      return make_error(ErrorCode::kIo, "{}: write failed: {}", path.string(),
                        std::strerror(errno));
    p += n;
    len -= static_cast<size_t>(n);
  }
  return ok_status();
}

uint32_t get_u32(const json& doc, const char* key) {
  auto it = doc.find(key);
  return it != doc.end() && it->is_number_unsigned() ? it->get<uint32_t>() : 0;
}

}  // namespace

Result<ModelConfig> read_model_config(const fs::path& dir) {
  LS_ASSIGN_OR_RETURN(json doc, read_json_file(dir / "config.json"));
  if (!doc.is_object())
    return make_error(ErrorCode::kCorrupt, "{}: not a JSON object", (dir / "config.json").string());
  ModelConfig c;
  if (auto it = doc.find("architectures");
      it != doc.end() && it->is_array() && !it->empty() && (*it)[0].is_string())
    c.architecture = (*it)[0].get<std::string>();
  c.hidden_size = get_u32(doc, "hidden_size");
  c.num_hidden_layers = get_u32(doc, "num_hidden_layers");
  c.num_attention_heads = get_u32(doc, "num_attention_heads");
  c.num_key_value_heads = get_u32(doc, "num_key_value_heads");
  if (c.num_key_value_heads == 0) c.num_key_value_heads = c.num_attention_heads;
  c.vocab_size = get_u32(doc, "vocab_size");
  c.max_position_embeddings = get_u32(doc, "max_position_embeddings");
  return c;
}

Result<std::vector<fs::path>> weight_files(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    return make_error(ErrorCode::kNotFound, "{}: not a model directory", dir.string());
  std::vector<fs::path> files;
  if (fs::exists(dir / kIndexFile, ec)) {
    LS_ASSIGN_OR_RETURN(json index, read_json_file(dir / kIndexFile));
    auto map = index.find("weight_map");
    if (!index.is_object() || map == index.end() || !map->is_object())
      return make_error(ErrorCode::kCorrupt, "{}: missing object 'weight_map'",
                        (dir / kIndexFile).string());
    std::set<std::string> names;
    for (auto& [tensor, file] : map->items()) {
      if (!file.is_string())
        return make_error(ErrorCode::kCorrupt, "{}: weight_map.{} is not a file name",
                          (dir / kIndexFile).string(), tensor);
      std::string name = file.get<std::string>();
      fs::path p(name);
      // A manifest must not reach outside its directory.
      if (name.empty() || p.is_absolute() || name.find("..") != std::string::npos ||
          p.has_parent_path())
        return make_error(ErrorCode::kCorrupt,
                          "{}: weight_map.{} names '{}', not a file in the directory",
                          (dir / kIndexFile).string(), tensor, name);
      names.insert(name);
    }
    for (const auto& n : names) files.push_back(dir / n);
  } else {
    for (const auto& entry : fs::directory_iterator(dir, ec))
      if (entry.path().extension() == ".safetensors") files.push_back(entry.path());
    std::sort(files.begin(), files.end());
  }
  if (ec) return make_error(ErrorCode::kIo, "{}: {}", dir.string(), ec.message());
  if (files.empty())
    return make_error(ErrorCode::kNotFound, "{}: no .safetensors weight files", dir.string());
  return files;
}

Result<LoadReport> load_weights(const fs::path& dir,
                                const std::function<void(uint64_t)>& progress) {
  return load_weights(dir, FastLoadOptions{}, progress);
}

Result<LoadReport> load_weights(const fs::path& dir, const FastLoadOptions& options,
                                const std::function<void(uint64_t)>& progress) {
  const auto start = std::chrono::steady_clock::now();
  LS_ASSIGN_OR_RETURN(auto files, weight_files(dir));
  LoadReport report;
  // Every header is validated before the first tensor byte is read.
  std::vector<ReadRange> ranges;
  for (const fs::path& path : files) {
    File file(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (file.fd() < 0)
      return make_error(ErrorCode::kNotFound, "{}: cannot open: {}", path.string(),
                        std::strerror(errno));
    struct stat st {};
    if (::fstat(file.fd(), &st) != 0)
      return make_error(ErrorCode::kIo, "{}: stat failed", path.string());
    const auto file_size = static_cast<uint64_t>(st.st_size);
    uint64_t header_len = 0;
    unsigned char prefix[8];
    if (file_size < 8)
      return make_error(ErrorCode::kCorrupt, "{}: too short for safetensors", path.string());
    LS_RETURN_IF_ERROR(read_exact(file.fd(), prefix, 8, 0, path));
    for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | prefix[i];
    if (header_len > kMaxSafetensorsHeader || header_len > file_size - 8)
      return make_error(ErrorCode::kCorrupt, "{}: header length {} is impossible", path.string(),
                        header_len);
    std::string header_json(header_len, '\0');
    LS_RETURN_IF_ERROR(read_exact(file.fd(), header_json.data(), header_len, 8, path));
    auto header = parse_safetensors_header(header_json, file_size);
    if (!header.ok()) return std::move(header).error().context(path.string());
    // Tensors are contiguous (checked by the parser): one range per file.
    ranges.push_back({path, header->data_offset, file_size});
    report.tensors += header->tensors.size();
    ++report.files;
  }
  XXH3_state_t hash;
  XXH3_64bits_reset(&hash);
  LS_ASSIGN_OR_RETURN(auto loaded,
                      fast_read(ranges, options, [&](size_t, uint64_t, std::string_view data) {
                        XXH3_64bits_update(&hash, data.data(), data.size());
                        report.bytes += data.size();
                        if (progress) progress(report.bytes);
                        return true;
                      }));
  report.direct = loaded.direct;
  report.checksum = XXH3_64bits_digest(&hash);
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

Result<SynthReport> synth_model(const SynthOptions& options) {
  constexpr uint32_t kVocab = 32000;
  constexpr uint64_t kElem = 2;  // bfloat16
  if (options.output.empty()) return make_error(ErrorCode::kInvalidArgument, "no output directory");
  std::error_code ec;
  if (fs::exists(options.output, ec))
    return make_error(ErrorCode::kInvalidArgument, "{} already exists; remove it or choose another",
                      options.output.string());
  // The widest Llama shape whose embedding plus one layer fits the size.
  uint32_t hidden = 0;
  for (uint32_t h : {4096u, 2048u, 1024u, 512u, 256u, 128u, 64u, 32u, 16u}) {
    uint64_t embed = uint64_t{kVocab} * h * kElem;
    uint64_t layer = (4ull * h * h + 3ull * h * (h * 8 / 3)) * kElem;
    if (2 * embed + layer <= options.size_bytes) {
      hidden = h;
      break;
    }
  }
  if (hidden == 0) return make_error(ErrorCode::kInvalidArgument, "a model needs at least 2 MiB");
  ModelConfig config;
  config.architecture = "LlamaForCausalLM";
  config.hidden_size = hidden;
  config.num_attention_heads = std::max(1u, hidden / 64);
  config.num_key_value_heads = std::max(1u, config.num_attention_heads / 4);
  config.vocab_size = kVocab;
  config.max_position_embeddings = options.max_position_embeddings;
  const uint32_t head_dim = hidden / config.num_attention_heads;
  const uint32_t kv_dim = head_dim * config.num_key_value_heads;
  const uint32_t inter = hidden * 8 / 3;

  struct Planned {
    std::string name;
    std::vector<uint64_t> shape;
  };
  std::vector<Planned> plan;
  plan.push_back({"model.embed_tokens.weight", {kVocab, hidden}});
  uint64_t planned =
      uint64_t{kVocab} * hidden * kElem * 2 + uint64_t{hidden} * kElem;  // + lm_head, norm
  const uint64_t layer_bytes =
      (2ull * hidden * hidden + 2ull * hidden * kv_dim + 3ull * hidden * inter + 2ull * hidden) *
      kElem;
  uint32_t layers = 0;
  while (layers == 0 || planned + layer_bytes <= options.size_bytes) {
    const std::string p = "model.layers." + std::to_string(layers) + ".";
    plan.push_back({p + "input_layernorm.weight", {hidden}});
    plan.push_back({p + "self_attn.q_proj.weight", {hidden, hidden}});
    plan.push_back({p + "self_attn.k_proj.weight", {kv_dim, hidden}});
    plan.push_back({p + "self_attn.v_proj.weight", {kv_dim, hidden}});
    plan.push_back({p + "self_attn.o_proj.weight", {hidden, hidden}});
    plan.push_back({p + "post_attention_layernorm.weight", {hidden}});
    plan.push_back({p + "mlp.gate_proj.weight", {inter, hidden}});
    plan.push_back({p + "mlp.up_proj.weight", {inter, hidden}});
    plan.push_back({p + "mlp.down_proj.weight", {hidden, inter}});
    planned += layer_bytes;
    ++layers;
  }
  plan.push_back({"model.norm.weight", {hidden}});
  plan.push_back({"lm_head.weight", {kVocab, hidden}});
  config.num_hidden_layers = layers;

  // Group tensors into shards of at most max_shard_bytes (a tensor is never split).
  std::vector<std::vector<TensorInfo>> shards(1);
  uint64_t shard_bytes = 0;
  for (const Planned& p : plan) {
    uint64_t bytes = kElem;
    for (uint64_t d : p.shape) bytes *= d;
    if (shard_bytes > 0 && shard_bytes + bytes > options.max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back({p.name, "BF16", p.shape, shard_bytes, shard_bytes + bytes});
    shard_bytes += bytes;
  }

  const fs::path final_dir = fs::absolute(options.output).lexically_normal();
  const fs::path tmp_dir = final_dir.parent_path() / ("." + final_dir.filename().string() +
                                                      ".partial-" + std::to_string(::getpid()));
  fs::create_directories(final_dir.parent_path(), ec);
  fs::remove_all(tmp_dir, ec);
  if (!fs::create_directory(tmp_dir, ec))
    return make_error(ErrorCode::kIo, "cannot create {}: {}", tmp_dir.string(), ec.message());
  struct Cleanup {
    fs::path dir;
    bool armed = true;
    ~Cleanup() {
      std::error_code ignored;
      if (armed) fs::remove_all(dir, ignored);
    }
  } cleanup{tmp_dir};

  SynthReport report;
  report.config = config;
  json weight_map = json::object();
  constexpr size_t kChunk = 4u << 20;
  std::vector<uint16_t> pattern(kChunk / 2);
  uint64_t rng = options.seed * 0x9e3779b97f4a7c15ULL + 1;
  for (auto& v : pattern) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    // Small-magnitude bfloat16 values (|x| about 2^-8), like trained weights.
    v = static_cast<uint16_t>((rng & 0x807f) | 0x3b80);
  }
  for (size_t s = 0; s < shards.size(); ++s) {
    const std::string file_name =
        shards.size() == 1 ? "model.safetensors"
                           : fmt::format("model-{:05}-of-{:05}.safetensors", s + 1, shards.size());
    const fs::path path = tmp_dir / file_name;
    std::string header = build_safetensors_header(shards[s], {{"format", "pt"}});
    File file(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (file.fd() < 0)
      return make_error(ErrorCode::kIo, "cannot create {}: {}", path.string(),
                        std::strerror(errno));
    unsigned char prefix[8];
    for (int i = 0; i < 8; ++i) prefix[i] = static_cast<unsigned char>(header.size() >> (8 * i));
    LS_RETURN_IF_ERROR(write_all(file.fd(), prefix, 8, path));
    LS_RETURN_IF_ERROR(write_all(file.fd(), header.data(), header.size(), path));
    uint64_t remaining = shards[s].back().end;
    uint64_t counter = 0;
    while (remaining > 0) {
      pattern[0] = static_cast<uint16_t>(counter++);  // no two chunks alike
      size_t n = static_cast<size_t>(std::min<uint64_t>(remaining, kChunk));
      LS_RETURN_IF_ERROR(write_all(file.fd(), pattern.data(), n, path));
      remaining -= n;
    }
    if (::fsync(file.fd()) != 0)
      return make_error(ErrorCode::kIo, "{}: fsync failed", path.string());
    for (const TensorInfo& t : shards[s]) weight_map[t.name] = file_name;
    report.bytes += shards[s].back().end;
    report.tensors += static_cast<uint32_t>(shards[s].size());
  }
  report.shards = static_cast<uint32_t>(shards.size());

  json config_doc = {
      {"architectures", {config.architecture}},
      {"model_type", "llama"},
      {"_name_or_path", options.name},
      {"hidden_size", config.hidden_size},
      {"intermediate_size", inter},
      {"num_hidden_layers", config.num_hidden_layers},
      {"num_attention_heads", config.num_attention_heads},
      {"num_key_value_heads", config.num_key_value_heads},
      {"head_dim", head_dim},
      {"vocab_size", config.vocab_size},
      {"max_position_embeddings", config.max_position_embeddings},
      {"rms_norm_eps", 1e-5},
      {"torch_dtype", "bfloat16"},
      {"tie_word_embeddings", false},
      {"loadstar_synthetic", true},
  };
  json index = {{"metadata", {{"total_size", report.bytes}}}, {"weight_map", weight_map}};
  for (auto& [name, doc] : {std::pair{"config.json", config_doc}, std::pair{kIndexFile, index}}) {
    std::ofstream out(tmp_dir / name);
    out << doc.dump(2) << "\n";
    if (!out.flush())
      return make_error(ErrorCode::kIo, "cannot write {}", (tmp_dir / name).string());
  }
  // Publish: one rename makes the complete model visible.
  fs::rename(tmp_dir, final_dir, ec);
  if (ec)
    return make_error(ErrorCode::kIo, "cannot move {} to {}: {}", tmp_dir.string(),
                      final_dir.string(), ec.message());
  cleanup.armed = false;
  return report;
}

}  // namespace loadstar::model
