// Supervised fine-tuning and pre-training: next-token cross-entropy over packed rows (plus, for
// MoE models, the optional router load-balancing loss). The first Objective.
#pragma once
#include <memory>
#include <vector>

#include "data/dataset.h"
#include "parallel/device_mesh.h"
#include "train/objective.h"

namespace g4::train {

// Where SFT's rows come from: micro-batch `index` of `rows` rows, a pure function of the index
// (so a resumed run sees the rows an uninterrupted one would).
class BatchSource {
 public:
  virtual ~BatchSource() = default;
  virtual data::Batch batch(int64_t rows, int64_t index) const = 0;
};

// The training rows of a packed dataset (which must outlive the source).
class PackedDataSource final : public BatchSource {
 public:
  explicit PackedDataSource(const data::PackedDataset& data) : data_(data) {}
  data::Batch batch(int64_t rows, int64_t index) const override { return data_.train_batch(rows, index); }

 private:
  const data::PackedDataset& data_;
};

struct SftOptions {
  int64_t batch_size = 1;         // rows per micro-batch on each row stream
  int64_t grad_accumulation = 1;  // micro-batches per step
  double router_aux_loss = 0;     // coefficient of the load-balancing loss (0: off)
  int64_t pad_id = 0;             // fills rows padded to a multiple of the cp size
  // Validation rows, evaluated by validate() (empty: none).
  std::vector<data::Batch> validation;
};

class SftObjective final : public Objective {
 public:
  // Collective calls go over `mesh` (its world counts the step's tokens, its cp group shares each
  // row); the mesh must outlive the objective.
  SftObjective(std::unique_ptr<BatchSource> source, SftOptions options, parallel::DeviceMesh& mesh);

  void configure(model::Gemma4& model) override;
  std::unique_ptr<StepBatch> next_batch() override;
  MicroLoss forward(const model::Gemma4& model, const StepBatch& batch, int64_t i) override;
  // {"validation_loss", "validation_perplexity"}: the mean cross-entropy over the validation rows
  // (each split over the cp group); empty without validation rows.
  Metrics validate(const model::Gemma4& model) override;

  // The data position: micro-batches consumed (trainer_state.json "data_index").
  void save(const std::filesystem::path& dir, nlohmann::json& state) override;
  void load(const std::filesystem::path& dir, const nlohmann::json& state) override;

 private:
  std::unique_ptr<BatchSource> source_;
  SftOptions opt_;
  parallel::DeviceMesh& mesh_;
  bool fused_loss_ = false;  // the model is on the GPU: the LM head and loss run fused, no logits
  int64_t data_index_ = 0;
};

// The model's inputs for a batch on one rank: ids, positions, labels and the batch's media.
model::ForwardInputs batch_inputs(const data::Batch& b);

// Mean cross-entropy over the trained tokens of these batches on one rank (no tape).
double evaluate_loss(const model::Gemma4& model, const std::vector<data::Batch>& batches, int64_t* tokens = nullptr);

}  // namespace g4::train
