// The node agent's source policy and the internal token: what may be
// fetched, from where, and who may ask.
#include <gtest/gtest.h>

#include "agent/agent_api.h"
#include "agent/source_policy.h"
#include "gateway/redis_address.h"
#include "http/bearer.h"

namespace loadstar {
namespace {

using agent::admit_fetch_address;
using agent::SourcePolicy;

TEST(SourcePolicy, MetadataAndLinkLocalAddressesAreNeverFetched) {
  for (const char* a :
       {"169.254.169.254", "169.254.0.1", "::ffff:169.254.169.254", "fd00:ec2::254",
        "100.100.100.200", "fe80::1", "0.0.0.0", "::", "224.0.0.1", "255.255.255.255", "ff02::1"}) {
    Status s = admit_fetch_address(a, true);
    EXPECT_FALSE(s.ok()) << a;
    if (!s.ok()) {
      EXPECT_EQ(s.error().code, ErrorCode::kPermissionDenied) << a;
    }
  }
  for (const char* a : {"10.0.0.5", "192.168.1.1", "172.16.0.1", "8.8.8.8", "2606:4700::1111",
                        "100.100.100.201", "169.253.1.1"})
    EXPECT_TRUE(admit_fetch_address(a, false).ok()) << a;
  EXPECT_NE(admit_fetch_address("169.254.169.254", true).error().message.find("metadata"),
            std::string::npos);
}

TEST(SourcePolicy, LoopbackOnlyWhenAllowed) {
  for (const char* a : {"127.0.0.1", "127.8.9.1", "::1", "::ffff:127.0.0.1"}) {
    EXPECT_TRUE(admit_fetch_address(a, true).ok()) << a;
    EXPECT_FALSE(admit_fetch_address(a, false).ok()) << a;
  }
  EXPECT_FALSE(admit_fetch_address("not-an-address", true).ok());
}

TEST(SourcePolicy, AnEmptyAllowListAdmitsEveryScheme) {
  SourcePolicy open;
  for (const char* uri : {"file:///models/x", "hf://org/name", "s3://b/p", "https://h/x"})
    EXPECT_TRUE(open.admit(uri).ok()) << uri;
}

TEST(SourcePolicy, AllowEntriesMatchAtBoundariesOnly) {
  auto policy = SourcePolicy::create(
      {"hf://meta-llama/", "s3://team-bucket", "https://models.example.com", "file:///srv/models"},
      false);
  ASSERT_TRUE(policy.ok()) << policy.error().message;
  for (const char* uri :
       {"hf://meta-llama/Llama-3.1-8B", "s3://team-bucket", "s3://team-bucket/llama/",
        "https://models.example.com/llama/", "https://models.example.com?x=1", "file:///srv/models",
        "file:///srv/models/llama"})
    EXPECT_TRUE(policy->admit(uri).ok()) << uri;
  for (const char* uri :
       {"hf://other/x", "s3://team-bucket-evil/x", "https://models.example.com.evil.net/x",
        "https://models.example.com:8443/x", "http://models.example.com/x",
        "file:///srv/models-other/x", "file:///srv/models/../../etc", "file:///etc/shadow"}) {
    Status s = policy->admit(uri);
    EXPECT_FALSE(s.ok()) << uri;
    if (!s.ok()) {
      EXPECT_EQ(s.error().code, ErrorCode::kPermissionDenied);
    }
  }
  // The message names the source without its query (presigned URLs carry secrets).
  Status s = policy->admit("https://other.example.com/x?X-Amz-Signature=secret");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().message.find("secret"), std::string::npos) << s.error().message;
}

TEST(SourcePolicy, BadEntriesAreRefusedByName) {
  auto bad = SourcePolicy::create({"ftp://x"}, true);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("'ftp://x'"), std::string::npos);
  EXPECT_FALSE(SourcePolicy::create({"file://relative/dir"}, true).ok());
  EXPECT_FALSE(SourcePolicy::create({"huggingface"}, true).ok());
}

http::Request with_authorization(std::string value) {
  http::Request r;
  r.headers.push_back({"Authorization", std::move(value)});
  return r;
}

TEST(BearerToken, AdmitsOnlyTheExactToken) {
  auto token = http::BearerToken::from_string("  0123456789abcdef0123\n", "test");
  ASSERT_TRUE(token.ok());
  EXPECT_TRUE(token->admits(with_authorization("Bearer 0123456789abcdef0123")));
  EXPECT_TRUE(token->admits(with_authorization("bearer 0123456789abcdef0123")));
  EXPECT_FALSE(token->admits(with_authorization("Bearer 0123456789abcdef012")));
  EXPECT_FALSE(token->admits(with_authorization("Bearer 0123456789abcdef01234")));
  EXPECT_FALSE(token->admits(with_authorization("Basic 0123456789abcdef0123")));
  EXPECT_FALSE(token->admits(with_authorization("0123456789abcdef0123")));
  EXPECT_FALSE(token->admits(http::Request{}));
  EXPECT_EQ(token->header().value, "Bearer 0123456789abcdef0123");
}

TEST(BearerToken, ShortOrOddTokensAreRefused) {
  EXPECT_FALSE(http::BearerToken::from_string("short", "test").ok());
  EXPECT_FALSE(http::BearerToken::from_string("0123456789 abcdef0123", "test").ok());
  EXPECT_FALSE(http::BearerToken::from_file("/nonexistent/token").ok());
  const std::string a = http::BearerToken::generate(), b = http::BearerToken::generate();
  EXPECT_EQ(a.size(), 64u);
  EXPECT_NE(a, b);
  EXPECT_TRUE(http::BearerToken::from_string(a, "generated").ok());
}

