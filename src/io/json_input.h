// Reading untrusted input files and JSON documents with limits. Every JSON text g4 parses goes
// through parse_json (or check_json_limits first): its nesting depth and size are checked by a
// flat scan before nlohmann builds anything, so a hostile document cannot exhaust the stack or
// memory in the recursive parts of nlohmann (dump, comparison, copying) or in our own walkers.
// Every failure is a g4::Error naming the input; no library exception text reaches the user.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <iosfwd>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace g4::io {

// Nesting depth allowed in any JSON input (real configs, tokenizers and headers nest < 10).
constexpr int kMaxJsonDepth = 128;

// Size limits per kind of input (docs/reliability.md lists them).
constexpr size_t kMiB = size_t(1) << 20;
constexpr size_t kMaxSafetensorsHeaderBytes = 100 * kMiB;  // the safetensors library stops at 100 MB
constexpr size_t kMaxConfigBytes = 16 * kMiB;              // config.json, tokenizer_config.json, ...
constexpr size_t kMaxIndexBytes = 64 * kMiB;               // model.safetensors.index.json
constexpr size_t kMaxTokenizerBytes = 512 * kMiB;          // tokenizer.json (Gemma's is ~32 MiB)
constexpr size_t kMaxStateBytes = 64 * kMiB;               // trainer_state.json
constexpr size_t kMaxJsonLineBytes = 64 * kMiB;            // one line of a .jsonl file

// Refuses `text` (called `what` in the message, e.g. "config /m/config.json") when it is larger
// than max_bytes or nests arrays/objects deeper than max_depth.
void check_json_limits(std::string_view text, const std::string& what, size_t max_bytes, int max_depth = kMaxJsonDepth);

// nlohmann's message without its "[json.exception.parse_error.101] " tag.
std::string json_error_text(const nlohmann::json::exception& e);

// check_json_limits, then parses; a syntax error reads "<what> is not valid JSON (<detail>)".
nlohmann::json parse_json(std::string_view text, const std::string& what, size_t max_bytes,
                          int max_depth = kMaxJsonDepth);

// The bytes of the regular file at `path`. FIFOs, sockets, devices and directories are refused
// without blocking (the file is opened non-blocking and checked before any read), as are files
// larger than max_bytes. `what` names the file's role ("config", "tokenizer").
std::string read_regular_file(const std::string& path, const std::string& what, size_t max_bytes);
// The errors read_regular_file gives for a file that is missing, unreadable or not a regular file,
// without reading it: for commands that read an input only after loading a model (minutes).
void check_regular_file(const std::string& path, const std::string& what);

// For "does not exist" errors: "" for an absolute path, else a note that it was taken from the
// working directory (named): recipes name their files relative to where g4 runs, not to the recipe.
std::string relative_path_note(const std::string& path);

// Makes the folder `dir` and its parents; an error names `what` and the system's reason ("Read-only
// file system", "Not a directory") instead of the standard library's text.
void make_directories(const std::string& dir, const std::string& what);

// `path` with its symlinks followed to the file they name (which need not exist), or `path` itself.
std::string symlink_target(const std::string& path);
// The file an atomic write of `path` replaces: `path`, or the file it names when it is a symlink.
// Throws when that exists and is not a regular file (a FIFO, a device, a directory).
std::string atomic_write_target(const std::string& path);

// Makes what is at `path` durable (fsync): a file's data, or a folder's entries (what was renamed into
// it). Where the file system cannot sync (EINVAL, ENOTSUP) it does nothing; any other failure is an
// error naming the path.
void sync_to_disk(const std::string& path);
// The folder that holds `path` ("." for a bare file name).
std::string parent_folder(const std::string& path);

// Writes `text` to a temporary file beside `path` and renames it over `path`, so a reader (or a
// run killed meanwhile) sees the old file or the whole new one, never half of it; the data is on the
// disk before the rename and the rename after it (sync_to_disk), so a machine that loses power does
// not leave a renamed file with unwritten data either. Errors name the file and the system's reason
// (e.g. "No space left on device"); a failed write removes the temporary file.
// A symlink `path` is written through (its target replaced, the link kept); a `path` that exists and
// is not a regular file (a FIFO, a device) is refused.
void write_file_atomic(const std::string& path, const std::string& text);
// The same with the text streamed by `fill` (which may throw: the temporary file is removed).
void write_file_atomic(const std::string& path, const std::function<void(std::ostream&)>& fill);
// Copies the regular file `src` (read_regular_file, up to 4 GiB; `what` names it in errors) to `dst`
// with write_file_atomic: a FIFO is refused and a full disk never leaves part of the file.
void copy_file_atomic(const std::string& src, const std::string& dst, const std::string& what);

// read_regular_file + parse_json; errors name "<what> <path>".
nlohmann::json read_json_file(const std::string& path, const std::string& what, size_t max_bytes,
                              int max_depth = kMaxJsonDepth);

// Typed fields of a JSON object, for documents whose schema g4 owns (trainer_state.json, ...).
// `where` names the document; a missing key (without a default) or a value of another type is
// "<where>: '<key>' must be an integer, got null".
int64_t json_int(const nlohmann::json& obj, const std::string& key, const std::string& where);
int64_t json_int(const nlohmann::json& obj, const std::string& key, const std::string& where, int64_t def);
double json_number(const nlohmann::json& obj, const std::string& key, const std::string& where, double def);
std::string json_string(const nlohmann::json& obj, const std::string& key, const std::string& where);

}  // namespace g4::io
