// Reads byte ranges of files into memory at the speed of the disk: io_uring
// with many reads in flight, O_DIRECT into aligned, registered buffers (no
// page-cache copy), delivered to a sink in file order. The sink is where a
// device copy goes (a CUDA sink would cudaMemcpyAsync from these buffers,
// which can be pinned with cudaHostRegister); the engine simulator's sink
// hashes the bytes.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace loadstar::model {

struct ReadRange {
  std::filesystem::path path;
  uint64_t begin = 0;
  uint64_t end = 0;  // exclusive; 0 = to the end of the file
};

struct FastLoadOptions {
  uint64_t block_bytes = 8ull << 20;  // one read; a multiple of 4096
  unsigned queue_depth = 16;          // reads in flight
  bool direct = true;                 // O_DIRECT (falls back where the file system refuses it)
};

struct FastLoadReport {
  uint64_t bytes = 0;  // bytes delivered to the sink
  uint64_t files = 0;
  double seconds = 0;
  bool direct = false;  // every file was read with O_DIRECT
  double bytes_per_s() const { return seconds > 0 ? bytes / seconds : 0; }
};

// Called for consecutive pieces of each range, ranges in order; `range` is the
// index into the list. Returning false stops the load with kCancelled.
using LoadSink = std::function<bool(size_t range, uint64_t offset, std::string_view data)>;

Result<FastLoadReport> fast_read(const std::vector<ReadRange>& ranges,
                                 const FastLoadOptions& options, const LoadSink& sink);

}  // namespace loadstar::model
