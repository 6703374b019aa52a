// How a staging agent talks to its peers. The HTTP implementation speaks the
// peer protocol (docs/agent.md); tests put a fake behind it to inject faults
// (a peer that lies, dies mid-chunk or stalls), as RocksDB's fault-injection
// FileSystem does for disks.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "agent/chunk_plan.h"
#include "agent/source.h"
#include "common/result.h"

namespace loadstar::agent {

// Peers are named by their URL (http://host:port). Called from several
// threads at once.
class PeerClient {
 public:
  virtual ~PeerClient() = default;
  // What `peer` holds of blob `key`: GET /v1/blobs/KEY.
  virtual Result<BlobInfo> blob_info(const std::string& peer, const std::string& key) = 0;
  // Chunk `index` of blob `key`, into `sink`: GET /v1/blobs/KEY/chunks/I.
  // Returns the SHA-256 the peer sends with it (x-loadstar-sha256; empty when
  // none). The caller checks the length and the digests.
  virtual Result<std::string> chunk(const std::string& peer, const std::string& key, uint64_t index,
                                    const ByteSink& sink) = 0;
};

// Over HTTP: maps read within 2 s (1 s without a byte), chunks within 120 s
// (5 s without a byte), so that a dead peer costs little.
// `authorization` (the internal token's "Bearer ..."; "" none) goes with
// every request.
std::shared_ptr<PeerClient> make_http_peer_client(std::string authorization = "");

}  // namespace loadstar::agent