TEST(BearerToken, ANamespaceTokenNamesItsNamespaceAndStagesOnlyItsModels) {
  auto root = http::BearerToken::from_string("0123456789abcdef0123", "test");
  auto other = http::BearerToken::from_string("fedcba9876543210fedc", "test");
  ASSERT_TRUE(root.ok() && other.ok());
  const http::BearerToken team_a = root->for_namespace("team-a");
  EXPECT_TRUE(team_a.value().starts_with("ns.team-a."));
  EXPECT_EQ(team_a.value(), root->for_namespace("team-a").value());  // derived, not random
  EXPECT_NE(team_a.value(), root->for_namespace("team-b").value());
  EXPECT_EQ(team_a.value().find("0123456789abcdef0123"), std::string::npos);
  // The root token tells the namespace; the namespace token is no root token.
  EXPECT_EQ(root->namespace_of(with_authorization(team_a.header().value)), "team-a");
  EXPECT_FALSE(root->admits(with_authorization(team_a.header().value)));
  // Another root's token, a renamed namespace, a cut MAC: refused.
  EXPECT_FALSE(other->namespace_of(with_authorization(team_a.header().value)));
  std::string renamed = team_a.header().value;
  renamed.replace(renamed.find("team-a"), 6, "team-b");
  EXPECT_FALSE(root->namespace_of(with_authorization(renamed)));
  EXPECT_FALSE(root->namespace_of(with_authorization(team_a.header().value.substr(0, 40))));
  EXPECT_FALSE(root->namespace_of(with_authorization("Bearer ns..")));
  EXPECT_FALSE(root->namespace_of(with_authorization(root->header().value)));

  // What the agent lets it do: stage and follow team-a_* models, nothing else.
  auto request = [](std::string method, std::string body) {
    http::Request r;
    r.method = std::move(method);
    r.body = std::move(body);
    return r;
  };
  EXPECT_TRUE(agent::namespace_may(
      "team-a", request("POST", R"({"model":"team-a_llama","source":"x"})"), "/v1/stage"));
  EXPECT_TRUE(agent::namespace_may("team-a", request("GET", ""), "/v1/models/team-a_llama"));
  EXPECT_FALSE(
      agent::namespace_may("team-a", request("POST", R"({"model":"team-b_llama"})"), "/v1/stage"));
  EXPECT_FALSE(
      agent::namespace_may("team-a", request("POST", R"({"model":"llama"})"), "/v1/stage"));
  EXPECT_FALSE(
      agent::namespace_may("team-a", request("POST", R"({"model":"team-ab_x"})"), "/v1/stage"));
  EXPECT_FALSE(agent::namespace_may("team-a", request("POST", "not json"), "/v1/stage"));
  EXPECT_FALSE(agent::namespace_may("team-a", request("DELETE", ""), "/v1/models/team-a_llama"));
  EXPECT_FALSE(agent::namespace_may("team-a", request("GET", ""), "/v1/models"));
  EXPECT_FALSE(agent::namespace_may("team-a", request("GET", ""), "/v1/blobs/abc"));
  EXPECT_FALSE(agent::namespace_may(
      "team-a", request("POST", R"({"model":"team-a_llama","source":"x"})"), "/v1/resolve"));
  EXPECT_FALSE(agent::namespace_may("team-a", request("GET", ""), "/metrics"));
}

TEST(Request, LoopbackCallers) {
  http::Request r;
  for (const char* a : {"127.0.0.1", "127.3.4.5", "::1", "::ffff:127.0.0.1"}) {
    r.remote_address = a;
    EXPECT_TRUE(r.from_loopback()) << a;
  }
  for (const char* a : {"10.0.0.1", "", "::ffff:10.0.0.1", "1.127.0.0"}) {
    r.remote_address = a;
    EXPECT_FALSE(r.from_loopback()) << a;
  }
}

}  // namespace
}  // namespace loadstar

namespace loadstar {
namespace {

TEST(ConnectionBudget, HalfOfWhatIsLeftAfterAReserve) {
  // Two descriptors per proxied stream; a reserve for files, pools, listeners.
  EXPECT_EQ(http::connection_budget(1024), (1024u - 128) / 2);
  EXPECT_EQ(http::connection_budget(20000), (20000u - 1024) / 2);
  EXPECT_EQ(http::connection_budget(1048576), (1048576u - 1024) / 2);
  EXPECT_EQ(http::connection_budget(64), (64u - 32) / 2);
  EXPECT_EQ(http::connection_budget(10), 1u);
}

}  // namespace
}  // namespace loadstar

namespace loadstar {
namespace {

TEST(RedisUrl, HostPortAndPassword) {
  auto a = gateway::parse_redis_url("redis://10.0.0.5:6380");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->host, "10.0.0.5");
  EXPECT_EQ(a->port, 6380);
  EXPECT_EQ(a->password, "");
  auto b = gateway::parse_redis_url("redis://:s3cret@redis.loadstar-system/0");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->host, "redis.loadstar-system");
  EXPECT_EQ(b->port, 6379);
  EXPECT_EQ(b->password, "s3cret");
  for (const char* bad : {"http://x", "redis://", "redis://:pw@", "redis://h:0", "redis://h:99999",
                          "redis://:s3cret@h:x"}) {
    auto r = gateway::parse_redis_url(bad);
    EXPECT_FALSE(r.ok()) << bad;
    if (!r.ok()) {
      EXPECT_EQ(r.error().message.find("s3cret"), std::string::npos);
    }
  }
}

}  // namespace
}  // namespace loadstar
