#include "parallel/data_parallel.h"

#include <cstring>
#include <string>
#include <vector>

#include "autograd/functions.h"

namespace g4::parallel {

namespace {

// Sums the gradients of `names` over `group`, packed into flat buckets of one dtype.
void sum_gradients(Communicator& group, model::ParamStore& params, const std::vector<std::string>& names,
                   size_t bucket_bytes) {
  std::vector<ag::Var*> bucket;
  size_t bytes = 0;
  auto flush = [&] {
    if (bucket.empty() || group.size() == 1) {  // one rank: the sum is the gradient itself
      bucket.clear();
      bytes = 0;
      return;
    }
    const DType dtype = bucket.front()->value().dtype();
    Tensor flat = Tensor::empty({static_cast<int64_t>(bytes / dtype_size(dtype))}, dtype);
    char* at = static_cast<char*>(flat.raw());
    for (ag::Var* v : bucket) {
      std::memcpy(at, v->grad().raw(), v->grad().nbytes());
      at += v->grad().nbytes();
    }
    group.all_reduce(flat, ReduceOp::Sum);
    at = static_cast<char*>(flat.raw());
    for (ag::Var* v : bucket) {
      Tensor& g = v->owned_grad();
      std::memcpy(g.raw(), at, g.nbytes());
      at += g.nbytes();
    }
    bucket.clear();
    bytes = 0;
  };
  for (const std::string& name : names) {
    ag::Var& v = params.at(name);
    if (!v.requires_grad()) continue;
    if (!v.grad().defined()) ag::accumulate_grad(v.impl(), Tensor::zeros(v.shape(), v.value().dtype()));
    G4_CHECK(v.grad().dtype() == v.value().dtype(), "reduce_gradients: ", name, " is ", v.value().describe(),
             " but its gradient is ", v.grad().describe());
    const bool other_dtype = !bucket.empty() && bucket.front()->value().dtype() != v.value().dtype();
    if (other_dtype || (!bucket.empty() && bytes + v.grad().nbytes() > bucket_bytes)) flush();
    bucket.push_back(&v);
    bytes += v.grad().nbytes();
  }
  flush();
}

}  // namespace

int64_t global_token_count(const Tensor& labels, Communicator& group) {
  const Tensor targets = model::shift_labels(labels);
  int64_t counted = 0;
  for (int64_t i = 0; i < targets.numel(); ++i) counted += targets.data<int64_t>()[i] != -100;
  Tensor t = Tensor::scalar(static_cast<double>(counted), DType::I64);
  group.all_reduce(t, ReduceOp::Sum);
  return t.data<int64_t>()[0];
}

ag::Var global_loss_share(const model::ForwardOutputs& out, int64_t global_tokens) {
  G4_CHECK(out.loss.defined(), "global_loss_share: the forward had no labels, so there is no loss");
  G4_CHECK(out.counted_tokens <= global_tokens, "global_loss_share: this rank counted ", out.counted_tokens,
           " tokens, more than the global count ", global_tokens, " (count them with global_token_count)");
  // No counted token anywhere: every share is 0 (as the mean over no token is).
  const double share =
      global_tokens > 0 ? static_cast<double>(out.counted_tokens) / static_cast<double>(global_tokens) : 0.0;
  return ag::scale(out.loss, share);
}

void reduce_gradients(model::ParamStore& params, DeviceMesh& mesh, size_t bucket_bytes) {
  G4_CHECK(bucket_bytes > 0, "reduce_gradients: bucket_bytes must be positive");
  std::vector<std::string> replicated, experts;
  for (const std::string& name : params.order)
    (model::split_by_expert(params.kind(name)) ? experts : replicated).push_back(name);
  sum_gradients(mesh.world(), params, replicated, bucket_bytes);
  // Experts: over every rank holding the same slice, i.e. the same ep coordinate (dp x cp).
  sum_gradients(mesh.dp_group(), params, experts, bucket_bytes);
  sum_gradients(mesh.cp_group(), params, experts, bucket_bytes);
}

void reduce_expert_gradients(model::ParamStore& params, DeviceMesh& mesh, size_t bucket_bytes) {
  G4_CHECK(bucket_bytes > 0, "reduce_expert_gradients: bucket_bytes must be positive");
  std::vector<std::string> experts;
  for (const std::string& name : params.order)
    if (model::split_by_expert(params.kind(name))) experts.push_back(name);
  sum_gradients(mesh.dp_group(), params, experts, bucket_bytes);
  sum_gradients(mesh.cp_group(), params, experts, bucket_bytes);
}

}  // namespace g4::parallel
