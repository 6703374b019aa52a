#include "common/metrics_text.h"

#include <limits>

#include <prometheus/metric_family.h>
#include <prometheus/text_serializer.h>

namespace loadstar {

MetricsText::Family& MetricsText::Family::add(double value, Labels labels) {
  samples_.push_back({std::move(labels), value, {}});
  return *this;
}

MetricsText::Family& MetricsText::Family::add(const Histogram& histogram, Labels labels) {
  samples_.push_back({std::move(labels), 0, histogram});
  return *this;
}

MetricsText::Family& MetricsText::counter(std::string name, std::string help) {
  return families_.emplace_back(Family(std::move(name), std::move(help), Type::kCounter));
}

MetricsText::Family& MetricsText::gauge(std::string name, std::string help) {
  return families_.emplace_back(Family(std::move(name), std::move(help), Type::kGauge));
}

MetricsText::Family& MetricsText::histogram(std::string name, std::string help) {
  return families_.emplace_back(Family(std::move(name), std::move(help), Type::kHistogram));
}

std::string MetricsText::str() const {
  using prometheus::ClientMetric;
  using prometheus::MetricType;
  std::vector<prometheus::MetricFamily> out;
  out.reserve(families_.size());
  for (const Family& f : families_) {
    const MetricType type = f.type_ == Type::kCounter ? MetricType::Counter
                            : f.type_ == Type::kGauge ? MetricType::Gauge
                                                      : MetricType::Histogram;
    prometheus::MetricFamily family{f.name_, f.help_, type, {}};
    for (const Family::Sample& s : f.samples_) {
      ClientMetric m;
      for (const auto& [name, value] : s.labels) m.label.push_back({name, value});
      switch (f.type_) {
        case Type::kCounter:
          m.counter.value = s.value;
          break;
        case Type::kGauge:
          m.gauge.value = s.value;
          break;
        case Type::kHistogram:
          m.histogram.sample_count = s.histogram.count;
          m.histogram.sample_sum = s.histogram.sum;
          for (size_t i = 0; i < s.histogram.bounds.size(); ++i)
            m.histogram.bucket.push_back(
                {i < s.histogram.cumulative.size() ? s.histogram.cumulative[i] : 0,
                 s.histogram.bounds[i]});
          m.histogram.bucket.push_back(
              {s.histogram.count, std::numeric_limits<double>::infinity()});
          break;
      }
      family.metric.push_back(std::move(m));
    }
    out.push_back(std::move(family));
  }
  return prometheus::TextSerializer().Serialize(out);
}

}  // namespace loadstar
