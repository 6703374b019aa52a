#include "model/fast_loader.h"

#include <fcntl.h>
#include <liburing.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>

namespace loadstar::model {

namespace {

constexpr uint64_t kAlign = 4096;

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

struct AlignedFree {
  void operator()(char* p) const { std::free(p); }
};

// One read: a slot's buffer filled from [offset, offset + length) of a file.
struct Slot {
  std::unique_ptr<char, AlignedFree> buffer;
  size_t range = 0;
  uint64_t offset = 0;    // file offset of the read (aligned)
  uint64_t length = 0;    // bytes asked (aligned up)
  uint64_t expected = 0;  // bytes that exist there
  int64_t result = 0;     // bytes read, or -errno
  bool done = false;      // completed, not yet delivered
  uint64_t sequence = 0;
};

}  // namespace

Result<FastLoadReport> fast_read(const std::vector<ReadRange>& ranges,
                                 const FastLoadOptions& options, const LoadSink& sink) {
  if (options.block_bytes == 0 || options.block_bytes % kAlign != 0 || options.queue_depth == 0)
    return make_error(ErrorCode::kInvalidArgument,
                      "block size must be a positive multiple of 4096 and queue depth positive");
  const auto start = std::chrono::steady_clock::now();
  FastLoadReport report;
  report.direct = options.direct;

  // Open everything first: a missing file fails before any read.
  std::vector<Fd> fds(ranges.size());
  std::vector<uint64_t> ends(ranges.size());
  for (size_t i = 0; i < ranges.size(); ++i) {
    const auto& r = ranges[i];
    fds[i].fd = ::open(r.path.c_str(), O_RDONLY | O_CLOEXEC | (options.direct ? O_DIRECT : 0));
    if (fds[i].fd < 0 && options.direct && errno == EINVAL) {  // e.g. tmpfs
      fds[i].fd = ::open(r.path.c_str(), O_RDONLY | O_CLOEXEC);
      report.direct = false;
    }
    if (fds[i].fd < 0)
      return make_error(errno == ENOENT ? ErrorCode::kNotFound : ErrorCode::kIo,
                        "{}: cannot open: {}", r.path.string(), std::strerror(errno));
    struct stat st {};
    if (::fstat(fds[i].fd, &st) != 0)
      return make_error(ErrorCode::kIo, "{}: stat: {}", r.path.string(), std::strerror(errno));
    const auto size = static_cast<uint64_t>(st.st_size);
    ends[i] = r.end == 0 ? size : r.end;
    if (r.begin > ends[i] || ends[i] > size)
      return make_error(ErrorCode::kOutOfRange, "{}: range {}..{} is outside its {} bytes",
                        r.path.string(), r.begin, ends[i], size);
    ++report.files;
  }

  io_uring ring{};
  if (int rc = io_uring_queue_init(options.queue_depth, &ring, 0); rc < 0)
    return make_error(ErrorCode::kIo, "io_uring_queue_init: {}", std::strerror(-rc));
  struct RingGuard {
    io_uring* ring;
    ~RingGuard() { io_uring_queue_exit(ring); }
  } guard{&ring};

  std::vector<Slot> slots(options.queue_depth);
  std::vector<iovec> iovecs(slots.size());
  for (size_t i = 0; i < slots.size(); ++i) {
    slots[i].buffer.reset(static_cast<char*>(std::aligned_alloc(kAlign, options.block_bytes)));
    if (!slots[i].buffer)
      return make_error(ErrorCode::kResourceExhausted, "out of memory for buffers");
    iovecs[i] = {slots[i].buffer.get(), options.block_bytes};
  }
  const bool fixed = io_uring_register_buffers(&ring, iovecs.data(), iovecs.size()) == 0;

  // Reads are issued in (range, offset) order and delivered in the same order.
  size_t next_range = 0;
  uint64_t next_offset = ranges.empty() ? 0 : ranges[0].begin / kAlign * kAlign;
  uint64_t issued = 0, delivered = 0;
  auto advance_to_work = [&] {
    while (next_range < ranges.size() && next_offset >= ends[next_range]) {
      ++next_range;
      if (next_range < ranges.size()) next_offset = ranges[next_range].begin / kAlign * kAlign;
    }
  };
  auto issue = [&](size_t s) {
    advance_to_work();
    if (next_range >= ranges.size()) return false;
    Slot& slot = slots[s];
    slot.range = next_range;
    slot.offset = next_offset;
    slot.expected = std::min(options.block_bytes, ends[next_range] - next_offset);
    slot.length = (slot.expected + kAlign - 1) / kAlign * kAlign;
    slot.done = false;
    slot.sequence = issued++;
    next_offset += slot.expected;
    io_uring_sqe* sqe = io_uring_get_sqe(&ring);
    if (fixed)
      io_uring_prep_read_fixed(sqe, fds[slot.range].fd, slot.buffer.get(),
                               static_cast<unsigned>(slot.length), slot.offset,
                               static_cast<int>(s));
    else
      io_uring_prep_read(sqe, fds[slot.range].fd, slot.buffer.get(),
                         static_cast<unsigned>(slot.length), slot.offset);
    io_uring_sqe_set_data64(sqe, s);
    return true;
  };
  for (size_t s = 0; s < slots.size(); ++s)
    if (!issue(s)) break;
  io_uring_submit(&ring);

  // Completions arrive in any order; a slot is delivered when its turn comes
  // and only then reused, so at most queue_depth buffers exist.
  while (delivered < issued) {
    io_uring_cqe* cqe = nullptr;
    if (int rc = io_uring_wait_cqe(&ring, &cqe); rc < 0) {
      if (rc == -EINTR) continue;
      return make_error(ErrorCode::kIo, "io_uring_wait_cqe: {}", std::strerror(-rc));
    }
    const size_t s = io_uring_cqe_get_data64(cqe);
    slots[s].result = cqe->res;
    slots[s].done = true;
    io_uring_cqe_seen(&ring, cqe);
    bool resubmit = false;
    for (;;) {
      Slot* ready = nullptr;
      for (auto& slot : slots)
        if (slot.done && slot.sequence == delivered) ready = &slot;
      if (!ready) break;
      const ReadRange& r = ranges[ready->range];
      if (ready->result < 0)
        return make_error(ErrorCode::kIo, "{}: read at {}: {}", r.path.string(), ready->offset,
                          std::strerror(static_cast<int>(-ready->result)));
      uint64_t got = static_cast<uint64_t>(ready->result);
      if (got < ready->expected) {
        // A short read (rare): finish the piece with plain reads.
        Fd plain{::open(r.path.c_str(), O_RDONLY | O_CLOEXEC)};
        while (plain.fd >= 0 && got < ready->expected) {
          const ssize_t n = ::pread(plain.fd, ready->buffer.get() + got, ready->expected - got,
                                    static_cast<off_t>(ready->offset + got));
          if (n <= 0) break;
          got += static_cast<uint64_t>(n);
        }
        if (got < ready->expected)
          return make_error(ErrorCode::kIo, "{}: short read at {} ({} of {} bytes)",
                            r.path.string(), ready->offset, got, ready->expected);
      }
      // Trim the alignment slack before the range's first byte.
      const uint64_t skip = ready->offset < r.begin ? r.begin - ready->offset : 0;
      std::string_view data(ready->buffer.get() + skip, ready->expected - skip);
      if (!data.empty() && !sink(ready->range, ready->offset + skip, data))
        return make_error(ErrorCode::kCancelled, "the load was stopped by its consumer");
      report.bytes += data.size();
      ready->done = false;
      ++delivered;
      if (issue(static_cast<size_t>(ready - slots.data()))) resubmit = true;
    }
    if (resubmit) io_uring_submit(&ring);
  }
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

}  // namespace loadstar::model
