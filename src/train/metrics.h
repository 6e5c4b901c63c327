// What a training run shows: a one-line progress bar, a JSONL metrics log (one object per
// logged step or validation), and at the end an SVG loss curve.
#pragma once
#include <cstdio>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace g4::train {

class MetricsLog {
 public:
  // Opens path for appending. On resume, records after `resume_step` (from the killed run) are
  // dropped first so the log reads as one uninterrupted run.
  MetricsLog(const std::string& path, int64_t resume_step);
  void write(const nlohmann::json& record);
  const std::string& path() const { return path_; }
  // Every record in the file (for the loss picture).
  std::vector<nlohmann::json> read_all() const;

 private:
  std::string path_;
};

// Redraws one terminal line (or prints a line per update when stderr is not a terminal).
class ProgressBar {
 public:
  explicit ProgressBar(int64_t total_steps);
  void update(int64_t step, double loss, double lr, double grad_norm, double tokens_per_s, double eta_s);
  void finish();

 private:
  int64_t total_;
  bool tty_;
};

struct CurvePoint {
  double step, value;
};
// A self-contained SVG with train (and validation, if any) loss against step.
void write_loss_svg(const std::string& path, const std::vector<CurvePoint>& train,
                    const std::vector<CurvePoint>& validation, const std::string& title);

std::string format_duration(double seconds);

}  // namespace g4::train
