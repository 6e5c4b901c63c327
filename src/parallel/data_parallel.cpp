#include "parallel/data_parallel.h"

#include <string>
#include <vector>

#include "autograd/functions.h"

namespace g4::parallel {

namespace {

// The dtype a parameter's gradient has: f32 for bf16 parameters that accumulate in f32 (the
// GPU's compute copies), else the parameter's own.
DType gradient_dtype(const ag::Var& v) { return v.impl()->fp32_grad ? DType::F32 : v.value().dtype(); }

// Sums the gradients of `names` over `group`, packed into flat buckets of one dtype on the
// gradients' device. Packing goes through tensor copies (views of the flat bucket), so it is the
// same for host and device memory.
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
    const Tensor& first = bucket.front()->grad();
    Tensor flat = Tensor::empty({static_cast<int64_t>(bytes / dtype_size(first.dtype()))}, first.dtype(),
                                first.device());
    int64_t at = 0;
    for (ag::Var* v : bucket) {
      const Tensor& g = v->grad();
      flat.slice0(at, g.numel()).reshape(g.shape()).copy_from(g);
      at += g.numel();
    }
    group.all_reduce(flat, ReduceOp::Sum);
    at = 0;
    for (ag::Var* v : bucket) {
      Tensor& g = v->owned_grad();
      g.copy_from(flat.slice0(at, g.numel()).reshape(g.shape()));
      at += g.numel();
    }
    bucket.clear();
    bytes = 0;
  };
  for (const std::string& name : names) {
    ag::Var& v = params.at(name);
    if (!v.requires_grad()) continue;
    const DType dtype = gradient_dtype(v);
    if (!v.grad().defined()) ag::accumulate_grad(v.impl(), Tensor::zeros(v.shape(), dtype, v.value().device()));
    G4_CHECK(v.grad().dtype() == dtype && v.grad().device() == v.value().device(), "reduce_gradients: ", name,
             " is ", v.value().describe(), " but its gradient is ", v.grad().describe(), " (expected ",
             dtype_name(dtype), " on the parameter's device)");
    const bool other_dtype = !bucket.empty() && bucket.front()->grad().dtype() != dtype;
    if (other_dtype || (!bucket.empty() && bytes + v.grad().nbytes() > bucket_bytes)) flush();
    bucket.push_back(&v);
    bytes += v.grad().nbytes();
  }
  flush();
}

}  // namespace

int64_t global_token_count(const Tensor& labels, Communicator& group) {
  // Labels are host data (the batch uploads once in forward); a device copy is counted on the host.
  const Tensor targets = model::shift_labels(labels.device() == Device::CPU ? labels : labels.to(Device::CPU));
  int64_t counted = 0;
  for (int64_t i = 0; i < targets.numel(); ++i) counted += targets.data<int64_t>()[i] != -100;
  Tensor t = Tensor::scalar(static_cast<double>(counted), DType::I64);
  all_reduce_values(group, t, ReduceOp::Sum);
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
