// Mesh shapes, the rank layout, and the errors for meshes a job or model cannot have. The
// multi-rank groups are checked in mpi_ranks_test.cpp.
#include "support/error_message.h"
#include "parallel/device_mesh.h"

#include <gtest/gtest.h>

#include "parallel/single_communicator.h"

namespace g4::parallel {
namespace {

using ::g4::test::error_of;

TEST(MeshShape, LayoutHasContextFastestThenExpertThenData) {
  const MeshShape s{.dp_shard = 2, .ep = 3, .cp = 2};
  EXPECT_EQ(s.world_size(), 12);
  EXPECT_EQ(s.str(), "dp_shard 2 x ep 3 x cp 2");
  EXPECT_EQ(s.coord_of(0), (MeshCoord{0, 0, 0}));
  EXPECT_EQ(s.coord_of(1), (MeshCoord{0, 0, 1}));
  EXPECT_EQ(s.coord_of(2), (MeshCoord{0, 1, 0}));
  EXPECT_EQ(s.coord_of(7), (MeshCoord{1, 0, 1}));
  EXPECT_EQ(s.coord_of(11), (MeshCoord{1, 2, 1}));
  for (int r = 0; r < 12; ++r) EXPECT_EQ(s.rank_of(s.coord_of(r)), r);
  EXPECT_NE(error_of([&] { s.coord_of(12); }).find("rank 12 out of range"), std::string::npos);
  EXPECT_NE(error_of([&] {
              s.rank_of({0, 3, 0});
            }).find("coordinate (dp 0, ep 3, cp 0) out of range"),
            std::string::npos);
}

TEST(MeshShape, ProductMustBeTheWorldSize) {
  EXPECT_NO_THROW((MeshShape{2, 2, 1}.validate(4)));
  EXPECT_NE(error_of([] {
              MeshShape{2, 2, 1}.validate(8);
            }).find("device mesh dp_shard 2 x ep 2 x cp 1 needs 4 ranks, but the job has 8"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              MeshShape{0, 1, 1}.validate(0);
            }).find("every degree must be at least 1"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              MeshShape{1, -2, 1}.coord_of(0);
            }).find("every degree must be at least 1"),
            std::string::npos);
}

TEST(ExpertRange, EachEpRankHoldsAnEqualContiguousShare) {
  for (int r = 0; r < 4; ++r) {
    const model::ExpertRange e = expert_range(8, r, 4);
    EXPECT_EQ(e.begin, 2 * r);
    EXPECT_EQ(e.count, 2);
  }
  io::ModelConfig dense;
  EXPECT_EQ(expert_range(dense, 1, 2).count, 0);  // a dense model holds no experts on any rank
  EXPECT_NE(error_of([] {
              expert_range(8, 0, 3, "checkpoint out/step-2");
            }).find("checkpoint out/step-2: the model's 8 experts do not divide evenly over ep 3"),
            std::string::npos);
  EXPECT_NE(error_of([] { expert_range(8, 2, 2); }).find("rank 2 is not a rank of an expert-parallel group of 2"),
            std::string::npos);
}

TEST(MeshShape, ModelMustSplitOverTheMesh) {
  EXPECT_NO_THROW((MeshShape{1, 4, 2}.validate_for_model(128, 4096)));
  EXPECT_NO_THROW((MeshShape{4, 1, 1}.validate_for_model(0, 7)));  // dense model, data parallel only
  EXPECT_NE(error_of([] {
              MeshShape{1, 4, 1}.validate_for_model(6, 64);
            }).find("the model's 6 experts do not divide evenly over ep 4"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              MeshShape{1, 2, 1}.validate_for_model(0, 64);
            }).find("expert parallelism (ep 2) needs a mixture-of-experts model, and this model is dense"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              MeshShape{1, 1, 3}.validate_for_model(8, 100);
            }).find("seq_len 100 does not split into 3 equal context-parallel shards"),
            std::string::npos);
  EXPECT_NE(error_of([] { MeshShape{1, 1, 1}.validate_for_model(8, 0); }).find("seq_len 0"), std::string::npos);
}

TEST(DeviceMesh, OneRankWorld) {
  SingleCommunicator world;
  DeviceMesh mesh(world, {});
  EXPECT_EQ(mesh.coord(), (MeshCoord{0, 0, 0}));
  for (Communicator* group : {&mesh.dp_group(), &mesh.ep_group(), &mesh.cp_group()}) {
    EXPECT_EQ(group->size(), 1);
    EXPECT_EQ(group->rank(), 0);
  }
  EXPECT_EQ(&mesh.world(), &world);
  EXPECT_NO_THROW(mesh.validate_for_model(4, 16));
  EXPECT_NE(error_of([&] {
              DeviceMesh(world, {.dp_shard = 1, .ep = 2});
            }).find("dp_shard 1 x ep 2 x cp 1 needs 2 ranks, but the job has 1"),
            std::string::npos);
}

}  // namespace
}  // namespace g4::parallel
