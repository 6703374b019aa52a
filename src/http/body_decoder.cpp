#include "http/body_decoder.h"

#include <algorithm>
#include <limits>

namespace loadstar::http {

namespace {

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// 15 hex digits: sizes up to 2^60, far past any body, and no overflow.
constexpr size_t kMaxDigits = 15;

}  // namespace

BodyDecoder::BodyDecoder(Mode mode, uint64_t bytes) : mode_(mode) {
  switch (mode) {
    case Mode::kChunked:
      state_ = State::kSize;
      break;
    case Mode::kLength:
      remaining_ = bytes;
      state_ = bytes == 0 ? State::kDone : State::kData;
      break;
    case Mode::kUntilClose:
      remaining_ = std::numeric_limits<uint64_t>::max();
      state_ = State::kData;
      break;
  }
}

Result<size_t> BodyDecoder::feed(std::string_view in, std::string& out) {
  size_t i = 0;
  auto bad = [&](std::string_view what) -> Error {
    state_ = State::kError;
    return make_error(ErrorCode::kCorrupt, "malformed chunked body: {}", what);
  };
  if (state_ == State::kError) return bad("already malformed");
  while (i < in.size() && state_ != State::kDone) {
    if (state_ == State::kData) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(remaining_, in.size() - i));
      out.append(in.data() + i, n);
      i += n;
      if (mode_ == Mode::kUntilClose) continue;
      remaining_ -= n;
      if (remaining_ == 0) state_ = mode_ == Mode::kChunked ? State::kDataCr : State::kDone;
      continue;
    }
    const char c = in[i++];
    switch (state_) {
      case State::kSize: {
        const int v = hex_value(c);
        if (v >= 0) {
          sized_ = true;
          if ((remaining_ != 0 || v != 0) && ++digits_ > kMaxDigits)
            return bad("chunk size too large");
          remaining_ = remaining_ * 16 + static_cast<uint64_t>(v);
        } else if (!sized_) {
          return bad("a chunk size must begin with a hex digit");
        } else if (c == ';') {
          state_ = State::kExtension;
        } else if (c == ' ' || c == '\t') {
          state_ = State::kSizeSpace;
        } else if (c == '\r') {
          state_ = State::kSizeLf;
        } else if (c == '\n') {
          return bad("bare LF in a chunk size line");
        } else {
          return bad("unexpected byte in a chunk size");
        }
        break;
      }
      case State::kSizeSpace:
        if (++line_ > kMaxLine) return bad("chunk extensions too long");
        if (c == ';')
          state_ = State::kExtension;
        else if (c == '\r')
          state_ = State::kSizeLf;
        else if (c == '\n')
          return bad("bare LF in a chunk size line");
        else if (c != ' ' && c != '\t')
          return bad("unexpected byte after a chunk size");
        break;
      case State::kExtension:
        if (++line_ > kMaxLine) return bad("chunk extensions too long");
        if (c == '\r')
          state_ = State::kSizeLf;
        else if (c == '\n')
          return bad("bare LF in a chunk size line");
        break;
      case State::kSizeLf:
        if (c != '\n') return bad("CR without LF after a chunk size");
        digits_ = 0;
        sized_ = false;
        line_ = 0;
        state_ = remaining_ == 0 ? State::kTrailerStart : State::kData;
        break;
      case State::kDataCr:
        if (c != '\r') return bad("chunk data longer than its size");
        state_ = State::kDataLf;
        break;
      case State::kDataLf:
        if (c != '\n') return bad("CR without LF after chunk data");
        state_ = State::kSize;
        break;
      case State::kTrailerStart:
        if (c == '\r') {
          state_ = State::kEndLf;
        } else if (c == '\n') {
          return bad("bare LF in the trailers");
        } else {
          line_ = 1;
          state_ = State::kTrailer;
        }
        break;
      case State::kTrailer:
        if (++line_ > kMaxLine) return bad("trailer line too long");
        if (c == '\r')
          state_ = State::kTrailerLf;
        else if (c == '\n')
          return bad("bare LF in the trailers");
        break;
      case State::kTrailerLf:
        if (c != '\n') return bad("CR without LF in the trailers");
        state_ = State::kTrailerStart;
        break;
      case State::kEndLf:
        if (c != '\n') return bad("CR without LF at the end of the body");
        state_ = State::kDone;
        break;
      case State::kData:
      case State::kDone:
      case State::kError:
        break;  // handled above
    }
  }
  return i;
}

Status BodyDecoder::at_close() {
  if (mode_ == Mode::kUntilClose && state_ != State::kError) {
    state_ = State::kDone;
    return ok_status();
  }
  if (state_ == State::kDone) return ok_status();
  return make_error(ErrorCode::kCorrupt, "the connection closed before the body's end");
}

}  // namespace loadstar::http
