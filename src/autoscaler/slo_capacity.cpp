#include "autoscaler/slo_capacity.h"

#include <algorithm>
#include <cmath>

namespace loadstar::autoscaler {

double answers_over(double slo_s, const std::vector<double>& bounds,
                    const std::vector<uint64_t>& counts) {
  double over = 0;
  for (size_t b = 0; b < counts.size(); ++b) {
    const double lower = b == 0 ? 0 : bounds[b - 1];
    if (b >= bounds.size() || lower >= slo_s) {  // wholly above (or the +Inf bucket)
      over += static_cast<double>(counts[b]);
    } else if (bounds[b] > slo_s) {  // holds the SLO
      over += static_cast<double>(counts[b]) * (bounds[b] - slo_s) / (bounds[b] - lower);
    }
  }
  return over;
}

SloCapacity::SloCapacity(SloCapacityOptions options) : o_(options) {}

int SloCapacity::bin(double per_replica) {
  if (!(per_replica > 1.0 / 16)) return 0;
  const int b = static_cast<int>(std::floor((std::log2(per_replica) + 4) * kPerDoubling));
  return std::clamp(b, 0, kBins - 1);
}

void SloCapacity::learn(double now, const std::vector<double>& bounds,
                        const std::vector<uint64_t>& counts, Overdue overdue, double in_flight,
                        uint32_t ready, bool settled) {
  if (last_learned_ && now > *last_learned_) {
    const double keep = std::exp2(-(now - *last_learned_) / o_.memory_s);
    for (int b = 0; b < kBins; ++b) answered_[b] *= keep, missed_[b] *= keep;
    measured_answers_ *= keep, measured_missed_ *= keep, measured_expected_ *= keep;
  }
  last_learned_ = now;
  if (counts.size() != bounds.size() + 1) return;
  // The answers of overdue requests were counted at their deadline.
  const auto early = static_cast<double>(overdue.counted);
  const auto again = static_cast<double>(overdue.answered);
  double total = 0;
  for (uint64_t c : counts) total += static_cast<double>(c);
  total = std::max(0.0, total - again) + early;
  if (total == 0) return;
  const double over =
      std::clamp(answers_over(o_.slo_s, bounds, counts) - again + early, 0.0, total);
  // Against what the count in force expected: every answer, settled or not
  // (the misses of scaling are the unsettled passes' and the onsets').
  if (expected_now_) {
    measured_answers_ += total;
    measured_missed_ += over;
    measured_expected_ += total * *expected_now_;
  }
  if (!settled || ready == 0) return;
  const int b = bin(in_flight / ready);
  answered_[b] += total;
  missed_[b] += over;
  answers_ += static_cast<uint64_t>(total);
  fitted_ = false;
}

void SloCapacity::fit() const {
  if (fitted_) return;
  fitted_ = true;
  // Pool adjacent violators over the bins with answers: a non-decreasing
  // share of misses, each bin weighted by its answers.
  struct Block {
    int first, last;
    double missed, answered;
  };
  std::vector<Block> blocks;
  for (int b = 0; b < kBins; ++b) {
    if (!(answered_[b] > 1e-9)) continue;
    blocks.push_back({b, b, missed_[b], answered_[b]});
    while (blocks.size() > 1) {
      Block& prev = blocks[blocks.size() - 2];
      const Block& cur = blocks.back();
      if (prev.missed / prev.answered <= cur.missed / cur.answered) break;
      prev.last = cur.last;
      prev.missed += cur.missed;
      prev.answered += cur.answered;
      blocks.pop_back();
    }
  }
  curve_.fill(-1);
  highest_seen_ = blocks.empty() ? -1 : blocks.back().last;
  // Seen bins read as their block's share. Unseen bins between seen ones
  // read as the line between their seen neighbours (so the levels between
  // where the service has been are tried a step at a time); below the
  // lowest, the lowest's share falling to none at half its level
  // (optimistic: more replicas are the safe way to err, and trying them
  // shows what they do).
  std::vector<std::pair<int, double>> seen;  // (bin, share) of every seen bin
  for (const Block& block : blocks)
    for (int b = block.first; b <= block.last; ++b)
      if (answered_[b] > 1e-9) seen.emplace_back(b, block.missed / block.answered);
  size_t k = 0;
  for (int b = 0; b <= highest_seen_; ++b) {
    while (k < seen.size() && seen[k].first < b) ++k;
    if (seen[k].first == b) {
      curve_[b] = seen[k].second;
    } else if (k == 0) {
      curve_[b] =
          seen[0].second * std::max(0.0, 1 + static_cast<double>(b - seen[0].first) / kPerDoubling);
    } else {
      // As the level below over a quarter of the gap (at most a quarter
      // above it: a step down tries it), then the line to the level above.
      const auto& [lo_bin, lo] = seen[k - 1];
      const auto& [hi_bin, hi] = seen[k];
      const int flat_to = lo_bin + std::clamp((hi_bin - lo_bin) / 4, 1, kQuarter);
      curve_[b] = b <= flat_to
                      ? lo
                      : lo + (hi - lo) * (b - flat_to) / static_cast<double>(hi_bin - flat_to);
    }
  }
  // The floor: the share missed by replicas holding at most one request
  // each, where nothing queues (raw, not fitted; none without evidence).
  double low_missed = 0, low_answered = 0;
  for (int b = 0; b <= bin(1); ++b) low_missed += missed_[b], low_answered += answered_[b];
  floor_ = low_answered >= kFloorAnswers ? low_missed / low_answered : 0;
}

std::optional<double> SloCapacity::miss_share(double per_replica) const {
  if (answers_ < o_.min_answers) return std::nullopt;
  fit();
  if (highest_seen_ < 0) return std::nullopt;
  const int b = bin(per_replica);
  if (b <= highest_seen_) return curve_[b];
  // Untried: as the highest level seen up to a quarter above it (one
  // replica fewer than five or more), then up to every answer missed at
  // twice that.
  const double last = curve_[highest_seen_];
  const double seen =
      std::exp2(static_cast<double>(highest_seen_ + 1 + kQuarter) / kPerDoubling - 4);
  return last + (1 - last) * std::clamp(std::log2(per_replica / seen), 0.0, 1.0);
}

SloCapacity::Count SloCapacity::replicas_for(const std::vector<LoadSample>& loads,
                                             uint32_t max) const {
  Count out;
  if (loads.empty() || max == 0) return out;
  double peak = 0, mean = 0;
  for (const LoadSample& l : loads) {
    peak = std::max(peak, l.in_flight);
    mean += l.in_flight;
  }
  mean /= static_cast<double>(loads.size());
  if (!(peak > 0)) return out;  // nothing in flight: no replica needed for it
  if (!miss_share(1)) {
    out.replicas =
        std::clamp<uint32_t>(static_cast<uint32_t>(std::ceil(mean / o_.initial - 1e-9)), 1, max);
    return out;
  }
  out.learned = true;
  out.allowed = allowed();
  out.margin = o_.aim * (1 - o_.attainment) - (out.allowed - floor_);
  // The share falls as replicas are added: the fewest within the allowed.
  uint32_t lo = 1, hi = max;
  while (lo < hi) {
    const uint32_t mid = lo + (hi - lo) / 2;
    if (expected(loads, mid) <= out.allowed)
      hi = mid;
    else
      lo = mid + 1;
  }
  out.replicas = hi;
  out.expected_misses = expected(loads, hi);
  return out;
}

double SloCapacity::expected(const std::vector<LoadSample>& loads, uint32_t replicas) const {
  if (loads.empty() || replicas == 0 || !miss_share(1)) return 0;
  double weight = 0;
  for (const LoadSample& l : loads) weight += l.weight;
  double sum = 0;
  for (const LoadSample& l : loads)
    sum += (weight > 0 ? l.weight : 1) * *miss_share(l.in_flight / replicas);
  return sum / (weight > 0 ? weight : static_cast<double>(loads.size()));
}

double SloCapacity::unforeseen() const {
  const double prior = o_.prior_unforeseen * (1 - o_.attainment);
  return (measured_missed_ - measured_expected_ + prior * o_.prior_answers) /
         (measured_answers_ + o_.prior_answers);
}

double SloCapacity::allowed() const {
  fit();  // the floor
  const double budget = 1 - o_.attainment;
  return floor_ + std::clamp(o_.aim * budget - unforeseen(), o_.least * budget, o_.aim * budget);
}

void SloCapacity::arrivals(double now, uint64_t arrived_total, double window_s) {
  if (last_ && arrived_total < last_->second) {  // a counter that started again
    rates_.clear();
    last_.reset();
  }
  if (last_ && now <= last_->first) return;
  if (last_)
    rates_.emplace_back((now + last_->first) / 2,
                        static_cast<double>(arrived_total - last_->second) / (now - last_->first));
  last_.emplace(now, arrived_total);
  while (!rates_.empty() && rates_.front().first < now - window_s) rates_.pop_front();
  trend_ = 1;
  // The arrival rate's least-squares line over the window: its level at the
  // window's centre is what the window's in-flight average reflects; its
  // level a lead time from now is what a replica asked for now will meet.
  const size_t n = rates_.size();
  if (n < 10 || now - rates_.front().first < window_s * 0.9) return;  // too little history
  double mean_t = 0, mean_r = 0;
  for (const auto& [t, r] : rates_) mean_t += t, mean_r += r;
  mean_t /= static_cast<double>(n);
  mean_r /= static_cast<double>(n);
  if (!(mean_r > 0)) return;
  double stt = 0, str = 0;
  for (const auto& [t, r] : rates_)
    stt += (t - mean_t) * (t - mean_t), str += (t - mean_t) * (r - mean_r);
  if (!(stt > 0)) return;
  const double slope = str / stt;
  double residual = 0;
  for (const auto& [t, r] : rates_) {
    const double e = r - mean_r - slope * (t - mean_t);
    residual += e * e;
  }
  // A slope within three standard errors of none (from the residuals:
  // bursty arrivals are noisier than Poisson ones, and a minute's rates are
  // not independent) is no trend: noise would buy replicas.
  const double se = std::sqrt(residual / static_cast<double>(n - 2) / stt);
  if (std::abs(slope) < 3 * se) return;
  const double ahead = mean_r + slope * (now + o_.lead_time_s - mean_t);
  trend_ = std::clamp(ahead / mean_r, 0.75, 1.5);
}

}  // namespace loadstar::autoscaler
