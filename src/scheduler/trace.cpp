#include "scheduler/trace.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <map>
#include <random>

namespace loadstar::scheduler {

namespace {

// The openb files are plain comma-separated values: no quoting, no embedded
// commas. A quote is rejected rather than misread.
class CsvReader {
 public:
  CsvReader(std::string_view text, std::string_view source) : text_(text), source_(source) {}

  // `optional` columns may be absent; their fields then read as empty.
  Status header(const std::vector<std::string_view>& wanted,
                const std::vector<std::string_view>& optional = {}) {
    std::vector<std::string_view> names;
    if (!next(names)) return make_error(ErrorCode::kInvalidArgument, "{}: empty file", source_);
    for (std::string_view w : wanted) {
      auto it = std::find(names.begin(), names.end(), w);
      const bool may_lack = std::find(optional.begin(), optional.end(), w) != optional.end();
      if (it == names.end() && !may_lack)
        return make_error(ErrorCode::kInvalidArgument, "{}:1: missing column '{}'", source_, w);
      columns_.push_back(it == names.end() ? SIZE_MAX : static_cast<size_t>(it - names.begin()));
    }
    width_ = names.size();
    return {};
  }

  // The next row's wanted columns, in `header` order; false at the end.
  Result<bool> row(std::vector<std::string_view>& out) {
    std::vector<std::string_view> fields;
    while (true) {
      if (!next(fields)) return false;
      if (!(fields.size() == 1 && fields[0].empty())) break;  // blank line
    }
    if (fields.size() != width_)
      return error("has {} fields, the header has {}", fields.size(), width_);
    out.clear();
    for (size_t c : columns_) out.push_back(c == SIZE_MAX ? std::string_view{} : fields[c]);
    return true;
  }

  template <typename... Args>
  Error error(fmt::format_string<Args...> format, Args&&... args) const {
    return Error{
        ErrorCode::kInvalidArgument,
        fmt::format("{}:{}: {}", source_, line_, fmt::format(format, std::forward<Args>(args)...))};
  }

  template <typename T>
  Result<T> number(std::string_view field, std::string_view column) const {
    T value{};
    const char* end = field.data() + field.size();
    auto [ptr, ec] = std::from_chars(field.data(), end, value);
    if (ec != std::errc() || ptr != end)
      return error("{}: '{}' is not a non-negative number", column, field);
    if constexpr (std::is_floating_point_v<T>) {
      if (!std::isfinite(value) || value < 0)
        return error("{}: '{}' is not a non-negative number", column, field);
    }
    return value;
  }

 private:
  bool next(std::vector<std::string_view>& fields) {
    if (pos_ >= text_.size()) return false;
    size_t end = text_.find('\n', pos_);
    if (end == std::string_view::npos) end = text_.size();
    std::string_view line = text_.substr(pos_, end - pos_);
    if (line.ends_with('\r')) line.remove_suffix(1);
    pos_ = end + 1;
    ++line_;
    fields.clear();
    size_t start = 0;
    while (true) {
      size_t comma = line.find(',', start);
      fields.push_back(line.substr(start, comma == std::string_view::npos ? comma : comma - start));
      if (comma == std::string_view::npos) break;
      start = comma + 1;
    }
    return true;
  }

