#include "gateway/first_token_deadlines.h"

#include <cmath>

#include "gateway/routing_table.h"

namespace loadstar::gateway {

void FirstTokenDeadlines::Entry::unlink() {
  if (!owner_) return;
  if (prev_)
    prev_->next_ = next_;
  else
    owner_->head_ = next_;
  if (next_) next_->prev_ = prev_;
  --owner_->size_;
  owner_ = nullptr;
  prev_ = next_ = nullptr;
}

FirstTokenDeadlines::~FirstTokenDeadlines() {
  while (head_) head_->unlink();
}

void FirstTokenDeadlines::count_overdue(Entry& e) {
  e.overdue_ = true;
  // As ttft_counts: only requests that arrived since the serving set changed.
  if (e.endpoint_->counts_since_epoch(e.arrived_ms_))
    e.endpoint_->ttft_overdue.fetch_add(1, std::memory_order_relaxed);
}

void FirstTokenDeadlines::watch(Entry& entry, Endpoint& endpoint, int64_t arrived_ms, double slo_s,
                                int64_t now_ms) {
  entry.unlink();
  if (entry.overdue_ && entry.arrived_ms_ == arrived_ms) {
    // The same request again (a retry), already counted: not twice.
    entry.endpoint_ = &endpoint;
    return;
  }
  entry.endpoint_ = &endpoint;
  entry.arrived_ms_ = arrived_ms;
  entry.deadline_ms_ = arrived_ms + static_cast<int64_t>(std::llround(slo_s * 1000));
  entry.overdue_ = false;
  if (entry.deadline_ms_ <= now_ms) {  // a retry, or a long hold: late already
    count_overdue(entry);
    return;
  }
  entry.owner_ = this;
  entry.next_ = head_;
  if (head_) head_->prev_ = &entry;
  head_ = &entry;
  ++size_;
}

uint32_t FirstTokenDeadlines::sweep(int64_t now_ms) {
  uint32_t counted = 0;
  for (Entry* e = head_; e;) {
    Entry* next = e->next_;
    if (e->deadline_ms_ <= now_ms) {
      e->unlink();
      count_overdue(*e);
      ++counted;
    }
    e = next;
  }
  return counted;
}

}  // namespace loadstar::gateway
