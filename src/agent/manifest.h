// What a model version is made of, as a source lists it: files with sizes
// and, where the source knows them, SHA-256 digests. The node agent's cache
// is keyed by these; nothing here touches the disk or the network.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace loadstar::agent {

struct FileEntry {
  std::string path;  // relative, '/'-separated, checked by validate_relative_path
  uint64_t size = 0;
  std::string sha256;  // lower-case hex from the source; empty when it has none
  std::string etag;    // the source's version tag for the file, when it has one
};

struct Manifest {
  std::string source;    // the URI it was resolved from (never with credentials)
  std::string revision;  // commit, version id or empty
  std::vector<FileEntry> files;

  uint64_t total_bytes() const;
  // A short stable id of this exact content list: names the published directory.
  std::string version_id() const;
};

// Rejects what must never become a path under the cache: empty names,
// absolute paths, '..' or '.' components, backslashes, NUL and control bytes.
Status validate_relative_path(std::string_view path);
// Every file path valid, no duplicates, sizes and digests well formed.
Status validate_manifest(const Manifest& manifest);

// The name peers and the cache know a file's bytes by: "sha256-<hex>" when the
// source gives the digest, else a digest of (source, revision, path, size, etag).
std::string blob_key(const Manifest& manifest, const FileEntry& file);

std::string manifest_to_json(const Manifest& manifest);
Result<Manifest> manifest_from_json(std::string_view text);

// Chunks of `size` bytes of `chunk_size` each (the last one shorter).
inline uint64_t chunk_count(uint64_t size, uint64_t chunk_size) {
  return size == 0 ? 0 : (size + chunk_size - 1) / chunk_size;
}

}  // namespace loadstar::agent
