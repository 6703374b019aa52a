#include "http/response_head.h"

#include <string>

#include <fmt/format.h>
#include <gtest/gtest.h>

namespace loadstar::http {
namespace {

using Framing = ResponseHead::Framing;

ResponseHead parsed(std::string_view wire) {
  auto head = parse_response_head(wire);
  EXPECT_TRUE(head.ok()) << wire << ": " << head.error().message;
  if (!head.ok() || !*head) {
    ADD_FAILURE() << "incomplete: " << wire;
    return {};
  }
  return **head;
}

std::string error_of(std::string_view wire) {
  auto head = parse_response_head(wire);
  return head.ok() ? "parsed" : head.error().message;
}

TEST(ResponseHead, AStreamsHeadIsReadUpToItsBlankLine) {
  const std::string wire =
      "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
      "transfer-encoding: chunked\r\nX-Other:  spaced value \r\n\r\nd\r\ndata: ";
  const ResponseHead head = parsed(wire);
  EXPECT_EQ(head.status, 200);
  EXPECT_EQ(head.size, wire.find("\r\n\r\n") + 4);
  EXPECT_EQ(head.framing, Framing::kChunked);
  EXPECT_TRUE(head.keep_alive);
  EXPECT_EQ(head.content_type, "text/event-stream; charset=utf-8");
}

TEST(ResponseHead, IncompleteUntilTheBlankLineAndRefusedPastTheLimit) {
  const std::string wire = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n";
  for (size_t n = 0; n < wire.size(); ++n) {
    auto head = parse_response_head(std::string_view(wire).substr(0, n));
    ASSERT_TRUE(head.ok()) << n;
    EXPECT_FALSE(*head) << n;
  }
  EXPECT_EQ(parsed(wire).framing, Framing::kLength);
  EXPECT_EQ(parsed(wire).content_length, 2u);
  const std::string huge = "HTTP/1.1 200 OK\r\nX: " + std::string(9000, 'a');
  EXPECT_EQ(error_of(huge), "response head over the limit of 8192 bytes");
  auto bigger = parse_response_head(huge + "\r\n\r\n", 16384);
  ASSERT_TRUE(bigger.ok());
  EXPECT_TRUE(*bigger);
}

TEST(ResponseHead, FramingFollowsRfc9112) {
  // No body, whatever the fields say.
  for (const char* status :
       {"100 Continue", "103 Early Hints", "204 No Content", "304 Not Modified"})
    EXPECT_EQ(parsed(fmt::format("HTTP/1.1 {}\r\nContent-Length: 5\r\n\r\n", status)).framing,
              Framing::kNone)
        << status;
  // No length: to the close, and the connection is not kept.
  ResponseHead to_close = parsed("HTTP/1.1 200 OK\r\n\r\n");
  EXPECT_EQ(to_close.framing, Framing::kUntilClose);
  EXPECT_FALSE(to_close.keep_alive);
  // Chunked overrides a length, and such a connection is not reused.
  ResponseHead both =
      parsed("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n");
  EXPECT_EQ(both.framing, Framing::kChunked);
  EXPECT_FALSE(both.keep_alive);
  // Another coding last: to the close.
  EXPECT_EQ(parsed("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n").framing,
            Framing::kUntilClose);
  EXPECT_EQ(parsed("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, CHUNKED\r\n\r\n").framing,
            Framing::kChunked);
  // Transfer codings in HTTP/1.0: decoded, but the connection is not kept.
  ResponseHead old =
      parsed("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n");
  EXPECT_EQ(old.framing, Framing::kChunked);
  EXPECT_FALSE(old.keep_alive);
  // The same length twice is one length.
  EXPECT_EQ(
      parsed("HTTP/1.1 200 OK\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\n").content_length,
      3u);
}

TEST(ResponseHead, KeepAliveByVersionAndConnectionOptions) {
  EXPECT_TRUE(parsed("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").keep_alive);
  EXPECT_FALSE(
      parsed("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: Close\r\n\r\n").keep_alive);
  EXPECT_FALSE(parsed("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").keep_alive);
  EXPECT_TRUE(parsed("HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: foo, keep-alive\r\n\r\n")
                  .keep_alive);
  // A status line without a reason phrase.
  EXPECT_EQ(parsed("HTTP/1.1 503\r\nContent-Length: 0\r\n\r\n").status, 503);
}

TEST(ResponseHead, WhatCouldBeFramedTwoWaysIsRefused) {
  const char* bad[] = {
      "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",  // conflicting
      "HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n",                    // a list
      "HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\n",
      "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
      "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",           // chunked not last
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: ,\r\nContent-Length: 3\r\n\r\n",  // no coding
      "HTTP/1.1 200 OK\r\nContent-Length : 3\r\n\r\n",  // space before the colon
      "HTTP/1.1 200 OK\r\nX: a\r\n folded\r\n\r\n",     // obs-fold
      "HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",             // a bare CR
      "HTTP/1.1 200 OK\r\nX: a\nY: b\r\n\r\n",          // a bare LF
      "HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
      "HTTP/1.1 200 OK\r\n: empty name\r\n\r\n",
      "HTTP/2 200 OK\r\n\r\n",
      "HTTP/1.1 20 OK\r\n\r\n",
      "HTTP/1.1 2000 OK\r\n\r\n",
      "HTTP/1.1 099 OK\r\n\r\n",
      "HTTP/1.1  200 OK\r\n\r\n",
      "http/1.1 200 OK\r\n\r\n",
      "HTTP/1.1 200 O\x01K\r\n\r\n",
  };
  for (const char* wire : bad) EXPECT_NE(error_of(wire), "parsed") << wire;
  EXPECT_EQ(error_of("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"),
            "malformed response head: conflicting Content-Length");
}

TEST(ResponseHead, TheDecoderMatchesTheFraming) {
  std::string body;
  BodyDecoder length = parsed("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n").body_decoder();
  ASSERT_TRUE(length.feed("abcdef", body).ok());
  EXPECT_EQ(body, "abc");
  EXPECT_TRUE(length.done());
  EXPECT_TRUE(parsed("HTTP/1.1 204 No Content\r\n\r\n").body_decoder().done());
  BodyDecoder close = parsed("HTTP/1.1 200 OK\r\n\r\n").body_decoder();
  body.clear();
  ASSERT_TRUE(close.feed("abc", body).ok());
  EXPECT_FALSE(close.done());
  EXPECT_TRUE(close.at_close().ok());
}

}  // namespace
}  // namespace loadstar::http
