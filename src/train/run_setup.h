// The parts of a training run that `g4 train` (SFT) and `g4 rl` set up alike from a recipe: the
// ranks and their mesh, the model (on the GPU a bf16 copy of the f32 original the optimizer keeps
// for its masters, which with frozen weights holds the trainable ones alone), the tokenizer, the optimizer over the trainable parameters, the checkpoints of
// the weights, the optimizer, the objective and the run's progress, and what a non-finite step does.
#pragma once
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "io/image_processor.h"
#include "io/video_processor.h"
#include "io/tokenizer.h"
#include "model/gemma4.h"
#include "parallel/communicator.h"
#include "parallel/device_mesh.h"
#include "train/checkpoint.h"
#include "train/optimizer.h"
#include "train/recipe.h"
#include "train/train_step.h"
#include "train/weights_checkpoint.h"

namespace g4::train {

// The run's progress as a checkpoint part: steps done, training time, the recipe.
struct Progress final : CheckpointPart {
  int64_t step = 0;
  int64_t skipped_steps = 0;  // steps without an update (non-finite loss or gradient norm)
  double elapsed_s = 0;
  nlohmann::json recipe;
  // A LoRA model's count of training forwards (its dropout masks' call numbers), kept for resume.
  model::Gemma4* lora_model = nullptr;
  void save(const std::filesystem::path&, nlohmann::json& state) override;
  void load(const std::filesystem::path& dir, const nlohmann::json& state) override;
};

// The parameters the recipe trains: all but those matching a train.freeze pattern (native or
// Hugging Face name, or a kind: "norm", "router", ...); of a model with LoRA adapters, only those.
std::vector<std::string> trainable_names(const model::Gemma4& m, const std::vector<std::string>& freeze);
// Only `trainable` take gradients: the other weights get no gradient buffer and no weight-gradient
// products (the activations' gradients still flow through them).
void require_grad_only(model::Gemma4& m, const std::vector<std::string>& trainable);

// Throws a g4::Error naming the tokenizer `name` when it has more ids than the model's vocabulary
// (`vocab_size`): text it encodes could hold ids the model has no embedding for.
void check_tokenizer_fits(const io::Tokenizer& tok, const std::string& name, int64_t vocab_size);
// The image processor for a run's chat data: the model directory's processor_config.json (or
// preprocessor_config.json) when it has one, else the defaults with the vision tower's patch and
// pooling sizes (a fixture without processor files). The patch size must be the tower's.
io::ImageProcessorOptions data_image_processor(const std::string& model_dir, const io::ModelConfig& config);
// The video processor likewise: processor_config.json's video_processor, else the defaults with the
// tower's patch and pooling sizes.
io::VideoProcessorOptions data_video_processor(const std::string& model_dir, const io::ModelConfig& config);

// Training data with images, audio or videos: the model must have the towers, the tokenizer's
// placeholders must be the model's ids. (Context parallelism cuts multimodal rows like any other:
// every rank runs the towers on the whole micro-batch's media, train/sft.cpp.)
void check_multimodal_data(const Recipe& r, const io::ModelConfig& config, const io::Tokenizer& tok, bool images,
                           bool audio, bool videos = false);

// A run started without --resume in a directory holding an earlier run's checkpoints or metrics
// would mix with it: the earlier run's higher step numbers outrank the new checkpoints (which
// checkpoint.keep then deletes as soon as they are written), a later --resume would continue the
// earlier run, and metrics.jsonl would be cut. So that is an error naming what the directory holds.
void refuse_earlier_run(const std::string& source, const std::string& run_dir);

class RunParts {
 public:
  // Starts the ranks (on the GPU: each takes its GPU, see parallel/gpu_world.h), locks the output directory
  // (rank 0), builds the mesh and the model, and loads the tokenizer. `row_len` > 0: the tokens of
  // one training row, checked against the model's context before it is loaded (and against the
  // mesh's context-parallel split). Without `resume`, a run directory that holds an earlier run
  // (checkpoints or metrics) is refused before anything is loaded: see refuse_earlier_run.
  RunParts(const Recipe& r, int64_t row_len, bool resume);
  // The optimizer over the trainable parameters (frozen ones take no gradient at all), and the
  // checkpoint manager over the weights, the optimizer, `objective` and the progress.
  void set_up_training(CheckpointPart& objective);
  // Continues from the newest complete checkpoint when asked (and one exists).
  // Returns the checkpoint resumed from, if any.
  std::optional<std::string> resume_if_asked(bool resume);
  // A step whose loss or gradient norm is NaN or infinite updated nothing (train_step); the run
  // stops there with an error, or counts it and goes on when the recipe says so. Either way no
  // checkpoint holds weights such a step produced.
  void check_finite(const StepResult& s);
  bool main_rank() const { return world->rank() == 0; }

  const Recipe& r;
  std::unique_ptr<parallel::Communicator> world;
  std::unique_ptr<DirectoryLock> lock;  // rank 0: this run alone writes r.output_dir
  std::unique_ptr<parallel::DeviceMesh> mesh;
  std::unique_ptr<model::Gemma4> model;
  // A GPU model's f32 original, until the optimizer takes it: the whole model, or with frozen
  // weights (LoRA, train.freeze; not parallel.fsdp) the trainable parameters and adapters alone.
  std::unique_ptr<model::Gemma4> host;
  std::unique_ptr<io::Tokenizer> tok;
  std::unique_ptr<Optimizer> opt;
  std::unique_ptr<WeightsCheckpoint> weights;
  Progress progress;
  std::unique_ptr<CheckpointManager> checkpoints;
  int64_t parameters = 0;        // of the model (before a sharded optimizer takes slices)
  size_t trainable_tensors = 0;
  // A LoRA run's base (model.path) fingerprint, taken as it loaded ("" = from the weights).
  std::string base_fingerprint;

 private:
  void set_up_model(int64_t row_len);
  void set_up_gpu_model(const io::ModelConfig& config);
};

}  // namespace g4::train
