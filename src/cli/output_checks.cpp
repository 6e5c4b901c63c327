// Guards for commands that write into the file system, so that a slip of the --out path does not
// silently replace a model (its weights, config or shards) with something else.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <limits>
#include <sstream>
#include <string>
#include <system_error>

#include "cli/commands.h"
#include "core/error.h"
#include "io/json_input.h"
#include "parallel/world.h"

namespace g4::cli {

namespace fs = std::filesystem;

namespace {

bool same_path(const fs::path& a, const fs::path& b) {
  std::error_code ea, eb;
  const fs::path ca = fs::weakly_canonical(a, ea), cb = fs::weakly_canonical(b, eb);
  return !ea && !eb && ca == cb;
}

// The same file by two names: equivalent() when both exist (symlinks, hard links), else the same
// normalised path.
bool same_file(const fs::path& a, const fs::path& b) {
  std::error_code ea, eb, ec;
  if (fs::exists(a, ea) && fs::exists(b, eb)) return fs::equivalent(a, b, ec) && !ec;
  return same_path(a, b);
}

// The model files in `dir`: config.json, then the first *.safetensors, then the first of `side_files`;
// empty when it holds none.
std::string model_file_in(const fs::path& dir, const std::vector<std::string>& side_files) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return "";
  if (fs::exists(dir / "config.json", ec)) return "config.json";
  for (const std::string& f : side_files)
    if (fs::exists(fs::symlink_status(dir / f, ec))) return f;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec))
    if (it->path().extension() == ".safetensors") return it->path().filename().string();
  return "";
}

}  // namespace

void check_output_file(const std::string& out, const std::string& option, bool overwrite,
                       const std::string& input_model) {
  std::error_code ec;
  if (!fs::exists(out, ec)) return;
  const fs::path dir = io::parent_folder(out);
  if (!fs::exists(dir / "config.json", ec)) return;
  // The input model's files are still being read (memory-mapped) while the output is written.
  G4_CHECK(!same_path(dir, input_model), option, " ", out, " is a file of the input model ", input_model,
           "; refusing to overwrite it (even with --overwrite): write the output elsewhere");
  G4_CHECK(overwrite, option, " ", out, " already exists in a model directory (", (dir / "config.json").string(),
           "); refusing to overwrite it: pass --overwrite to replace it, or write the output elsewhere");
}

void check_output_model_dir(const std::string& out, const std::string& what, bool overwrite,
                            const std::string& input_model, const std::vector<std::string>& side_files) {
  G4_CHECK(!same_path(out, input_model), what, " ", out, " is the input model directory; refusing to overwrite ",
           input_model, " (even with --overwrite)");
  const std::string existing = model_file_in(out, side_files);
  if (existing.empty()) return;
  G4_CHECK(overwrite, what, " ", out, " already holds a model (", existing,
           "); refusing to overwrite it: pass --overwrite to replace it, or choose an empty directory");
}

void check_output_not_input(const std::string& out, const std::string& option, const std::string& input,
                            const std::string& input_option) {
  if (out.empty() || input.empty()) return;
  std::error_code ec;
  if (fs::is_directory(input, ec)) {  // a folder of inputs (a tokenizer's): none of its files
    for (fs::directory_iterator it(input, ec), end; !ec && it != end; it.increment(ec))
      G4_CHECK(!(it->is_regular_file(ec) && same_file(out, it->path())), option, " ", out, " is ",
               it->path().string(), " of the ", input_option, " folder ", input,
               "; refusing to replace an input with the output (even with --overwrite): write the output elsewhere");
    return;
  }
  G4_CHECK(!same_file(out, input), option, " ", out, " is the ", input_option, " file ", input,
           "; refusing to replace the input with the output (even with --overwrite): write the output elsewhere");
}