  std::string_view text_;
  std::string_view source_;
  size_t pos_ = 0;
  size_t line_ = 0;
  size_t width_ = 0;
  std::vector<size_t> columns_;
};

// GPU memory of the openb card models, where public (G1-G3 are undisclosed;
// memory-sized shares cannot land on them).
uint64_t openb_gpu_memory_mib(std::string_view model) {
  static const std::map<std::string_view, uint64_t> kMemory = {
      {"T4", 16384}, {"P100", 16384}, {"V100M16", 16384}, {"V100M32", 32768}, {"A10", 24576}};
  auto it = kMemory.find(model);
  return it == kMemory.end() ? 0 : it->second;
}

}  // namespace

Status load_openb_nodes(std::string_view csv, std::string_view source, Cluster& cluster) {
  CsvReader reader(csv, source);
  LS_RETURN_IF_ERROR(reader.header({"sn", "cpu_milli", "memory_mib", "gpu", "model"}));
  std::vector<std::string_view> f;
  while (true) {
    LS_ASSIGN_OR_RETURN(bool more, reader.row(f));
    if (!more) break;
    Node node;
    node.name = std::string(f[0]);
    LS_ASSIGN_OR_RETURN(node.cpu_milli, reader.number<uint64_t>(f[1], "cpu_milli"));
    LS_ASSIGN_OR_RETURN(node.memory_mib, reader.number<uint64_t>(f[2], "memory_mib"));
    LS_ASSIGN_OR_RETURN(uint32_t gpus, reader.number<uint32_t>(f[3], "gpu"));
    if (gpus > kMaxDevicesPerNode)
      return reader.error("gpu: {} cards, at most {} per node", gpus, kMaxDevicesPerNode);
    if (cluster.find_node(node.name) >= 0) return reader.error("sn: '{}' repeated", node.name);
    if (gpus > 0 && f[4].empty()) return reader.error("model: empty on a node with GPUs");
    for (uint32_t g = 0; g < gpus; ++g) {
      Device d;
      d.model = cluster.intern_model(f[4]);
      d.memory_mib = openb_gpu_memory_mib(f[4]);
      node.devices.push_back(d);
    }
    cluster.add_node(std::move(node));
  }
  return {};
}

Result<std::vector<TraceTask>> load_openb_pods(std::string_view csv, std::string_view source,
                                               Cluster& cluster) {
  CsvReader reader(csv, source);
  // openb_pod_list_multigpu20 has neither gpu_spec nor creation_time: any
  // model, and file order is arrival order.
  LS_RETURN_IF_ERROR(reader.header({"name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli",
                                    "gpu_spec", "creation_time", "qos", "deletion_time"},
                                   {"gpu_spec", "creation_time", "qos", "deletion_time"}));
  std::vector<TraceTask> tasks;
  std::vector<std::string_view> f;
  while (true) {
    LS_ASSIGN_OR_RETURN(bool more, reader.row(f));
    if (!more) break;
    TraceTask t;
    t.name = std::string(f[0]);
    PodRequest& r = t.request;
    LS_ASSIGN_OR_RETURN(r.cpu_milli, reader.number<uint64_t>(f[1], "cpu_milli"));
    LS_ASSIGN_OR_RETURN(r.memory_mib, reader.number<uint64_t>(f[2], "memory_mib"));
    LS_ASSIGN_OR_RETURN(uint32_t num_gpu, reader.number<uint32_t>(f[3], "num_gpu"));
    LS_ASSIGN_OR_RETURN(uint32_t milli, reader.number<uint32_t>(f[4], "gpu_milli"));
    if (num_gpu > kMaxDevicesPerNode) return reader.error("num_gpu: {} cards", num_gpu);
    if (milli > kMilliPerGpu) return reader.error("gpu_milli: {} is above 1000", milli);
    if (num_gpu == 1 && milli > 0 && milli < kMilliPerGpu) {
      r.gpu_milli = milli;  // a share of one card
    } else {
      r.gpu_count = num_gpu;
    }
    std::string_view spec = f[5];
    if (spec != "nan") {
      while (!spec.empty()) {
        size_t bar = spec.find('|');
        std::string_view model = spec.substr(0, bar);
        if (!model.empty()) r.allowed_models.push_back(cluster.intern_model(model));
        spec = bar == std::string_view::npos ? std::string_view{} : spec.substr(bar + 1);
      }
    }
    if (f[6].empty()) {
      t.created_s = static_cast<double>(tasks.size());
    } else {
      LS_ASSIGN_OR_RETURN(t.created_s, reader.number<double>(f[6], "creation_time"));
      if (!f[8].empty()) {
        LS_ASSIGN_OR_RETURN(double deleted, reader.number<double>(f[8], "deletion_time"));
        t.deleted_s = deleted;
      }
    }
    t.best_effort = f[7] == "BE";
    tasks.push_back(std::move(t));
  }
  std::stable_sort(tasks.begin(), tasks.end(), [](const TraceTask& a, const TraceTask& b) {
    return a.created_s < b.created_s;
  });
  return tasks;
}

std::vector<TraceTask> inflate(const std::vector<TraceTask>& tasks, uint64_t gpu_milli_total,
                               double ratio, uint64_t seed) {
  std::vector<TraceTask> out = tasks;
  if (tasks.empty()) return out;
  const double goal = ratio * static_cast<double>(gpu_milli_total);
  double arrived = 0;
  for (const TraceTask& t : out) arrived += static_cast<double>(t.request.gpu_milli_request());
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<size_t> pick(0, tasks.size() - 1);
  bool any_gpu = false;
  for (const TraceTask& t : tasks) any_gpu |= t.request.wants_gpu();
  while (any_gpu && arrived < goal) {
    TraceTask t = tasks[pick(rng)];
    t.name += fmt::format("-x{}", out.size());
    arrived += static_cast<double>(t.request.gpu_milli_request());
    out.push_back(std::move(t));
  }
  return out;
}

std::vector<TraceTask> paper_arrival(const std::vector<TraceTask>& tasks, uint64_t gpu_milli_total,
                                     double ratio, uint64_t seed) {
  std::vector<TraceTask> by_name = tasks;
  std::stable_sort(by_name.begin(), by_name.end(),
                   [](const TraceTask& a, const TraceTask& b) { return a.name < b.name; });
  std::vector<TraceTask> out = by_name;
  std::mt19937_64 rng(seed);
  std::shuffle(out.begin(), out.end(), rng);
  if (by_name.empty()) return out;
  const double goal = ratio * static_cast<double>(gpu_milli_total);
  double arrived = 0;
  for (const TraceTask& t : out) arrived += static_cast<double>(t.request.gpu_milli_request());
  std::uniform_int_distribution<size_t> pick(0, by_name.size() - 1);
  bool any_gpu = false;
  for (const TraceTask& t : by_name) any_gpu |= t.request.wants_gpu();
  for (size_t i = 0; any_gpu; ++i) {
    TraceTask t = by_name[pick(rng)];
    // The paper's simulator compares the request of one card (a whole card
    // for a multi-card task), not the task's total, with what is left.
    const double per_card = t.request.gpu_count > 0 ? 1000.0 : t.request.gpu_milli;
    if (arrived + per_card > goal) break;
    arrived += static_cast<double>(t.request.gpu_milli_request());
    t.name += fmt::format("-tuned-{}", i);
    out.push_back(std::move(t));
  }
  return out;
}

std::vector<FillPoint> mean_curve(const std::vector<std::vector<FillPoint>>& runs) {
  std::vector<FillPoint> out;
  if (runs.empty()) return out;
  size_t shared = runs[0].size();
  for (const auto& r : runs) shared = std::min(shared, r.size());
  if (shared == 0) return out;
  const double n = static_cast<double>(runs.size());
  auto mean_of = [&](auto point_of) {
    FillPoint m;
    double tasks = 0, unplaced = 0;
    for (const auto& r : runs) {
      const FillPoint& p = point_of(r);
      m.arrived += p.arrived / n;
      m.allocated += p.allocated / n;
      tasks += static_cast<double>(p.tasks);
      unplaced += static_cast<double>(p.unplaced);
    }
    m.tasks = static_cast<uint64_t>(std::llround(tasks / n));
    m.unplaced = static_cast<uint64_t>(std::llround(unplaced / n));
    return m;
  };
  for (size_t i = 0; i + 1 < shared; ++i)
    out.push_back(
        mean_of([i](const std::vector<FillPoint>& r) -> const FillPoint& { return r[i]; }));
  out.push_back(
      mean_of([](const std::vector<FillPoint>& r) -> const FillPoint& { return r.back(); }));
  return out;
}

std::vector<FillPoint> fill(Cluster& cluster, Placer& placer, const std::vector<TraceTask>& tasks,
                            double step) {
  std::vector<FillPoint> points;
  const double total = static_cast<double>(cluster.gpu_milli_total());
  double arrived = 0;
  double next_mark = step;
  FillPoint p;
  for (const TraceTask& t : tasks) {
    arrived += static_cast<double>(t.request.gpu_milli_request());
    ++p.tasks;
    Placer::Decision d = placer.place(t.request);
    if (d.node >= 0) {
      (void)cluster.allocate(d.node, t.request, d.choice);
    } else {
      ++p.unplaced;
    }
    // A cluster without GPUs has no ratio to draw (and 1/0 would mark
    // points forever); only the end point is recorded.
    if (total <= 0) continue;
    p.arrived = arrived / total;
    p.allocated = static_cast<double>(cluster.gpu_milli_used()) / total;
    while (p.arrived >= next_mark) {
      points.push_back(p);
      next_mark += step;
    }
  }
  if (points.empty() || points.back().tasks != p.tasks) points.push_back(p);
  return points;
}

}  // namespace loadstar::scheduler
