// Prometheus text exposition built family by family — the one helper every
// component's /metrics uses for metrics it computes on demand (a registry
// of live metric objects, as engine-sim keeps, is the other way).
// prometheus-cpp serializes; its headers stay out of this one.
//
//   MetricsText text;
//   auto& bytes = text.counter("x_bytes_total", "Bytes fetched, by source");
//   bytes.add(n, {{"source", "peer"}});
//   return text.str();
#pragma once

#include <cstdint>
#include <deque>
#include <string>
#include <utility>
#include <vector>

namespace loadstar {

class MetricsText {
 public:
  using Labels = std::vector<std::pair<std::string, std::string>>;
  // Cumulative bucket counts, one per bound (the +Inf bucket is `count`).
  struct Histogram {
    std::vector<double> bounds;
    std::vector<uint64_t> cumulative;
    uint64_t count = 0;
    double sum = 0;
  };
  enum class Type { kCounter, kGauge, kHistogram };

  class Family {
   public:
    Family& add(double value, Labels labels = {});
    Family& add(const Histogram& histogram, Labels labels = {});

   private:
    friend class MetricsText;
    Family(std::string name, std::string help, Type type)
        : name_(std::move(name)), help_(std::move(help)), type_(type) {}
    struct Sample {
      Labels labels;
      double value = 0;
      Histogram histogram;
    };
    std::string name_, help_;
    Type type_;
    std::vector<Sample> samples_;
  };

  // A new family; it is written in the order families were begun. The
  // reference stays valid as long as this object.
  Family& counter(std::string name, std::string help);
  Family& gauge(std::string name, std::string help);
  Family& histogram(std::string name, std::string help);

  std::string str() const;

 private:
  std::deque<Family> families_;
};

}  // namespace loadstar