void check_output_file_creatable(const std::string& out, const std::string& option) {
  std::error_code ec;
  G4_CHECK(!fs::is_directory(out, ec), option, " ", out, " is a directory; give a file name");
  // The output is written beside the file it replaces and renamed over it: through a symlink that
  // is the file the link names (io::write_file_atomic).
  const fs::path target = io::symlink_target(out);
  const fs::file_status st = fs::status(target, ec);
  G4_CHECK(!fs::exists(st) || fs::is_regular_file(st), option, " ", out,
           " is not a regular file (a FIFO, socket or device?); give the path of a file to write");
  const fs::path parent = io::parent_folder(target.string());
  G4_CHECK(fs::exists(parent, ec), option, " ", out, ": the folder ", parent.string(), " does not exist");
  G4_CHECK(fs::is_directory(parent, ec), option, " ", out, ": ", parent.string(), " is not a folder");
  // A read-only file system or a folder without write permission shows only when a file is made
  // there: make (and remove) one now rather than after the run.
  const fs::path trial = parent / (".g4-write-check." + std::to_string(::getpid()));
  const int fd = ::open(trial.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  const int err = errno;
  G4_CHECK(fd >= 0, option, " ", out, ": cannot create files in the folder ", parent.string(), ": ",
           std::strerror(err));
  ::close(fd);
  fs::remove(trial, ec);
}

bool runs_in_this_rank(const std::string& command, const std::string& out_option) {
  const parallel::LaunchInfo launch = parallel::detect_launch();
  if (launch.rank == 0) return true;
  std::cout << command << " runs in one process: rank 0 of the " << launch.size << " ranks does the work and writes "
            << out_option << "; this rank (" << launch.rank << ") does nothing\n";
  return false;
}

std::vector<int64_t> parse_integer_list(const std::string& s, const std::string& flag, const std::string& noun,
                                        int64_t lo, int64_t hi) {
  G4_CHECK(s.find_first_not_of(" \t") != std::string::npos, flag, " is empty");
  std::vector<int64_t> values;
  size_t begin = 0;
  while (true) {
    const size_t comma = s.find(',', begin);
    const std::string item = s.substr(begin, comma == std::string::npos ? std::string::npos : comma - begin);
    const size_t a = item.find_first_not_of(" \t"), b = item.find_last_not_of(" \t");
    const std::string digits = a == std::string::npos ? "" : item.substr(a, b - a + 1);
    size_t used = 0;
    int64_t x = 0;
    try {
      if (!digits.empty()) x = std::stoll(digits, &used);
    } catch (const std::exception&) {  // not a number, or past int64
      used = 0;
    }
    G4_CHECK(!digits.empty() && used == digits.size(), flag, ": '", item, "' is not ", noun, " (in '", s, "')");
    G4_CHECK(x >= lo && x <= hi, flag, ": ", x, " is not in [", lo, ", ", hi, "] (in '", s, "')");
    values.push_back(x);
    if (comma == std::string::npos) break;
    begin = comma + 1;
  }
  return values;
}

std::vector<int64_t> parse_token_ids(const std::string& s, const std::string& flag) {
  return parse_integer_list(s, flag, "an integer token id", std::numeric_limits<int64_t>::min(),
                            std::numeric_limits<int64_t>::max());
}

CLI::Validator real_in(double lo, double hi, bool lo_open) {
  std::ostringstream range;
  range << (lo_open ? "(" : "[") << lo << ", " << hi << "]";
  return CLI::Validator(
      [lo, hi, lo_open, r = range.str()](std::string& v) -> std::string {
        double x = 0;
        try {
          size_t used = 0;
          x = std::stod(v, &used);
          if (used != v.size()) return "'" + v + "' is not a number";
        } catch (const std::exception&) {  // std::out_of_range of 1e999 too: it is no usable number
          return "'" + v + "' is not a number in " + r;
        }
        const bool above = lo_open ? x > lo : x >= lo;
        if (!above || !(x <= hi)) return "must be a number in " + r + ", got " + v;
        return "";
      },
      "NUMBER in " + range.str());
}

namespace {

// The integer of all of `v` in decimal, or an error text. from_chars takes no '+', no base prefix
// and no blanks, and reports a value out of T's range. A leading zero is refused: the checks only
// look (CLI11's check() passes them a copy), and CLI11 then reads "010" in base 0, as octal 8.
template <typename T>
std::string parse_decimal(const std::string& v, T& x) {
  const char* end = v.data() + v.size();
  const auto [ptr, ec] = std::from_chars(v.data(), end, x);
  if (ec == std::errc::result_out_of_range) return "'" + v + "' is out of range";
  if (ec != std::errc() || ptr != end) return "'" + v + "' is not a decimal integer";
  const size_t digits = v[0] == '-' ? 1 : 0;
  if (v.size() > digits + 1 && v[digits] == '0')
    return "'" + v + "' has a leading zero (it would be read as octal; write " + std::to_string(x) + ")";
  return "";
}

}  // namespace

CLI::Validator integer_in(int64_t lo, int64_t hi) {
  const std::string range = "[" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
  return CLI::Validator(
      [lo, hi, range](std::string& v) -> std::string {
        int64_t x = 0;
        const std::string bad = parse_decimal(v, x);
        if (!bad.empty()) return bad + " (an integer in " + range + ")";
        return x < lo || x > hi ? "must be in " + range + ", got " + v : "";
      },
      "INT in " + range);
}

CLI::Validator unsigned_integer() {
  return CLI::Validator(
      [](std::string& v) -> std::string {
        uint64_t x = 0;
        const std::string bad = parse_decimal(v, x);
        return bad.empty() ? "" : bad + " (an integer in [0, 2^64 - 1])";
      },
      "UINT64");
}

void remove_model_files(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return;
  for (const fs::directory_entry& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (e.path().extension() == ".safetensors" || name == "model.safetensors.index.json" || name == "config.json") {
      fs::remove(e.path(), ec);
      G4_CHECK(!ec, "--overwrite: cannot remove ", e.path().string(), " of the old model: ", ec.message());
    }
  }
}

}  // namespace g4::cli
