// Requests waiting for their first token against a TTFT SLO. A request that
// has none when its SLO passes is a miss already, whatever comes later: it
// is counted then (Endpoint::ttft_overdue), so the autoscaler learns of a
// backlog while it is one, not when (or if) its requests are answered.
// Answers alone tell it late, and tell it nothing of requests a queue keeps
// back while newer ones are served.
//
// One per gateway worker, used on that worker's thread only: a request
// watches an Entry that lives in its own frame (linked into an intrusive
// list, so watching and settling cost no allocation and no lock), and the
// worker sweeps the list a few times a second.
#pragma once

#include <cstdint>

namespace loadstar::gateway {

struct Endpoint;

class FirstTokenDeadlines {
 public:
  class Entry {
   public:
    Entry() = default;
    Entry(const Entry&) = delete;
    Entry& operator=(const Entry&) = delete;
    ~Entry() { unlink(); }
    // The first token came (or the attempt ended): stops watching, and
    // says whether the request had been counted overdue.
    bool settle() {
      unlink();
      return overdue_;
    }
    // The request, which arrived at `arrived_ms`, was counted overdue
    // before it was sent (in the flow-control queue): watch() will not
    // count it again, and settle() says it was.
    void counted_overdue(int64_t arrived_ms) {
      unlink();
      overdue_ = true;
      arrived_ms_ = arrived_ms;
    }

   private:
    friend class FirstTokenDeadlines;
    void unlink();
    FirstTokenDeadlines* owner_ = nullptr;
    Entry* prev_ = nullptr;
    Entry* next_ = nullptr;
    Endpoint* endpoint_ = nullptr;
    int64_t arrived_ms_ = 0;
    int64_t deadline_ms_ = 0;
    bool overdue_ = false;
  };

  FirstTokenDeadlines() = default;
  FirstTokenDeadlines(const FirstTokenDeadlines&) = delete;
  FirstTokenDeadlines& operator=(const FirstTokenDeadlines&) = delete;
  ~FirstTokenDeadlines();

  // Watches `entry`: a request that arrived at `arrived_ms` (steady-clock
  // milliseconds) and was sent to `endpoint`, due a first token within
  // `slo_s`. Already overdue at `now_ms`: counted at once (but a request
  // counted before, sent again after a failed attempt, is not counted again).
  void watch(Entry& entry, Endpoint& endpoint, int64_t arrived_ms, double slo_s, int64_t now_ms);
  // Counts the entries whose deadline is past at `now_ms`; how many.
  uint32_t sweep(int64_t now_ms);
  uint32_t watching() const { return size_; }

 private:
  static void count_overdue(Entry& e);
  Entry* head_ = nullptr;
  uint32_t size_ = 0;
};

}  // namespace loadstar::gateway
