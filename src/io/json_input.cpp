#include "io/json_input.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <new>

#include "core/error.h"

namespace g4::io {

using nlohmann::json;

namespace {

// A value as it appears in the file, cut short: the message must stay readable when a field
// holds a whole document.
std::string preview(const json& v) {
  std::string s = v.dump();
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}

std::string limit_str(size_t bytes) {
  return bytes % kMiB == 0 ? std::to_string(bytes / kMiB) + " MiB" : std::to_string(bytes) + " bytes";
}

const json* field(const json& obj, const std::string& key, const std::string& where) {
  G4_CHECK(obj.is_object(), where, " must be a JSON object, got ", preview(obj));
  auto it = obj.find(key);
  return it == obj.end() ? nullptr : &*it;
}

}  // namespace

void check_json_limits(std::string_view text, const std::string& what, size_t max_bytes, int max_depth) {
  G4_CHECK(text.size() <= max_bytes, what, " is ", text.size(), " bytes, more than the limit of ",
           limit_str(max_bytes));
  // The parser takes a NUL for the end of the text and would drop whatever follows it unread; JSON
  // has no NUL outside an escape (\u0000), so one is an error wherever it is.
  if (const size_t nul = text.find('\0'); nul != std::string_view::npos)
    G4_FAIL(what, " is not valid JSON: a NUL byte at byte ", nul, " (write \\u0000 inside a string)");
  // Brackets inside strings do not nest; anything malformed is left to the parser to report.
  int depth = 0;
  bool in_string = false, escaped = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (escaped)
        escaped = false;
      else if (c == '\\')
        escaped = true;
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      G4_CHECK(++depth <= max_depth, what, " nests JSON arrays/objects deeper than the limit of ", max_depth,
               " levels (at byte ", i, ")");
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
}

std::string json_error_text(const json::exception& e) {
  std::string s = e.what();
  if (s.rfind("[json.exception.", 0) == 0)
    if (const size_t end = s.find("] "); end != std::string::npos) s.erase(0, end + 2);
  return s;
}

json parse_json(std::string_view text, const std::string& what, size_t max_bytes, int max_depth) {
  check_json_limits(text, what, max_bytes, max_depth);
  try {
    return json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {
    G4_FAIL(what, " is not valid JSON (", json_error_text(e), ")");
  } catch (const std::bad_alloc&) {
    G4_FAIL(what, ": out of memory parsing ", text.size(), " bytes of JSON");
  }
}

void make_directories(const std::string& dir, const std::string& what) {
  if (dir.empty()) return;
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  G4_CHECK(!ec, what, " ", dir, ": cannot make the folder: ", ec.message());
  G4_CHECK(std::filesystem::is_directory(dir, ec), what, " ", dir, " exists and is not a folder");
}

std::string symlink_target(const std::string& path) {
  namespace fs = std::filesystem;
  fs::path p = path;
  std::error_code ec;
  // Link by link, so that a dangling link gives the file it would make (weakly_canonical stops there).
  for (int hops = 0; fs::is_symlink(fs::symlink_status(p, ec)); ++hops) {
    G4_CHECK(hops < 40, "cannot resolve the symlink ", path, ": too many levels of symbolic links");
    const fs::path next = fs::read_symlink(p, ec);
    G4_CHECK(!ec, "cannot resolve the symlink ", path, ": ", ec.message());
    p = next.is_absolute() ? next : p.parent_path() / next;
  }
  return p.string();
}

std::string atomic_write_target(const std::string& path) {
  std::error_code ec;
  // Through a symlink to the file it names (the rename would replace the link itself), and never in
  // place of a FIFO or a device: the rename would swap a regular file in for /dev/null.
  const std::string target = symlink_target(path);
  const std::filesystem::file_status st = std::filesystem::status(target, ec);
  G4_CHECK(!std::filesystem::exists(st) || std::filesystem::is_regular_file(st), "cannot write ", path,
           ": it is not a regular file (a FIFO, socket, device or directory?)");
  return target;
}

void sync_to_disk(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  G4_CHECK(fd >= 0, "cannot open ", path, " to sync it to disk: ", std::strerror(errno));
  int rc = 0;
  do {
    rc = ::fsync(fd);
  } while (rc != 0 && errno == EINTR);
  const int err = errno;
  ::close(fd);
  G4_CHECK(rc == 0 || err == EINVAL || err == ENOTSUP, "syncing ", path, " to disk failed: ", std::strerror(err));
}

std::string parent_folder(const std::string& path) {
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  return parent.empty() ? "." : parent.string();
}

void write_file_atomic(const std::string& given, const std::function<void(std::ostream&)>& fill) {
  const std::string path = atomic_write_target(given);
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  std::error_code ec;
  int err = 0;
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    G4_CHECK(f.good(), "cannot write ", tmp, ": ", std::strerror(errno));
    try {
      errno = 0;  // the stream's failed write(2) leaves its reason here
      fill(f);
      f.flush();
    } catch (...) {
      f.close();
      std::filesystem::remove(tmp, ec);
      throw;
    }
    if (!f.good()) err = errno != 0 ? errno : EIO;
  }
  if (err != 0) {
    std::filesystem::remove(tmp, ec);
    G4_FAIL("writing ", tmp, " failed: ", std::strerror(err));
  }
  try {
    sync_to_disk(tmp);
  } catch (...) {
    std::filesystem::remove(tmp, ec);
    throw;
  }
  std::filesystem::rename(tmp, path, ec);
  G4_CHECK(!ec, "cannot rename ", tmp, " to ", path, ": ", ec.message());
  sync_to_disk(parent_folder(path));
}

void write_file_atomic(const std::string& path, const std::string& text) {
  write_file_atomic(path, [&](std::ostream& f) { f << text; });
}

void copy_file_atomic(const std::string& src, const std::string& dst, const std::string& what) {
  write_file_atomic(dst, read_regular_file(src, what, size_t{1} << 32));
}

std::string relative_path_note(const std::string& path) {
  if (path.empty() || std::filesystem::path(path).is_absolute()) return "";
  std::error_code ec;
  const std::filesystem::path cwd = std::filesystem::current_path(ec);
  return " (a relative path: taken from the working directory" + (ec ? std::string() : " " + cwd.string()) + ")";
}

namespace {
// Opens `path` for reading and checks that it is a regular file; the caller closes the descriptor.
int open_regular_file(const std::string& path, const std::string& what, struct stat& st) {
  // Non-blocking, so that opening a FIFO returns at once instead of waiting for a writer.
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  const int open_err = errno;
  G4_CHECK(fd >= 0, "cannot open ", what, " ", path, ": ", std::strerror(open_err),
           open_err == ENOENT ? relative_path_note(path) : std::string());
  const bool stat_ok = ::fstat(fd, &st) == 0;
  const int stat_err = errno;
  try {
    G4_CHECK(stat_ok, "cannot stat ", what, " ", path, ": ", std::strerror(stat_err));
    G4_CHECK(!S_ISDIR(st.st_mode), what, " ", path, " is a directory, expected a file");
    G4_CHECK(S_ISREG(st.st_mode), what, " ", path, " is not a regular file (a FIFO, socket or device?)");
  } catch (...) {
    ::close(fd);
    throw;
  }
  return fd;
}
}  // namespace

void check_regular_file(const std::string& path, const std::string& what) {
  struct stat st {};
  ::close(open_regular_file(path, what, st));
}

std::string read_regular_file(const std::string& path, const std::string& what, size_t max_bytes) {
  struct stat st {};
  const int fd = open_regular_file(path, what, st);
  std::string bytes;
  try {
    const size_t size = static_cast<size_t>(st.st_size);
    G4_CHECK(size <= max_bytes, what, " ", path, " is ", size, " bytes, more than the limit of ", limit_str(max_bytes));
    try {
      bytes.resize(size);
    } catch (const std::exception&) {  // bad_alloc, or length_error past max_size()
      G4_FAIL("cannot allocate ", size, " bytes to read ", what, " ", path);
    }
    size_t got = 0;
    while (got < size) {
      const ssize_t n = ::read(fd, bytes.data() + got, size - got);
      if (n < 0 && errno == EINTR) continue;
      G4_CHECK(n >= 0, "reading ", what, " ", path, " failed: ", std::strerror(errno));
      if (n == 0) break;  // shrank while we read: take what is there
      got += static_cast<size_t>(n);
    }
    bytes.resize(got);
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
  return bytes;
}

json read_json_file(const std::string& path, const std::string& what, size_t max_bytes, int max_depth) {
  return parse_json(read_regular_file(path, what, max_bytes), what + " " + path, max_bytes, max_depth);
}

int64_t json_int(const json& obj, const std::string& key, const std::string& where) {
  const json* v = field(obj, key, where);
  G4_CHECK(v, where, ": '", key, "' is missing (an integer is required)");
  // An integral float (4.0, as a hand edit may write) is an integer, as in the config reader.
  if (v->is_number_float()) {
    const double d = v->get<double>();
    G4_CHECK(std::floor(d) == d && std::fabs(d) < 9.0e15, where, ": '", key, "' must be an integer, got ", preview(*v));
    return static_cast<int64_t>(d);
  }
  G4_CHECK(v->is_number_integer(), where, ": '", key, "' must be an integer, got ", preview(*v));
  G4_CHECK(!v->is_number_unsigned() || v->get<uint64_t>() <= uint64_t(INT64_MAX), where, ": '", key, "' is ",
           preview(*v), ", more than the largest integer g4 takes (", INT64_MAX, ")");
  return v->get<int64_t>();
}

int64_t json_int(const json& obj, const std::string& key, const std::string& where, int64_t def) {
  return field(obj, key, where) ? json_int(obj, key, where) : def;
}

double json_number(const json& obj, const std::string& key, const std::string& where, double def) {
  const json* v = field(obj, key, where);
  if (!v) return def;
  G4_CHECK(v->is_number(), where, ": '", key, "' must be a number, got ", preview(*v));
  return v->get<double>();
}

std::string json_string(const json& obj, const std::string& key, const std::string& where) {
  const json* v = field(obj, key, where);
  G4_CHECK(v, where, ": '", key, "' is missing (a string is required)");
  G4_CHECK(v->is_string(), where, ": '", key, "' must be a string, got ", preview(*v));
  return v->get<std::string>();
}

}  // namespace g4::io
