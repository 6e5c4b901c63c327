// The ranks of a job arranged as a dp_shard x ep x cp grid, with a communicator for each line of
// the grid: data-parallel shards (FSDP), expert-parallel groups (MoE all-to-all) and
// context-parallel groups (sequence shards, ring attention).
//
// Layout: cp varies fastest, then ep, then dp_shard:
//   rank = (dp * ep_size + ep) * cp_size + cp
// so the groups that talk most often (cp: every attention layer; ep: every MoE layer) are
// neighbouring ranks, which launchers place on the same node.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "io/hf_config.h"
#include "model/params.h"
#include "parallel/communicator.h"

namespace g4::parallel {

// The routed experts rank ep_rank of an ep_size-rank expert-parallel group holds: an equal,
// contiguous share, [ep_rank * E / ep_size, (ep_rank + 1) * E / ep_size). Everything that splits
// experts over ranks asks this function; it is an error when they do not divide evenly. `what`
// begins the error message (the mesh or checkpoint being checked).
model::ExpertRange expert_range(int64_t num_experts, int ep_rank, int ep_size,
                                const std::string& what = "expert parallelism");
// The share of a model with this config; a dense model holds no experts (the empty range).
model::ExpertRange expert_range(const io::ModelConfig& cfg, int ep_rank, int ep_size);

struct MeshCoord {
  int dp = 0;
  int ep = 0;
  int cp = 0;
  bool operator==(const MeshCoord&) const = default;
};

struct MeshShape {
  int dp_shard = 1;
  int ep = 1;
  int cp = 1;

  int64_t world_size() const { return int64_t{dp_shard} * ep * cp; }
  std::string str() const;  // "dp_shard 2 x ep 2 x cp 1"
  // Every degree >= 1 and their product == world_size.
  void validate(int world_size) const;
  // The model splits this way: experts divide evenly over ep (ep > 1 needs an MoE model:
  // num_experts 0 means dense) and sequences into cp equal contiguous shards.
  void validate_for_model(int64_t num_experts, int64_t seq_len) const;
  // The layout above, both ways.
  MeshCoord coord_of(int rank) const;
  int rank_of(const MeshCoord& c) const;
};

class DeviceMesh {
 public:
  // Collective over `world`: every rank builds the mesh with the same shape. `world` must outlive it.
  DeviceMesh(Communicator& world, MeshShape shape);

  const MeshShape& shape() const { return shape_; }
  Communicator& world() { return world_; }
  MeshCoord coord() const { return shape_.coord_of(world_.rank()); }

  // Each group's rank equals this rank's coordinate along that dimension.
  Communicator& dp_group() { return *dp_; }  // same (ep, cp), dp_shard ranks
  Communicator& ep_group() { return *ep_; }  // same (dp, cp), ep ranks
  Communicator& cp_group() { return *cp_; }  // same (dp, ep), cp ranks

  void validate_for_model(int64_t num_experts, int64_t seq_len) const {
    shape_.validate_for_model(num_experts, seq_len);
  }
  // The experts this rank's model holds (expert_range at its ep coordinate).
  model::ExpertRange local_experts(const io::ModelConfig& cfg) const {
    return expert_range(cfg, coord().ep, shape_.ep);
  }

 private:
  Communicator& world_;
  MeshShape shape_;
  std::unique_ptr<Communicator> dp_, ep_, cp_;
};

}  // namespace g4::parallel
