#include "kube/leader.h"

#include <ctime>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace loadstar::kube {

using SysClock = std::chrono::system_clock;

std::string micro_time(SysClock::time_point t) {
  const auto us = std::chrono::duration_cast<std::chrono::microseconds>(t.time_since_epoch());
  const std::time_t secs = static_cast<std::time_t>(us.count() / 1000000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z", tm.tm_year + 1900, tm.tm_mon + 1,
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, us.count() % 1000000);
}

std::optional<SysClock::time_point> parse_micro_time(const std::string& text) {
  std::tm tm{};
  int year = 0, mon = 0, day = 0, hour = 0, min = 0, sec = 0, consumed = 0;
  if (std::sscanf(text.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d%n", &year, &mon, &day, &hour, &min, &sec,
                  &consumed) != 6)
    return std::nullopt;
  tm.tm_year = year - 1900;
  tm.tm_mon = mon - 1;
  tm.tm_mday = day;
  tm.tm_hour = hour;
  tm.tm_min = min;
  tm.tm_sec = sec;
  int64_t micros = 0;
  size_t i = static_cast<size_t>(consumed);
  if (i < text.size() && text[i] == '.') {
    int digits = 0;
    for (++i; i < text.size() && std::isdigit(static_cast<unsigned char>(text[i])); ++i)
      if (digits < 6) {
        micros = micros * 10 + (text[i] - '0');
        ++digits;
      }
    for (; digits < 6; ++digits) micros *= 10;
  }
  if (i >= text.size() || text[i] != 'Z') return std::nullopt;
  return SysClock::from_time_t(timegm(&tm)) + std::chrono::microseconds(micros);
}

LeaseRecord lease_record(const json& lease) {
  LeaseRecord r;
  const json spec = lease.value("spec", json::object());
  r.holder = spec.value("holderIdentity", "");
  r.lease_duration_s = spec.value("leaseDurationSeconds", 0);
  r.transitions = spec.value("leaseTransitions", 0u);
  if (spec.contains("renewTime") && spec["renewTime"].is_string())
    r.renew_time = parse_micro_time(spec["renewTime"].get<std::string>());
  return r;
}

bool same_record(const LeaseRecord& a, const LeaseRecord& b) {
  return a.holder == b.holder && a.renew_time == b.renew_time && a.transitions == b.transitions &&
         a.lease_duration_s == b.lease_duration_s;
}

bool may_acquire(const LeaseRecord& record, const std::string& identity,
                 std::chrono::steady_clock::time_point observed_at,
                 std::chrono::steady_clock::time_point now) {
  if (record.holder.empty() || record.holder == identity || !record.renew_time) return true;
  return now > observed_at +
                   std::chrono::milliseconds(static_cast<int64_t>(record.lease_duration_s * 1000));
}

LeaderElector::~LeaderElector() {
  stopping_ = true;
  if (renewer_.joinable()) renewer_.join();
}

bool LeaderElector::try_acquire_or_renew() {
  const std::string path =
      collection_path("coordination.k8s.io/v1", options_.namespace_name, "leases") + "/" +
      options_.lease_name;
  const auto now = SysClock::now();
  auto lease = client_.get(path);
  if (!lease.ok() && lease.error().code == ErrorCode::kNotFound) {
    json created = {
        {"apiVersion", "coordination.k8s.io/v1"},
        {"kind", "Lease"},
        {"metadata", {{"name", options_.lease_name}, {"namespace", options_.namespace_name}}},
        {"spec",
         {{"holderIdentity", options_.identity},
          {"leaseDurationSeconds", static_cast<int>(options_.lease_duration_s)},
          {"acquireTime", micro_time(now)},
          {"renewTime", micro_time(now)},
          {"leaseTransitions", 0}}}};
    auto r = client_.create(
        collection_path("coordination.k8s.io/v1", options_.namespace_name, "leases"), created);
    return r.ok();  // 409: another candidate created it first
  }
  if (!lease.ok()) {
    spdlog::warn("leader election: {}", lease.error().message);
    return false;
  }
  const LeaseRecord record = lease_record(*lease);
  const auto seen = std::chrono::steady_clock::now();
  if (observed_at_ == std::chrono::steady_clock::time_point{} || !same_record(record, observed_)) {
    observed_ = record;
    observed_at_ = seen;
  }
  if (!may_acquire(record, options_.identity, observed_at_, seen)) return false;
  json updated = *lease;
  json& spec = updated["spec"];
  if (record.holder != options_.identity) {
    spec["acquireTime"] = micro_time(now);
    spec["leaseTransitions"] = record.transitions + 1;
    spdlog::info("leader election: taking lease {} from '{}'", options_.lease_name, record.holder);
  }
  spec["holderIdentity"] = options_.identity;
  spec["leaseDurationSeconds"] = static_cast<int>(options_.lease_duration_s);
  spec["renewTime"] = micro_time(now);
  auto r = client_.replace(path, updated);  // 409 when someone wrote in between
  return r.ok();
}

bool LeaderElector::acquire(const std::atomic<bool>& stop) {
  while (!stop.load()) {
    if (try_acquire_or_renew()) {
      spdlog::info("leader election: '{}' leads ({})", options_.identity, options_.lease_name);
      return true;
    }
    std::this_thread::sleep_for(
        std::chrono::milliseconds(static_cast<int64_t>(options_.retry_interval_s * 1000)));
  }
  return false;
}

void LeaderElector::keep_renewing(std::function<void()> on_lost) {
  renewer_ = std::thread([this, on_lost = std::move(on_lost)] {
    auto last_renewed = std::chrono::steady_clock::now();
    while (!stopping_) {
      const auto deadline =
          std::chrono::steady_clock::now() +
          std::chrono::milliseconds(static_cast<int64_t>(options_.renew_interval_s * 1000));
      while (!stopping_ && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      if (stopping_) return;
      if (try_acquire_or_renew()) {
        last_renewed = std::chrono::steady_clock::now();
        continue;
      }
      // Another candidate may take it once it has seen our record unchanged
      // for a lease; stop well before (client-go's renew deadline), or at
      // once if someone else already holds it.
      const bool taken = !observed_.holder.empty() && observed_.holder != options_.identity;
      if (taken || std::chrono::steady_clock::now() - last_renewed >
                       std::chrono::milliseconds(
                           static_cast<int64_t>(options_.lease_duration_s * 1000 * 2 / 3))) {
        spdlog::error("leader election: lease {} lost{}", options_.lease_name,
                      taken ? fmt::format(" to '{}'", observed_.holder) : "");
        on_lost();
        return;
      }
    }
  });
}

void LeaderElector::release() {
  stopping_ = true;
  if (renewer_.joinable()) renewer_.join();
  const std::string path =
      collection_path("coordination.k8s.io/v1", options_.namespace_name, "leases") + "/" +
      options_.lease_name;
  auto lease = client_.get(path);
  if (!lease.ok() || lease_record(*lease).holder != options_.identity) return;
  json updated = *lease;
  updated["spec"]["holderIdentity"] = "";
  updated["spec"].erase("renewTime");
  (void)client_.replace(path, updated);
}

}  // namespace loadstar::kube
