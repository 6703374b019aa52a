// A response body's framing, decoded as its bytes arrive: the chunked
// transfer coding (RFC 9112 §7.1), a Content-Length, or the connection's
// close. The gateway's streaming relay reads the engine's socket itself and
// decodes with this, rather than through Beast's parser, whose composed
// read operation and chunk parser were a tenth of the relay's CPU.
// Pure: no I/O.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/result.h"

namespace loadstar::http {

class BodyDecoder {
 public:
  static BodyDecoder chunked() { return BodyDecoder(Mode::kChunked, 0); }
  static BodyDecoder length(uint64_t bytes) { return BodyDecoder(Mode::kLength, bytes); }
  static BodyDecoder until_close() { return BodyDecoder(Mode::kUntilClose, 0); }

  // Decodes what it can of `in`, appending the body's bytes to `out`.
  // Returns how many bytes of `in` it used: all of them (a partial size
  // line is kept in the decoder's state), unless the body ended first; the
  // rest is then past the body. An error says what is malformed; the
  // decoder refuses anything more after one.
  Result<size_t> feed(std::string_view in, std::string& out);
  // The whole body has been decoded (a chunked body's last chunk and
  // trailers included).
  bool done() const { return state_ == State::kDone; }
  // Body bytes declared and not yet decoded: the rest of a Content-Length,
  // or of the chunk whose size line or data is arriving. What is decoded
  // plus this is the least the body will be, so a size limit can refuse a
  // chunk by its size line, before its data is sent.
  uint64_t pending() const { return mode_ == Mode::kUntilClose ? 0 : remaining_; }
  // The peer closed the connection: fine only for a body that ends so.
  Status at_close();

  // A size line (size, extensions) or a trailer line longer than this is
  // refused: the decoder never holds more than this of a line.
  static constexpr size_t kMaxLine = 4096;

 private:
  enum class Mode { kChunked, kLength, kUntilClose };
  enum class State {
    kSize,       // hex digits of a chunk's size
    kSizeSpace,  // whitespace after the size, before ';' or CR
    kExtension,  // after ';': extensions, up to CR
    kSizeLf,     // the LF ending the size line
    kData,       // `remaining_` bytes of chunk data (or of a Content-Length body)
    kDataCr,     // the CRLF after a chunk's data
    kDataLf,
    kTrailerStart,  // a trailer line, or the empty line ending the body
    kTrailer,       // inside a trailer line, up to CR
    kTrailerLf,     // the LF ending a trailer line
    kEndLf,         // the LF of the empty line ending the body
    kDone,
    kError,  // malformed: nothing more is decoded
  };
  BodyDecoder(Mode mode, uint64_t bytes);

  Mode mode_;
  State state_;
  uint64_t remaining_ = 0;  // data bytes left in this chunk (or body)
  bool sized_ = false;      // a hex digit of this size was read
  size_t digits_ = 0;       // its significant hex digits (leading zeros are not)
  size_t line_ = 0;         // bytes of the current size or trailer line
};

}  // namespace loadstar::http
