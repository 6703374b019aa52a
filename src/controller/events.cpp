#include "controller/events.h"

#include <fmt/chrono.h>
#include <fmt/format.h>

namespace loadstar::controller {

EventLog::EventLog(store::ResourceStore& store, const Clock& clock) : store_(store), clock_(clock) {
  for (store::Event& e : store_.past_events()) recent_.push_back(std::move(e));
  while (recent_.size() > kMax) recent_.pop_front();
}

void EventLog::record(std::string_view kind, std::string_view service, const char* type,
                      std::string reason, std::string message) {
  const std::string time =
      fmt::format("{:%Y-%m-%dT%H:%M:%S}Z", std::chrono::floor<std::chrono::seconds>(clock_.wall()));
  // The same again, among the service's latest: counted.
  for (auto it = recent_.rbegin(); it != recent_.rend() && it - recent_.rbegin() < 20; ++it) {
    if (it->name != service || it->kind != kind) continue;
    if (it->reason == reason && it->message == message) {
      ++it->count;
      it->time = time;
      store_.record_event(*it);
      return;
    }
    break;  // only its very last one
  }
  store::Event e{time, std::string(kind), std::string(service),
                 type, std::move(reason), std::move(message)};
  store_.record_event(e);
  recent_.push_back(std::move(e));
  if (recent_.size() > kMax) recent_.pop_front();
}

std::vector<store::Event> EventLog::of(std::string_view service) const {
  std::vector<store::Event> out;
  for (const store::Event& e : recent_)
    if (service.empty() || e.name == service) out.push_back(e);
  return out;
}

}  // namespace loadstar::controller
