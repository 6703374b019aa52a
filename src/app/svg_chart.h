// A line chart as an SVG document, for the simulators' plots (no plotting
// library is packaged for C++; SVG is text any browser shows).
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace loadstar::app {

struct SvgChart {
  struct Series {
    std::string name;
    std::vector<std::pair<double, double>> points;
    bool dashed = false;
  };
  std::string title, x_label, y_label;
  double x_min = 0, x_max = 1, y_min = 0, y_max = 1;
  bool percent_x = true, percent_y = true;  // label ticks as percentages of 1
  std::vector<Series> series;

  std::string render() const;
};

}  // namespace loadstar::app
