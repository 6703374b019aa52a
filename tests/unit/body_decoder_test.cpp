#include "http/body_decoder.h"

#include <string>

#include <gtest/gtest.h>

namespace loadstar::http {
namespace {

// Feeds `wire` in pieces of `step` bytes; returns the body, or the error.
Result<std::string> decode(BodyDecoder decoder, std::string_view wire, size_t step) {
  std::string body;
  for (size_t at = 0; at < wire.size() && !decoder.done(); at += step) {
    auto used = decoder.feed(wire.substr(at, step), body);
    if (!used.ok()) return used.error();
  }
  if (!decoder.done()) return make_error(ErrorCode::kUnavailable, "not done");
  return body;
}

TEST(BodyDecoder, ChunkedBodiesDecodeWholeOrByteByByte) {
  const std::string wire =
      "d\r\ndata: {\"a\":1}\r\n"
      "1C;name=value\r\n"
      "data: [DONE]\n\n0123456789abcd\r\n"
      "0\r\n\r\n";
  for (size_t step : {wire.size(), size_t{1}, size_t{3}, size_t{7}}) {
    auto body = decode(BodyDecoder::chunked(), wire, step);
    ASSERT_TRUE(body.ok()) << step << ": " << body.error().message;
    EXPECT_EQ(*body, "data: {\"a\":1}data: [DONE]\n\n0123456789abcd") << step;
  }
}

TEST(BodyDecoder, ChunkedTrailersAreReadAndDropped) {
  auto body = decode(BodyDecoder::chunked(), "3\r\nabc\r\n0\r\nX-Usage: 12\r\nY: z\r\n\r\n", 1);
  ASSERT_TRUE(body.ok()) << body.error().message;
  EXPECT_EQ(*body, "abc");
}

TEST(BodyDecoder, BytesPastTheEndAreNotUsed) {
  BodyDecoder decoder = BodyDecoder::chunked();
  std::string body;
  const std::string_view wire = "2\r\nhi\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n";
  auto used = decoder.feed(wire, body);
  ASSERT_TRUE(used.ok());
  EXPECT_TRUE(decoder.done());
  EXPECT_EQ(*used, wire.find("HTTP"));
  EXPECT_EQ(body, "hi");
}

// What a body has declared and not yet sent: a limit can refuse a chunk
// by its size line.
TEST(BodyDecoder, PendingIsWhatIsDeclaredAndNotYetDecoded) {
  std::string body;
  BodyDecoder chunked = BodyDecoder::chunked();
  ASSERT_TRUE(chunked.feed("7fffffff\r\nab", body).ok());
  EXPECT_EQ(chunked.pending(), 0x7fffffffu - 2);
  BodyDecoder length = BodyDecoder::length(10);
  ASSERT_TRUE(length.feed("abcd", body).ok());
  EXPECT_EQ(length.pending(), 6u);
  BodyDecoder whole = BodyDecoder::chunked();
  ASSERT_TRUE(whole.feed("2\r\nhi\r\n0\r\n\r\n", body).ok());
  EXPECT_EQ(whole.pending(), 0u);
  EXPECT_EQ(BodyDecoder::until_close().pending(), 0u);
}

TEST(BodyDecoder, MalformedChunkedBodiesAreErrorsThatSayWhy) {
  struct Case {
    const char* wire;
    const char* says;
  };
  for (const Case& c : {
           Case{"x\r\n", "begin with a hex digit"},
           Case{"3\r\nabcd\r\n", "longer than its size"},
           Case{"3\nabc", "bare LF"},
           Case{"3\r\rabc", "CR without LF"},
           Case{"1234567890abcdef0\r\n", "too large"},
           Case{"3 \n", "bare LF"},
           Case{"0\r\nX: y\n", "bare LF"},
           Case{"3g\r\n", "unexpected byte"},
           Case{"1 2\r\n", "unexpected byte after a chunk size"},
       }) {
    auto body = decode(BodyDecoder::chunked(), c.wire, 1);
    ASSERT_FALSE(body.ok()) << c.wire;
    EXPECT_EQ(body.error().code, ErrorCode::kCorrupt) << c.wire;
    EXPECT_NE(body.error().message.find(c.says), std::string::npos)
        << c.wire << ": " << body.error().message;
  }
}

TEST(BodyDecoder, SizesMayHaveLeadingZerosWhitespaceAndExtensions) {
  auto body =
      decode(BodyDecoder::chunked(), "00000000000000000003 \t;ext=1\r\nabc\r\n0\r\n\r\n", 1);
  ASSERT_TRUE(body.ok()) << body.error().message;
  EXPECT_EQ(*body, "abc");
}

TEST(BodyDecoder, AnErrorIsFinal) {
  BodyDecoder decoder = BodyDecoder::chunked();
  std::string body;
  ASSERT_FALSE(decoder.feed("z", body).ok());
  EXPECT_FALSE(decoder.feed("3\r\nabc\r\n0\r\n\r\n", body).ok());
  EXPECT_FALSE(decoder.done());
  EXPECT_FALSE(decoder.at_close().ok());
}

TEST(BodyDecoder, LongSizeLinesAreRefused) {
  const std::string wire =
      "5;" + std::string(BodyDecoder::kMaxLine + 1, 'e') + "\r\nhello\r\n0\r\n\r\n";
  auto body = decode(BodyDecoder::chunked(), wire, 64);
  ASSERT_FALSE(body.ok());
  EXPECT_NE(body.error().message.find("extensions too long"), std::string::npos);
}

TEST(BodyDecoder, ContentLengthBodiesEndAtTheirLength) {
  BodyDecoder decoder = BodyDecoder::length(5);
  std::string body;
  auto used = decoder.feed("hel", body);
  ASSERT_TRUE(used.ok());
  EXPECT_FALSE(decoder.done());
  used = decoder.feed("lo, more", body);
  ASSERT_TRUE(used.ok());
  EXPECT_EQ(*used, 2u);
  EXPECT_TRUE(decoder.done());
  EXPECT_EQ(body, "hello");
  EXPECT_TRUE(BodyDecoder::length(0).done());
  EXPECT_FALSE(BodyDecoder::length(3).at_close().ok());  // cut short
}

TEST(BodyDecoder, CloseDelimitedBodiesEndAtTheClose) {
  BodyDecoder decoder = BodyDecoder::until_close();
  std::string body;
  ASSERT_TRUE(decoder.feed("data: {}\n\n", body).ok());
  EXPECT_FALSE(decoder.done());
  EXPECT_TRUE(decoder.at_close().ok());
  EXPECT_TRUE(decoder.done());
  EXPECT_EQ(body, "data: {}\n\n");
  // A chunked body cut before its last chunk is not complete.
  BodyDecoder chunked = BodyDecoder::chunked();
  ASSERT_TRUE(chunked.feed("3\r\nabc\r\n", body).ok());
  auto closed = chunked.at_close();
  ASSERT_FALSE(closed.ok());
  EXPECT_NE(closed.error().message.find("before the body's end"), std::string::npos);
}

}  // namespace
}  // namespace loadstar::http
