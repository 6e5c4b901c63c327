// Times DiffusionGemma's denoising step on the GPU at the released 26B-A4B widths (random bf16
// weights): one denoiser pass over a canvas (C tokens per row, attending to a prompt's cache) and the
// step statistics over its [B*C, V] logits, per batch size, with the kernels of one pass from CUPTI.
//   bench_denoise [--layers 30] [--batch 1,4] [--prompt 256] [--canvas 256] [--profile]
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "core/cuda/runtime.h"
#include "core/kernel_profile.h"
#include "core/random.h"
#include "diffusion/model.h"
#include "diffusion/step_stats.h"
#include "io/hf_config.h"
#include "model/named_configs.h"

namespace {

using namespace g4;

double time_ms(const std::function<void()>& fn, int iters) {
  fn();
  cudaEvent_t start, stop;
  G4_CUDA_CHECK(cudaEventCreate(&start));
  G4_CUDA_CHECK(cudaEventCreate(&stop));
  G4_CUDA_CHECK(cudaEventRecord(start, cuda::stream()));
  for (int i = 0; i < iters; ++i) fn();
  G4_CUDA_CHECK(cudaEventRecord(stop, cuda::stream()));
  G4_CUDA_CHECK(cudaEventSynchronize(stop));
  float ms = 0;
  G4_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  return ms / iters;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t layers = 30, prompt = 256, canvas = 256;
  std::vector<int64_t> batches = {1, 4};
  bool profile = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
    if (a == "--layers") layers = std::atoll(next().c_str());
    else if (a == "--prompt") prompt = std::atoll(next().c_str());
    else if (a == "--canvas") canvas = std::atoll(next().c_str());
    else if (a == "--profile") profile = true;
    else if (a == "--batch") {
      batches.clear();
      std::stringstream ss(next());
      for (std::string t; std::getline(ss, t, ',');) batches.push_back(std::atoll(t.c_str()));
    } else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  nlohmann::json j = model::named_config("diffusiongemma-26b-a4b", {{"num_hidden_layers", layers}});
  j["canvas_length"] = canvas;
  const io::ModelConfig cfg = io::parse_model_config(j, "diffusiongemma-26b-a4b");
  model::Gemma4 m(cfg, {}, DType::BF16, Device::CUDA);
  m.init_weights(1);
  const int64_t V = cfg.vocab_size;
  std::printf("bench_denoise: DiffusionGemma 26B-A4B widths, %lld layers, prompt %lld, canvas %lld\n",
              static_cast<long long>(layers), static_cast<long long>(prompt), static_cast<long long>(canvas));
  for (int64_t B : batches) {
    diffusion::EncoderCache cache;
    const Tensor ids = randint({B, prompt}, 7, 3, V);
    const double enc_ms = time_ms([&] {
      cache = diffusion::EncoderCache();
      diffusion::encode(m, ids, {}, cache);
    }, 3);
    const Tensor cv = randint({B, canvas}, 9, 3, V);
    Tensor sc;
    std::vector<uint64_t> seeds(static_cast<size_t>(B * canvas), 5), draws(static_cast<size_t>(B * canvas), 0);
    auto step = [&] {
      const Tensor logits = diffusion::denoise(m, cv, cache, sc);
      diffusion::StepStats st = diffusion::step_stats(logits.reshape({B * canvas, V}), 0.6f, seeds, draws, DType::BF16);
      sc = st.processed.reshape({B, canvas, V});
    };
    step();
    const double step_ms = time_ms(step, 5);
    std::printf("  batch %3lld: encode %lld tokens %8.2f ms; denoising step %8.2f ms (%.1f canvas tokens/ms)\n",
                static_cast<long long>(B), static_cast<long long>(prompt), enc_ms, step_ms,
                B * canvas / step_ms);
    if (profile) {
      profile_start();
      step();
      const KernelProfile prof = profile_stop();
      std::printf("    one step: %.3f ms, GPU busy %.3f ms\n", prof.window_ms, prof.busy_ms);
      for (size_t i = 0; i < prof.kernels.size() && i < 12; ++i)
        std::printf("      %8.3f ms %5lld x  %.100s\n", prof.kernels[i].total_ms,
                    static_cast<long long>(prof.kernels[i].count), prof.kernels[i].name.c_str());
    }
  }
  return 0;
}
