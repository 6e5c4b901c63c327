// g4 forward MODEL_DIR --inputs IN.safetensors --out OUT.safetensors [--grads] [--overwrite]
// Inputs: input_ids [B,S] and optional attention_mask, labels (-100 ignored; shifted inside),
// position_ids. Outputs: logits [B,S,V] f32, loss [1] when labels are given, and with --grads
// grad.<HF name> for every parameter in Hugging Face layout.
#include <iostream>
#include <optional>

#include "autograd/variable.h"
#include "cli/commands.h"
#include "io/safetensors.h"
#include "model/state_dict_adapter.h"

namespace g4::cli {

void add_forward(CLI::App& app, Action& action) {
  auto* cmd = app.add_subcommand("forward", "Run one forward (and backward) pass on given inputs");
  struct Opts {
    std::string model, inputs, out;
    bool grads = false, overwrite = false;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("model_dir", o->model, "Hugging Face model directory")->required();
  cmd->add_option("--inputs", o->inputs, "safetensors with input_ids [B,S] (+ attention_mask, labels, position_ids)")
      ->required();
  cmd->add_option("--out", o->out, "safetensors to write logits (+ loss, grads) to")->required();
  cmd->add_flag("--grads", o->grads, "also write grad.<name> of the loss for every parameter (needs labels)");
  cmd->add_flag("--overwrite", o->overwrite, "replace --out even when it is a file in a model directory");
  cmd->callback([&action, o] {
    action = [o] {
      check_output_file(o->out, "--out", o->overwrite, o->model);
      auto model = model::load_hf_model(o->model);
      const io::SafetensorsReader in = io::SafetensorsReader::open(o->inputs);
      G4_CHECK(in.has("input_ids"), "inputs file ", o->inputs, " has no 'input_ids' tensor");
      model::ForwardInputs fi;
      fi.input_ids = in.get("input_ids").clone();
      G4_CHECK(fi.input_ids.dim() == 2 && !is_floating(fi.input_ids.dtype()), "input_ids in ", o->inputs,
               " must be an integer [B, S] tensor, got ", fi.input_ids.describe());
      if (in.has("attention_mask")) fi.attention_mask = in.get("attention_mask").clone();
      if (in.has("labels")) fi.labels = in.get("labels").clone();
      if (in.has("position_ids")) fi.position_ids = in.get("position_ids").clone();
      G4_CHECK(!o->grads || fi.labels.defined(), "--grads needs 'labels' in ", o->inputs);

      std::optional<ag::NoGrad> no_grad;
      if (!o->grads) no_grad.emplace();
      model::ForwardOutputs out = model->forward(fi);
      std::vector<std::pair<std::string, Tensor>> tensors = {{"logits", out.logits.value()}};
      if (out.loss.defined()) {
        tensors.emplace_back("loss", out.loss.value().reshape({1}));
        std::cout << "loss " << out.loss.value().item() << " over " << out.counted_tokens << " tokens\n";
      }
      if (o->grads) {
        ag::backward(out.loss);
        for (auto& [name, g] : model::hf_gradients(*model)) tensors.emplace_back("grad." + name, g);
      }
      io::save_safetensors(o->out, tensors);
      std::cout << "wrote " << tensors.size() << " tensors to " << o->out << "\n";
    };
  });
}

}  // namespace g4::cli
