#include "parallel/device_mesh.h"

namespace g4::parallel {

std::string MeshShape::str() const {
  return detail::concat("dp_shard ", dp_shard, " x ep ", ep, " x cp ", cp);
}

model::ExpertRange expert_range(int64_t num_experts, int ep_rank, int ep_size, const std::string& what) {
  G4_CHECK(ep_size >= 1 && ep_rank >= 0 && ep_rank < ep_size, what, ": rank ", ep_rank,
           " is not a rank of an expert-parallel group of ", ep_size);
  G4_CHECK(num_experts >= 0 && num_experts % ep_size == 0, what, ": the model's ", num_experts,
           " experts do not divide evenly over ep ", ep_size);
  const int64_t per = num_experts / ep_size;
  return model::ExpertRange{ep_rank * per, per};
}

model::ExpertRange expert_range(const io::ModelConfig& cfg, int ep_rank, int ep_size) {
  return expert_range(cfg.enable_moe_block ? cfg.num_experts : 0, ep_rank, ep_size);
}

namespace {
void check_degrees(const MeshShape& s) {
  G4_CHECK(s.dp_shard >= 1 && s.ep >= 1 && s.cp >= 1, "device mesh ", s.str(), ": every degree must be at least 1");
}
}  // namespace

void MeshShape::validate(int world_size) const {
  check_degrees(*this);
  G4_CHECK(this->world_size() == world_size, "device mesh ", str(), " needs ", this->world_size(),
           " ranks, but the job has ", world_size);
}

void MeshShape::validate_for_model(int64_t num_experts, int64_t seq_len) const {
  check_degrees(*this);
  G4_CHECK(num_experts >= 0, "device mesh ", str(), ": num_experts ", num_experts, " is negative");
  G4_CHECK(num_experts > 0 || ep == 1, "device mesh ", str(), ": expert parallelism (ep ", ep,
           ") needs a mixture-of-experts model, and this model is dense");
  if (num_experts > 0) expert_range(num_experts, 0, ep, "device mesh " + str());
  G4_CHECK(seq_len >= 1, "device mesh ", str(), ": seq_len ", seq_len, " is not a sequence length");
  G4_CHECK(seq_len % cp == 0, "device mesh ", str(), ": seq_len ", seq_len, " does not split into ", cp,
           " equal context-parallel shards");
}

MeshCoord MeshShape::coord_of(int rank) const {
  check_degrees(*this);
  G4_CHECK(rank >= 0 && rank < world_size(), "device mesh ", str(), ": rank ", rank, " out of range");
  return MeshCoord{rank / (ep * cp), (rank / cp) % ep, rank % cp};
}

int MeshShape::rank_of(const MeshCoord& c) const {
  check_degrees(*this);
  G4_CHECK(c.dp >= 0 && c.dp < dp_shard && c.ep >= 0 && c.ep < ep && c.cp >= 0 && c.cp < cp, "device mesh ", str(),
           ": coordinate (dp ", c.dp, ", ep ", c.ep, ", cp ", c.cp, ") out of range");
  return (c.dp * ep + c.ep) * cp + c.cp;
}

DeviceMesh::DeviceMesh(Communicator& world, MeshShape shape) : world_(world), shape_(shape) {
  shape_.validate(world.size());
  const MeshCoord c = coord();
  const MeshShape& s = shape_;
  // A group is the ranks that agree on the other two coordinates, keyed by its own coordinate so
  // that the group rank is that coordinate.
  dp_ = world.split(c.ep * s.cp + c.cp, c.dp);
  ep_ = world.split(c.dp * s.cp + c.cp, c.ep);
  cp_ = world.split(c.dp * s.ep + c.ep, c.cp);
  G4_CHECK(dp_->size() == s.dp_shard && dp_->rank() == c.dp && ep_->size() == s.ep && ep_->rank() == c.ep &&
               cp_->size() == s.cp && cp_->rank() == c.cp,
           "device mesh ", s.str(), ": the ", world.backend(), " communicator split rank ", world.rank(),
           " into groups that do not match its coordinates");
}

}  // namespace g4::parallel
