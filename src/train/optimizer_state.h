// Reads the AdamW moments of a checkpoint piece by piece, whichever layout wrote them, so that a
// run can resume on a different number of ranks (or another sharding) than the one that saved:
//   - optimizer.safetensors: whole tensors (one rank, or replicated ranks);
//   - sharded (parallel.fsdp): optimizer-rank<r>-of<n>.safetensors files whose metadata key
//     "g4_optimizer" describes the mesh, the flat layout of the replicated parameters (its units,
//     each split over the dp shards) and the expert split; flat shard d lives in the file of rank
//     (dp d, ep 0, cp 0). The moments of expert slice e: format 2 shards them as a flat layout of
//     their own over dp, shard d in the file of rank (dp d, ep e, cp 0); format 1 kept them whole
//     in the file of rank (dp 0, ep e, cp 0);
//   - per-rank files without that metadata (expert parallelism without fsdp, older checkpoints):
//     only the same number of ranks can read them.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "parallel/fsdp.h"

namespace g4::train {

// The metadata key of a sharded optimizer file, and its format tag.
inline constexpr const char* kOptimizerMetadataKey = "g4_optimizer";
// Format 2: the flat layout is cut into units (one per block of the forward), each split over the
// shards; format 1 (one unit) is still read.
inline constexpr const char* kShardedOptimizerFormat = "g4-sharded-adamw-2";
inline constexpr const char* kShardedOptimizerFormatV1 = "g4-sharded-adamw-1";

class OptimizerStateReader {
 public:
  // saved_ranks: the number of ranks that wrote the checkpoint (trainer_state.json "ranks");
  // rank / world_size: this run's.
  OptimizerStateReader(const std::string& checkpoint_dir, int64_t saved_ranks, int64_t rank, int64_t world_size);

  bool sharded() const { return !meta_.is_null(); }
  // Flat elements [begin, begin + count) of moment `kind` ("exp_avg" | "exp_avg_sq") of the
  // replicated parameter `name`.
  Tensor replicated(const std::string& kind, const std::string& name, int64_t begin, int64_t count) const;
  // Experts [first, first + count) of moment `kind` of the expert parameter `name`.
  Tensor experts(const std::string& kind, const std::string& name, int64_t first, int64_t count) const;

 private:
  const io::SafetensorsReader& file(int64_t rank) const;
  // Elements [flat_begin, + count) of the sharded flat tensor `tensor` in `layout`, from the files
  // of the ranks (dp d, ep, cp 0) that hold its shards d.
  Tensor read_flat(const parallel::FlatLayout& layout, const std::string& tensor, int ep, int64_t flat_begin,
                   int64_t count) const;
  Tensor whole(const io::SafetensorsReader& f, const std::string& tensor) const;

  std::string dir_;
  int64_t saved_ranks_;
  std::string single_;  // the one file every tensor comes from (non-sharded layouts)
  nlohmann::json meta_;  // sharded layout metadata, null otherwise
  parallel::FlatLayout flat_;
  std::optional<parallel::FlatLayout> expert_flat_;  // experts sharded over dp (format 2)
  parallel::MeshShape mesh_;
  mutable std::map<int64_t, std::unique_ptr<io::SafetensorsReader>> files_;
};

}  // namespace g4::train
