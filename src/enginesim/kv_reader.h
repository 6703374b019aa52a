// The consumer's side channel to its producers: reads held KV over HTTP
// (kv_transfer.h says what is read and how it is checked).
#pragma once

#include <memory>

#include <boost/asio/awaitable.hpp>

#include "common/result.h"
#include "enginesim/kv_transfer.h"

namespace loadstar::enginesim {

// Reads held KV from producers on a thread of its own (blocking HTTP with
// kept-alive connections), so the server's I/O thread never waits on a peer.
class KvReader {
 public:
  KvReader();
  ~KvReader();
  KvReader(const KvReader&) = delete;
  KvReader& operator=(const KvReader&) = delete;
  // Resumes on the caller's executor with the producer's blocks, or why not.
  boost::asio::awaitable<Result<engine::HeldKv>> read(KvTransferParams params);

 private:
  Result<engine::HeldKv> read_blocking(const KvTransferParams& params);
  struct Thread;
  std::unique_ptr<Thread> thread_;
};

}  // namespace loadstar::enginesim
