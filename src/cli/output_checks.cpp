// Guards for commands that write into the file system, so that a slip of the --out path does not
// silently replace a model (its weights, config or shards) with something else.
#include <filesystem>
#include <system_error>

#include "cli/commands.h"
#include "core/error.h"

namespace g4::cli {

namespace fs = std::filesystem;

namespace {

bool same_path(const fs::path& a, const fs::path& b) {
  std::error_code ea, eb;
  const fs::path ca = fs::weakly_canonical(a, ea), cb = fs::weakly_canonical(b, eb);
  return !ea && !eb && ca == cb;
}

// The model files in `dir`: config.json, then the first *.safetensors; empty when it holds none.
std::string model_file_in(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return "";
  if (fs::exists(dir / "config.json", ec)) return "config.json";
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec))
    if (it->path().extension() == ".safetensors") return it->path().filename().string();
  return "";
}

}  // namespace

void check_output_file(const std::string& out, const std::string& option, bool overwrite,
                       const std::string& input_model) {
  std::error_code ec;
  if (!fs::exists(out, ec)) return;
  const fs::path dir = fs::path(out).parent_path().empty() ? fs::path(".") : fs::path(out).parent_path();
  if (!fs::exists(dir / "config.json", ec)) return;
  // The input model's files are still being read (memory-mapped) while the output is written.
  G4_CHECK(!same_path(dir, input_model), option, " ", out, " is a file of the input model ", input_model,
           "; refusing to overwrite it (even with --overwrite): write the output elsewhere");
  G4_CHECK(overwrite, option, " ", out, " already exists in a model directory (", (dir / "config.json").string(),
           "); refusing to overwrite it: pass --overwrite to replace it, or write the output elsewhere");
}

void check_output_model_dir(const std::string& out, const std::string& what, bool overwrite,
                            const std::string& input_model) {
  G4_CHECK(!same_path(out, input_model), what, " ", out, " is the input model directory; refusing to overwrite ",
           input_model, " (even with --overwrite)");
  const std::string existing = model_file_in(out);
  if (existing.empty()) return;
  G4_CHECK(overwrite, what, " ", out, " already holds a model (", existing,
           "); refusing to overwrite it: pass --overwrite to replace it, or choose an empty directory");
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
