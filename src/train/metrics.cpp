#include "train/metrics.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "core/error.h"
#include "io/json_input.h"

namespace g4::train {

namespace fs = std::filesystem;

MetricsLog::MetricsLog(const std::string& path, int64_t resume_step) : path_(path) {
  fs::create_directories(fs::path(path).parent_path());
  if (!fs::exists(path)) return;
  // Keep what happened up to the checkpoint we resume from; a fresh run (resume_step 0)
  // starts a new log.
  std::vector<std::string> keep;
  if (resume_step > 0) {
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
      if (line.empty()) continue;
      try {
        if (io::json_int(io::parse_json(line, path, io::kMaxJsonLineBytes), "step", path, 0) <= resume_step)
          keep.push_back(line);
      } catch (...) {
        // A line cut by a crash is dropped.
      }
    }
  }
  std::string text;
  for (const auto& l : keep) text += l + "\n";
  io::write_file_atomic(path, text);
}

void MetricsLog::write(const nlohmann::json& record) {
  std::ofstream out(path_, std::ios::app);
  G4_CHECK(out.good(), "cannot append to metrics log ", path_, ": ", std::strerror(errno));
  errno = 0;  // the stream's failed write(2) leaves its reason here
  out << record.dump() << "\n";
  out.flush();
  // A line cut here is dropped by the next --resume (above).
  G4_CHECK(out.good(), "writing to metrics log ", path_, " failed: ", std::strerror(errno != 0 ? errno : EIO));
}

std::vector<nlohmann::json> MetricsLog::read_all() const {
  std::vector<nlohmann::json> all;
  std::ifstream in(path_);
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) all.push_back(io::parse_json(line, path_, io::kMaxJsonLineBytes));
  return all;
}

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const long long t = static_cast<long long>(s + 0.5);
  std::ostringstream os;
  if (t >= 3600) os << t / 3600 << "h";
  if (t >= 60) os << (t / 60) % 60 << "m";
  os << t % 60 << "s";
  return os.str();
}

ProgressBar::ProgressBar(int64_t total) : total_(total), tty_(::isatty(STDERR_FILENO)) {}

void ProgressBar::update(int64_t step, double loss, double lr, double grad_norm, double tps, double eta) {
  const int width = 24;
  const int filled = static_cast<int>(width * static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, total_)));
  char line[256];
  std::snprintf(line, sizeof line, "step %lld/%lld [%s%s] loss %.4f  lr %.2e  grad-norm %.3f  %.0f tok/s  ETA %s",
                static_cast<long long>(step), static_cast<long long>(total_), std::string(filled, '#').c_str(),
                std::string(width - filled, '.').c_str(), loss, lr, grad_norm, tps, format_duration(eta).c_str());
  if (tty_)
    std::cerr << "\r" << line << "\033[K" << std::flush;
  else
    std::cerr << line << "\n";
}

void ProgressBar::finish() {
  if (tty_) std::cerr << "\n";
}

void write_loss_svg(const std::string& path, const std::vector<CurvePoint>& train,
                    const std::vector<CurvePoint>& validation, const std::string& title) {
  const double W = 720, H = 420, left = 64, right = 20, top = 40, bottom = 48;
  double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
  for (const auto* series : {&train, &validation})
    for (const auto& p : *series) {
      x0 = std::min(x0, p.step), x1 = std::max(x1, p.step);
      y0 = std::min(y0, p.value), y1 = std::max(y1, p.value);
    }
  if (x0 > x1) x0 = 0, x1 = 1, y0 = 0, y1 = 1;
  if (x1 == x0) x1 = x0 + 1;
  if (y1 == y0) y1 = y0 + 1;
  const double pad = 0.05 * (y1 - y0);
  y0 -= pad, y1 += pad;
  auto X = [&](double v) { return left + (v - x0) / (x1 - x0) * (W - left - right); };
  auto Y = [&](double v) { return top + (y1 - v) / (y1 - y0) * (H - top - bottom); };
  std::ostringstream s;
  s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H
    << "\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  s << "<text x=\"" << W / 2 << "\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">" << title << "</text>\n";
  for (int i = 0; i <= 5; ++i) {  // grid and axis labels
    const double yv = y0 + (y1 - y0) * i / 5, xv = x0 + (x1 - x0) * i / 5;
    s << "<line x1=\"" << left << "\" x2=\"" << W - right << "\" y1=\"" << Y(yv) << "\" y2=\"" << Y(yv)
      << "\" stroke=\"#e0e0e0\"/>\n";
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.2f", yv);
    s << "<text x=\"" << left - 6 << "\" y=\"" << Y(yv) + 4 << "\" text-anchor=\"end\">" << buf << "</text>\n";
    s << "<text x=\"" << X(xv) << "\" y=\"" << H - bottom + 18 << "\" text-anchor=\"middle\">"
      << static_cast<long long>(std::llround(xv)) << "</text>\n";
  }
  s << "<text x=\"" << (left + W - right) / 2 << "\" y=\"" << H - 10 << "\" text-anchor=\"middle\">step</text>\n";
  s << "<text x=\"16\" y=\"" << (top + H - bottom) / 2 << "\" transform=\"rotate(-90 16 " << (top + H - bottom) / 2
    << ")\" text-anchor=\"middle\">loss (nats/token)</text>\n";
  auto polyline = [&](const std::vector<CurvePoint>& pts, const char* colour, double width) {
    if (pts.empty()) return;
    s << "<polyline fill=\"none\" stroke=\"" << colour << "\" stroke-width=\"" << width << "\" points=\"";
    for (const auto& p : pts) s << X(p.step) << "," << Y(p.value) << " ";
    s << "\"/>\n";
  };
  polyline(train, "#1f77b4", 1.2);
  polyline(validation, "#d62728", 2.0);
  for (const auto& p : validation) s << "<circle cx=\"" << X(p.step) << "\" cy=\"" << Y(p.value) << "\" r=\"3\" fill=\"#d62728\"/>\n";
  s << "<text x=\"" << W - right - 150 << "\" y=\"" << top + 16 << "\" fill=\"#1f77b4\">— train</text>\n";
  if (!validation.empty())
    s << "<text x=\"" << W - right - 80 << "\" y=\"" << top + 16 << "\" fill=\"#d62728\">● validation</text>\n";
  s << "</svg>\n";
  // Replaced whole: a run stopped while writing it leaves the previous picture, not half of one.
  io::write_file_atomic(path, s.str());
}

}  // namespace g4::train
