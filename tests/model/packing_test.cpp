// Packed rows: documents sharing a row (position ids restarting at 0) give the same losses and
// gradients as the documents run one by one. Run in f64, so any difference beyond rounding is a
// mask or position bug, not summation order.
#include <gtest/gtest.h>

#include <cmath>

#include "autograd/variable.h"
#include "model/state_dict_adapter.h"
#include "support/test_paths.h"

namespace g4 {
namespace {

std::map<std::string, Tensor> grads_of(model::Gemma4& m) {
  std::map<std::string, Tensor> g;
  for (const auto& n : m.params().order) g[n] = m.params().at(n).grad().to(DType::F64);
  m.params().zero_grad();
  return g;
}

class Packing : public ::testing::TestWithParam<std::string> {};

TEST_P(Packing, PackedRowEqualsDocumentsAlone) {
  auto m = model::load_hf_model(test::data_dir() + "/" + GetParam(), {}, DType::F64);
  const std::vector<int64_t> lengths = {9, 14, 6};  // the middle one is longer than the window
  int64_t S = 0;
  for (int64_t n : lengths) S += n;
  Tensor ids = Tensor::empty({1, S}, DType::I64), pos = Tensor::empty({1, S}, DType::I64);
  Tensor labels = Tensor::empty({1, S}, DType::I64);
  std::vector<Tensor> doc_ids;
  int64_t at = 0;
  for (size_t d = 0; d < lengths.size(); ++d) {
    Tensor one = Tensor::empty({1, lengths[d]}, DType::I64);
    for (int64_t i = 0; i < lengths[d]; ++i) {
      const int64_t tok = 3 + (17 * (at + i) + 5 * static_cast<int64_t>(d)) % 250;
      one.data<int64_t>()[i] = ids.data<int64_t>()[at + i] = tok;
      pos.data<int64_t>()[at + i] = i;
      // A document's first token is never a target of the previous document's last token.
      labels.data<int64_t>()[at + i] = i == 0 ? -100 : tok;
    }
    doc_ids.push_back(one);
    at += lengths[d];
  }

  model::ForwardInputs packed{ids, Tensor(), pos, labels};
  model::ForwardOutputs out = m->forward(packed);
  const int64_t total = out.counted_tokens;
  ag::backward(out.loss);
  const auto packed_grads = grads_of(*m);

  double loss_sum = 0;
  for (const Tensor& doc : doc_ids) {
    Tensor doc_labels = doc.clone();
    doc_labels.data<int64_t>()[0] = -100;
    model::ForwardOutputs o = m->forward({doc, Tensor(), Tensor(), doc_labels});
    const double weight = static_cast<double>(o.counted_tokens) / static_cast<double>(total);
    loss_sum += o.loss.value().item() * weight;
    ag::backward(o.loss, weight);
  }
  const auto alone_grads = grads_of(*m);
  EXPECT_NEAR(out.loss.value().item(), loss_sum, 1e-12);
  for (const auto& [name, g] : packed_grads) {
    const Tensor& h = alone_grads.at(name);
    double diff = 0, norm = 0;
    for (int64_t i = 0; i < g.numel(); ++i) {
      diff += std::pow(g.data<double>()[i] - h.data<double>()[i], 2);
      norm += std::pow(h.data<double>()[i], 2);
    }
    EXPECT_LE(std::sqrt(diff), std::max(1e-10 * std::sqrt(norm), 1e-14)) << name;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Packing,
                         ::testing::Values("hf-gemma4/tiny-moe", "hf-gemma4/tiny-dense-ple",
                                           "hf-gemma4-varied/var-ple-shared"));

}  // namespace
}  // namespace g4
