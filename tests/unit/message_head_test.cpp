#include "http/message_head.h"

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

RequestHead request(std::string_view wire) {
  auto head = parse_request_head(wire, 8192);
  EXPECT_TRUE(head.ok()) << wire << ": " << head.error().message;
  if (!head.ok() || !*head) {
    ADD_FAILURE() << "incomplete: " << wire;
    return {};
  }
  return **head;
}

std::string request_error(std::string_view wire) {
  auto head = parse_request_head(wire, 8192);
  return head.ok() ? "parsed" : head.error().message;
}

TEST(RequestHead, ARequestIsItsLineAndFieldsInOrder) {
  const std::string wire =
      "\r\nPOST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: gw\r\nContent-Type:application/json\r\n"
      "X-Pad:  spaced value \t\r\ncontent-length: 7\r\nExpect: 100-Continue\r\n\r\n{\"a\":1}GET";
  const RequestHead head = request(wire);
  EXPECT_EQ(head.method, "POST");
  EXPECT_EQ(head.target, "/v1/chat/completions?x=1");
  EXPECT_EQ(head.size, wire.find("\r\n\r\n") + 4);  // the empty line before it included
  ASSERT_EQ(head.headers.size(), 5u);
  EXPECT_EQ(head.headers[0].name, "Host");
  EXPECT_EQ(head.headers[1].value, "application/json");
  EXPECT_EQ(head.headers[2].value, "spaced value");
  EXPECT_EQ(head.headers[3].name, "content-length");
  EXPECT_FALSE(head.chunked);
  EXPECT_EQ(head.content_length, 7u);
  EXPECT_TRUE(head.keep_alive);
  EXPECT_TRUE(head.expect_continue);
  std::string body;
  BodyDecoder decoder = head.body_decoder();
  ASSERT_TRUE(decoder.feed(std::string_view(wire).substr(head.size), body).ok());
  EXPECT_EQ(body, "{\"a\":1}");
  EXPECT_TRUE(decoder.done());
  // Nothing said of a body: none.
  const RequestHead get = request("GET /health HTTP/1.1\r\n\r\n");
  EXPECT_EQ(get.content_length, 0u);
  EXPECT_TRUE(get.body_decoder().done());
  EXPECT_TRUE(get.headers.empty());
}

TEST(RequestHead, IncompleteUntilTheBlankLineAndOverTheLimitIsTold) {
  const std::string wire = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n";
  for (size_t n = 0; n < wire.size(); ++n) {
    auto head = parse_request_head(std::string_view(wire).substr(0, n), 8192);
    ASSERT_TRUE(head.ok()) << n;
    EXPECT_FALSE(*head) << n;
  }
  EXPECT_EQ(request(wire).content_length, 2u);
  const std::string huge = "GET / HTTP/1.1\r\nX: " + std::string(9000, 'a');
  auto over = parse_request_head(huge, 8192);
  ASSERT_FALSE(over.ok());
  EXPECT_EQ(over.error().code, ErrorCode::kOutOfRange);
  // Empty lines alone count toward the limit too.
  std::string crlfs;
  for (int i = 0; i < 4096; ++i) crlfs += "\r\n";
  auto only_blank = parse_request_head(crlfs, 8192);
  ASSERT_FALSE(only_blank.ok());
  EXPECT_EQ(only_blank.error().code, ErrorCode::kOutOfRange);
}

TEST(RequestHead, KeepAliveAndContinueByVersion) {
  EXPECT_FALSE(request("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
  EXPECT_FALSE(request("GET / HTTP/1.0\r\n\r\n").keep_alive);
  EXPECT_TRUE(request("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
  // HTTP/1.0 has no 100 Continue.
  EXPECT_FALSE(request("POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")
                   .expect_continue);
  EXPECT_FALSE(request("POST / HTTP/1.1\r\nExpect: other\r\n\r\n").expect_continue);
}

TEST(RequestHead, ChunkedRequestsAreDecoded) {
  const std::string wire =
      "POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
      "3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nTrailer: x\r\n\r\n";
  const RequestHead head = request(wire);
  EXPECT_TRUE(head.chunked);
  std::string body;
  BodyDecoder decoder = head.body_decoder();
  auto used = decoder.feed(std::string_view(wire).substr(head.size), body);
  ASSERT_TRUE(used.ok());
  EXPECT_EQ(body, "abcde");
  EXPECT_TRUE(decoder.done());
  EXPECT_EQ(head.size + *used, wire.size());
}

// Each of these could be read as a different request by a proxy in front
// (request smuggling), or is simply not HTTP/1.x: refused, never guessed.
TEST(RequestHead, WhatCouldBeFramedTwoWaysIsRefused) {
  const char* bad[] = {
      "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
      "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
      "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
      "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",           // length unknown
      "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",  // chunked not last
      "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
      "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
      "POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n",
      "POST / HTTP/1.1\r\nContent-Length : 3\r\n\r\n",
      "POST / HTTP/1.1\r\nTransfer-Encoding :chunked\r\n\r\n",
      "POST / HTTP/1.1\r\nX: a\r\n Content-Length: 3\r\n\r\n",  // obs-fold
      "POST / HTTP/1.1\r\nX: a\nContent-Length: 3\r\n\r\n",     // a bare LF
      "POST / HTTP/1.1\r\nX: a\rContent-Length: 3\r\n\r\n",     // a bare CR
      "GET / HTTP/1.1\nHost: x\r\n\r\n",
      "GET /a b HTTP/1.1\r\n\r\n",
      "GET  / HTTP/1.1\r\n\r\n",
      "GET / HTTP/1.1 \r\n\r\n",
      "GET / HTTP/2.0\r\n\r\n",
      "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
      "GET / http/1.1\r\n\r\n",
      "GET /\x7f HTTP/1.1\r\n\r\n",
      "G(T / HTTP/1.1\r\n\r\n",
      " GET / HTTP/1.1\r\n\r\n",
      "GET\r\n\r\n",
      "GET /\r\n\r\n",
      "GET / HTTP/1.1\r\nX: \x01\r\n\r\n",
  };
  for (const char* wire : bad) {
    auto head = parse_request_head(wire, 8192);
    ASSERT_FALSE(head.ok()) << wire;
    EXPECT_EQ(head.error().code, ErrorCode::kCorrupt) << wire;
  }
  // A line ended by a bare LF is refused at once, not left waiting for a
  // CRLF that ends the head.
  EXPECT_EQ(request_error("GET /health HTTP/1.1\nHost: x\n"),
            "malformed request head: a line ends in a bare LF");
  EXPECT_EQ(request_error("GET / HTTP/1.1\r\n X: folded\r\n\r\n"),
            "malformed request head: folded field line");
  // A coding the server cannot undo before chunked: not understood (501).
  auto gzip =
      parse_request_head("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 8192);
  ASSERT_FALSE(gzip.ok());
  EXPECT_EQ(gzip.error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(
      request_error("POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
      "malformed request head: both Content-Length and Transfer-Encoding");
  // The same length twice is one length.
  EXPECT_EQ(
      request("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n").content_length,
      3u);
}

}  // namespace
}  // namespace loadstar::http
