#include "app/svg_chart.h"

#include <algorithm>
#include <cmath>

#include <fmt/core.h>

namespace loadstar::app {

namespace {

std::string escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (c == '<')
      out += "&lt;";
    else if (c == '>')
      out += "&gt;";
    else if (c == '&')
      out += "&amp;";
    else
      out += c;
  }
  return out;
}

// A round tick spacing giving about `ticks` intervals over `span`.
double tick_step(double span, int ticks) {
  const double raw = span / ticks;
  const double magnitude = std::pow(10, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (raw <= m * magnitude) return m * magnitude;
  return 10 * magnitude;
}

}  // namespace

std::string SvgChart::render() const {
  constexpr double kWidth = 820, kHeight = 500, kLeft = 70, kRight = 170, kTop = 40, kBottom = 55;
  constexpr const char* kColors[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728",
                                     "#9467bd", "#8c564b", "#e377c2", "#17becf"};
  const double plot_w = kWidth - kLeft - kRight, plot_h = kHeight - kTop - kBottom;
  const double x_span = std::max(1e-12, x_max - x_min), y_span = std::max(1e-12, y_max - y_min);
  auto px = [&](double x) { return kLeft + (x - x_min) / x_span * plot_w; };
  auto py = [&](double y) { return kTop + plot_h - (y - y_min) / y_span * plot_h; };
  auto label = [&](double v, double step, bool percent) {
    if (!percent) return fmt::format("{:g}", v);
    return step * 100 >= 1 ? fmt::format("{:.0f}%", v * 100) : fmt::format("{:.1f}%", v * 100);
  };
  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" "
      "fill=\"white\"/>\n<text x=\"{}\" y=\"22\" font-size=\"15\">{}</text>\n",
      kWidth, kHeight, kLeft, escape(title));
  const double xs = tick_step(x_span, 8), ys = tick_step(y_span, 8);
  for (double x = std::ceil(x_min / xs) * xs; x <= x_max + 1e-9; x += xs)
    svg += fmt::format(
        "<line x1=\"{0:.1f}\" y1=\"{1}\" x2=\"{0:.1f}\" y2=\"{2}\" stroke=\"#ddd\"/>"
        "<text x=\"{0:.1f}\" y=\"{3}\" text-anchor=\"middle\">{4}</text>\n",
        px(x), kTop, kTop + plot_h, kTop + plot_h + 18, label(x, xs, percent_x));
  for (double y = std::ceil(y_min / ys) * ys; y <= y_max + 1e-9; y += ys)
    svg += fmt::format(
        "<line x1=\"{0}\" y1=\"{1:.1f}\" x2=\"{2}\" y2=\"{1:.1f}\" stroke=\"#ddd\"/>"
        "<text x=\"{3}\" y=\"{4:.1f}\" text-anchor=\"end\">{5}</text>\n",
        kLeft, py(y), kLeft + plot_w, kLeft - 6, py(y) + 4, label(y, ys, percent_y));
  svg += fmt::format(
      "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#333\"/>\n"
      "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n"
      "<text transform=\"translate(18,{}) rotate(-90)\" text-anchor=\"middle\">{}</text>\n",
      kLeft, kTop, plot_w, plot_h, kLeft + plot_w / 2, kHeight - 14, escape(x_label),
      kTop + plot_h / 2, escape(y_label));
  for (size_t i = 0; i < series.size(); ++i) {
    const Series& s = series[i];
    // A dashed series (a reference line) takes the colour of the one before.
    const size_t solid = s.dashed && i > 0 ? i - 1 : i;
    size_t colour = 0;
    for (size_t j = 0; j < solid; ++j) colour += !series[j].dashed;
    const char* color = kColors[colour % std::size(kColors)];
    std::string path;
    for (const auto& [x, y] : s.points) {
      if (x < x_min - 1e-9 || x > x_max + 1e-9) continue;
      path += fmt::format("{}{:.1f},{:.1f}", path.empty() ? "M" : " L", px(x),
                          py(std::clamp(y, y_min, y_max)));
    }
    svg += fmt::format("<path d=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.6\"{}/>\n",
                       path, color, s.dashed ? " stroke-dasharray=\"6,4\"" : "");
    const double ly = kTop + 14 + 18 * i;
    svg += fmt::format(
        "<line x1=\"{0}\" y1=\"{1:.1f}\" x2=\"{2}\" y2=\"{1:.1f}\" stroke=\"{3}\" "
        "stroke-width=\"2\"{4}/><text x=\"{5}\" y=\"{6:.1f}\">{7}</text>\n",
        kLeft + plot_w + 12, ly, kLeft + plot_w + 36, color,
        s.dashed ? " stroke-dasharray=\"6,4\"" : "", kLeft + plot_w + 42, ly + 4, escape(s.name));
  }
  svg += "</svg>\n";
  return svg;
}

}  // namespace loadstar::app
