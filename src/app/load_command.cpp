// `loadstar load DIR`: reads a staged model into memory through the fast
// loader (io_uring, O_DIRECT, many reads in flight) and reports bandwidth.
#include <filesystem>
#include <memory>

#include <fmt/core.h>
#include <CLI/CLI.hpp>

#include "app/commands.h"
#include "common/units.h"
#include "model/fast_loader.h"
#include "model/model_dir.h"

namespace loadstar::app {

namespace {

struct LoadArgs {
  std::vector<std::string> paths;
  std::string block = "8Mi";
  unsigned queue_depth = 16;
  bool buffered = false;
  bool raw = false;
};

int run_load(const LoadArgs& args) {
  model::FastLoadOptions options;
  auto block = parse_bytes(args.block);
  if (!block.ok()) {
    fmt::print(stderr, "--block-size: {}\n", block.error().message);
    return 2;
  }
  options.block_bytes = *block;
  options.queue_depth = args.queue_depth;
  options.direct = !args.buffered;
  if (!args.raw) {
    if (args.paths.size() != 1) {
      fmt::print(stderr, "loadstar load: one model directory (or --raw FILE...)\n");
      return 2;
    }
    auto report = model::load_weights(args.paths[0], options);
    if (!report.ok()) {
      fmt::print(stderr, "loadstar load: {}\n", report.error().message);
      return 1;
    }
    fmt::print(
        "loaded {} tensors, {} from {} files in {:.3f}s: {:.0f} MiB/s ({}, {} reads of {} "
        "in flight), xxh3 {:016x}\n",
        report->tensors, format_bytes(report->bytes), report->files, report->seconds,
        report->bytes / 1048576.0 / std::max(report->seconds, 1e-9),
        report->direct ? "O_DIRECT" : "page cache", options.queue_depth,
        format_bytes(options.block_bytes), report->checksum);
    return 0;
  }
  std::vector<model::ReadRange> ranges;
  for (const auto& p : args.paths) ranges.push_back({p, 0, 0});
  auto report =
      model::fast_read(ranges, options, [](size_t, uint64_t, std::string_view) { return true; });
  if (!report.ok()) {
    fmt::print(stderr, "loadstar load: {}\n", report.error().message);
    return 1;
  }
  fmt::print("read {} from {} files in {:.3f}s: {:.0f} MiB/s ({})\n", format_bytes(report->bytes),
             report->files, report->seconds, report->bytes_per_s() / 1048576.0,
             report->direct ? "O_DIRECT" : "page cache");
  return 0;
}

}  // namespace

std::function<int()> setup_load(CLI::App& app) {
  auto args = std::make_shared<LoadArgs>();
  app.add_option("path", args->paths, "A model directory (or files with --raw)")->required();
  app.add_option("--block-size", args->block, "Bytes per read (multiple of 4 KiB)")
      ->capture_default_str();
  app.add_option("--queue-depth", args->queue_depth, "Reads in flight")->capture_default_str();
  app.add_flag("--buffered", args->buffered, "Read through the page cache (no O_DIRECT)");
  app.add_flag("--raw", args->raw, "Read whole files, not a model's tensors");
  return [args] { return run_load(*args); };
}

}  // namespace loadstar::app
