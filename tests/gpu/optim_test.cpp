// AdamW and the squared norm on the GPU against the CPU: several steps on random tensors (f32
// masters, f32 and bf16 gradients, decay on and off, unaligned views for the scalar path), the
// bf16 copy of the master, the per-element decay mask, the device-side gradient factor, bf16
// moments, and masters kept as bf16 parameters plus remainders.
#include "gpu_test.h"
#include "ops/optim.h"

namespace g4 {
namespace {

// Step s (from 1) of the tests' five: lr 1e-3, weight decay 0.1, a clipping scale at step 3.
ops::AdamWHyper hyper_at(int64_t s) {
  ops::AdamWHyper h;
  h.lr = 1e-3;
  h.weight_decay = 0.1;
  h.step = s;
  h.grad_scale = s == 3 ? 0.25 : 1.0;
  return h;
}

TEST(GpuAdamW, MatchesCpuOverSteps) {
  G4_REQUIRE_GPU();
  for (int64_t n : {int64_t{1}, int64_t{5}, int64_t{1027}, (int64_t{1} << 20) + 3}) {
    for (DType gdt : {DType::F32, DType::BF16}) {
      for (bool decay : {true, false}) {
        for (bool unaligned : {false, true}) {
          const std::string tag = "n=" + std::to_string(n) + (gdt == DType::BF16 ? " bf16 grad" : " f32 grad") +
                                  (decay ? " decay" : "") + (unaligned ? " unaligned" : "");
          // Unaligned: views that start one element into a larger buffer (the scalar path).
          auto on_gpu = [&](const Tensor& cpu) {
            if (!unaligned) return cpu.to(Device::CUDA);
            Tensor big = Tensor::zeros({n + 1}, cpu.dtype(), Device::CUDA);
            Tensor view = big.slice0(1, n);
            view.copy_from(cpu);
            return view;
          };
          Tensor p = randn({n}, 1), m = Tensor::zeros({n}, DType::F32), v = Tensor::zeros({n}, DType::F32);
          Tensor gp = on_gpu(p), gm = on_gpu(m), gv = on_gpu(v);
          Tensor copy = Tensor::empty({n}, DType::BF16), gcopy = on_gpu(copy);
          for (int64_t s = 1; s <= 5; ++s) {
            const ops::AdamWHyper h = hyper_at(s);
            const Tensor g = randn({n}, 50 + static_cast<uint64_t>(s)).to(gdt);
            const Tensor factor = Tensor::scalar(s == 4 ? 0.5 : 1.0);
            const Tensor gg = on_gpu(g);
            // With decay, every other step exempts a random half of the elements.
            Tensor mask;
            if (decay && s % 2 == 0) mask = randint({n}, 70 + static_cast<uint64_t>(s), 0, 2, DType::I64).to(DType::U8);
            ops::adamw_step(p, g, m, v, h, decay, mask, factor, &copy);
            ops::adamw_step(gp, gg, gm, gv, h, decay, mask.defined() ? on_gpu(mask) : Tensor(), factor.to(Device::CUDA),
                            &gcopy);
          }
          test::expect_close_scaled(gp, p, 0, 1e-6, tag + " master");
          test::expect_close_scaled(gm, m, 0, 1e-6, tag + " exp_avg");
          test::expect_close_scaled(gv, v, 0, 1e-6, tag + " exp_avg_sq");
          test::expect_close_scaled(gcopy, copy, 0, 1e-2, tag + " bf16 copy");
        }
      }
    }
  }
}

// bf16 moments and the remainder form on the GPU against the CPU: the same five steps on random
// tensors, f32 and bf16 gradients, aligned and unaligned (the scalar path), at sizes with and
// without a tail of the 4-element vectors.
TEST(GpuAdamW, Bf16MomentsAndRemaindersMatchCpu) {
  G4_REQUIRE_GPU();
  for (int64_t n : {int64_t{3}, int64_t{1029}, (int64_t{1} << 20) + 1}) {
    for (DType moments : {DType::BF16, DType::F32}) {
      for (DType gdt : {DType::F32, DType::BF16}) {
        for (bool unaligned : {false, true}) {
          const std::string tag = "n=" + std::to_string(n) + (moments == DType::BF16 ? " bf16 moments" : " f32 moments") +
                                  (gdt == DType::BF16 ? " bf16 grad" : " f32 grad") + (unaligned ? " unaligned" : "");
          const auto on_gpu = [&](const Tensor& cpu) {
            if (!unaligned) return cpu.to(Device::CUDA);
            Tensor big = Tensor::zeros({n + 1}, cpu.dtype(), Device::CUDA);
            Tensor view = big.slice0(1, n);
            view.copy_from(cpu);
            return view;
          };
          // A plain f32 master (bf16 moments only) and a master split into parameter and remainder.
          Tensor p = randn({n}, 1), m = Tensor::zeros({n}, moments), v = Tensor::zeros({n}, moments);
          auto [param, rem] = ops::split_master(randn({n}, 2));
          Tensor m2 = m.clone(), v2 = v.clone();
          Tensor gp = on_gpu(p), gm = on_gpu(m), gv = on_gpu(v);
          Tensor gparam = on_gpu(param), grem = on_gpu(rem), gm2 = on_gpu(m2), gv2 = on_gpu(v2);
          for (int64_t s = 1; s <= 5; ++s) {
            const ops::AdamWHyper h = hyper_at(s);
            const Tensor g = randn({n}, 50 + static_cast<uint64_t>(s)).to(gdt);
            const Tensor factor = Tensor::scalar(s == 4 ? 0.5 : 1.0);
            const Tensor gg = on_gpu(g);
            if (moments == DType::BF16) {
              ops::adamw_step(p, g, m, v, h, true, {}, factor);
              ops::adamw_step(gp, gg, gm, gv, h, true, {}, factor.to(Device::CUDA));
            }
            // Odd steps decay every element, even steps only those a random mask picks.
            const Tensor mask = s % 2 == 1 ? Tensor() : randint({n}, 70 + static_cast<uint64_t>(s), 0, 2, DType::I64).to(DType::U8);
            ops::adamw_step_remainders(param, rem, g, m2, v2, h, true, mask, factor);
            ops::adamw_step_remainders(gparam, grem, gg, gm2, gv2, h, true, mask.defined() ? on_gpu(mask) : Tensor(),
                                       factor.to(Device::CUDA));
          }
          if (moments == DType::BF16) {
            test::expect_close_scaled(gp, p, 0, 1e-6, tag + " master");
            test::expect_close_scaled(gm.to(DType::F32), m.to(DType::F32), 0, 1e-2, tag + " exp_avg");
            test::expect_close_scaled(gv.to(DType::F32), v.to(DType::F32), 0, 1e-2, tag + " exp_avg_sq");
          }
          const Tensor gmaster = ops::join_master(gparam.to(Device::CPU), grem.to(Device::CPU));
          test::expect_close_scaled(gmaster, ops::join_master(param, rem), 0, 1e-6, tag + " remainder master");
          test::expect_close_scaled(gparam, param, 0, 1e-2, tag + " remainder parameter");
          test::expect_close_scaled(gm2.to(DType::F32), m2.to(DType::F32), 0, 1e-2, tag + " remainder exp_avg");
        }
      }
    }
  }
}

TEST(GpuAdamW, UndefinedGradientAndErrors) {
  G4_REQUIRE_GPU();
  Tensor p = randn({100}, 1), m = Tensor::full({100}, 0.1), v = Tensor::full({100}, 0.2);
  Tensor gp = p.to(Device::CUDA), gm = m.to(Device::CUDA), gv = v.to(Device::CUDA);
  ops::AdamWHyper h;
  h.lr = 1e-2;
  h.weight_decay = 0.5;
  h.step = 2;
  ops::adamw_step(p, Tensor(), m, v, h);
  ops::adamw_step(gp, Tensor(), gm, gv, h);
  test::expect_close_scaled(gp, p, 0, 1e-6, "zero gradient master");
  Tensor cpu_m = Tensor::zeros({100}, DType::F32);
  EXPECT_THROW(ops::adamw_step(gp, Tensor(), cpu_m, gv, h), Error);
  Tensor bf = gp.to(DType::BF16);
  EXPECT_THROW(ops::adamw_step(bf, Tensor(), gm, gv, h), Error);
}

TEST(GpuSquaredNorm, MatchesCpu) {
  G4_REQUIRE_GPU();
  for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{1000}, (int64_t{1} << 22) + 5}) {
    const Tensor g = test::randn_bf16_exact({n}, 3, 0.01);
    const double want = ops::squared_norm(g.to(DType::F64)).item();
    for (DType dt : {DType::F32, DType::BF16}) {
      const Tensor sq = ops::squared_norm(g.to(dt).to(Device::CUDA));
      EXPECT_EQ(sq.device(), Device::CUDA);
      EXPECT_EQ(sq.dim(), 0);
      const double got = sq.item();
      EXPECT_NEAR(got, want, 1e-5 * want) << "n=" << n;
      std::printf("  squared_norm n=%lld %s: rel err %.3e\n", static_cast<long long>(n),
                  dt == DType::F32 ? "f32" : "bf16", std::fabs(got - want) / want);
    }
  }
  // Unaligned view (scalar path) and the deterministic order.
  Tensor big = test::gpu_f32(randn({1001}, 4));
  const Tensor view = big.slice0(1, 1000);
  const double want = ops::squared_norm(test::host_f32(view).to(DType::F64)).item();
  EXPECT_NEAR(ops::squared_norm(view).item(), want, 1e-5 * want);
  EXPECT_EQ(ops::squared_norm(big).item(), ops::squared_norm(big).item());
  EXPECT_EQ(ops::squared_norm(Tensor::zeros({0}, DType::F32, Device::CUDA)).item(), 0.0);
}

}  // namespace
}  // namespace g4
