#!/usr/bin/env python3
"""Attacks `g4 rl` on the CPU: bad recipes, odd prompt files, a misbehaving reward program, interruptions and
resume, degenerate learning signals.

Usage: python3 tools/probe_rl.py [--g4 build-cpu/g4] [--only NAME] [--sections recipe,data,reward,...]
                                 [--work DIR] [--seed S] [--kills N]

Every case runs the real binary on a tiny random Gemma 4 (tiny-dense, 2 layers) generating 3 prompts x 4 samples of
at most 6 tokens per step on the built-in arithmetic task, with a regex reward that about a third of its random
responses match (so groups have a reward spread), and states what it expects: an exit status, an error naming the
key, file, line or command at fault, or metrics equal to an uninterrupted run's. A case that crashes, prints a
library's exception text, hangs, leaves a reward program running, loses a checkpoint or a metrics line, or resumes to
other metrics is a DEFECT. The script prints one PASS/DEFECT line per case, then the table of defects, and exits
non-zero when there is any. --only runs the cases whose name contains NAME. No SFT step is needed: the probes test
the plumbing, not learning, so the policy is a random model (scripts/run_rl_example.sh is the learning example).
"""
import contextlib, json, os, shutil, signal, stat, subprocess, time

from probe_commands import (ROOT, Cases, checkpoint_problems, complete_checkpoints, curve, expect_error, expect_success,
                       interrupted_run_problems, metric_lines, nest, no_library_text, record, remount_tmpfs,
                       temporary_files, tmpfs)

# The values of a step record that must repeat exactly on a resumed run (the CPU run is deterministic).
CURVE_KEYS = ("reward", "accuracy", "loss", "grad_norm", "lr", "token_mult_prob_error", "response_length_mean",
              "validation_accuracy", "advantages_max", "samples_trained")
CASES = Cases()
case = CASES.add


def rl_recipe(path, run_dir, **over):
    """The probes' base recipe (absolute paths; JSON is YAML), with `over` laid over it as dotted keys."""
    r = {
        "model": {"name": "tiny-dense", "init_seed": 3, "config": {"num_hidden_layers": 2}},
        "tokenizer": os.path.join(ROOT, "recipes/data/kjv-chat-tokenizer"),
        "prompts": {"task": "arithmetic", "task_difficulty": 1, "task_validation_prompts": 4},
        "grpo": {"num_prompts_per_step": 3, "num_generations_per_prompt": 4, "seed": 5,
                 "reward_scaling": {"enabled": True, "target_min": -1.0}},
        "loss_fn": {"ratio_clip_max": 0.28, "ratio_clip_c": 10, "use_importance_sampling_correction": True,
                    "truncated_importance_sampling_type": "tis"},
        "generation": {"max_new_tokens": 6},
        "reward": {"kind": "regex", "pattern": "th"},
        "optimizer": {"lr": 1e-3},
        "schedule": {"kind": "constant"},
        "train": {"steps": 2, "micro_batch_tokens": 96},
        "checkpoint": {"dir": run_dir, "every": 1, "keep": 5},
        "log": {"validation_every": 0},
    }
    for k, v in over.items():
        nest(r, k, v)
    with open(path, "w") as f:
        json.dump(r, f, indent=1)
    return path


class Ctx:
    def __init__(self, g4, work, rng, kills):
        self.g4, self.work, self.rng, self.kills = g4, work, rng, kills
        self.recipe = rl_recipe(os.path.join(work, "rl.yaml"), os.path.join(work, "run"))
        self.n = 0

    def run_dir(self, name):
        """A fresh run directory for one case."""
        self.n += 1
        d = os.path.join(self.work, f"run-{self.n:03d}-" + "".join(c if c.isalnum() else "-" for c in name)[:40])
        shutil.rmtree(d, ignore_errors=True)
        return d

    def args(self, name, *over):
        return ["rl", self.recipe, "checkpoint.dir=" + self.run_dir(name)] + list(over)

    def file(self, name, data):
        p = os.path.join(self.work, "files", name)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data if isinstance(data, bytes) else data.encode())
        return p


def prompt_lines(*objs):
    return "".join(json.dumps(o) + "\n" for o in objs)


PLAIN = prompt_lines(*({"prompt": f"What is {i} + {i}? End with a line Answer: <number>.", "answer": str(2 * i)}
                       for i in range(1, 6)))


def file_prompts(ctx, name, data, *over):
    """Arguments of a run on a prompt file (the exact-match reward reads its answers)."""
    return ctx.args(name, "prompts.task=''", "prompts.train=" + ctx.file(name, data), *over)


def step_records(run_dir):
    return [j for j in metric_lines(run_dir) if "loss" in j]


# -------------------------------------------------------------------------------------------------------- recipe

RECIPE_ERRORS = [
    (["grpo.num_prompts_per_stepp=3"], ["unknown recipe key 'grpo.num_prompts_per_stepp'"]),
    (["grpo.num_prompts_per_step=many"], ["'grpo.num_prompts_per_step' has the wrong type"]),
    (["grpo.num_prompts_per_step=0"], ["'grpo.num_prompts_per_step' must be > 0"]),
    (["grpo.num_prompts_per_step=-2"], ["'grpo.num_prompts_per_step' must be > 0"]),
    (["grpo.num_generations_per_prompt=0"], ["'grpo.num_generations_per_prompt' must be > 0"]),
    # One sample per group: its baseline is its own reward, so every advantage is 0 and no step learns anything.
    (["grpo.num_generations_per_prompt=1"], ["'grpo.num_generations_per_prompt' is 1"]),
    (["grpo.num_generations_per_prompt=1", "grpo.use_leave_one_out_baseline=true"],
     ["'grpo.num_generations_per_prompt' is 1"]),
    (["generation.max_new_tokens=0"], ["'generation.max_new_tokens' must be > 0"]),
    (["loss_fn.ratio_clip_min=-0.1"], ["'loss_fn.ratio_clip_min' must be >= 0"]),
    (["loss_fn.ratio_clip_max=-0.1"], ["'loss_fn.ratio_clip_max' must be >= 0"]),
    (["loss_fn.ratio_clip_c=1"], ["loss_fn.ratio_clip_c must exceed 1"]),
    (["loss_fn.ratio_clip_c=0.5"], ["loss_fn.ratio_clip_c must exceed 1"]),
    (["loss_fn.truncated_importance_sampling_type=clip"], ["'loss_fn.truncated_importance_sampling_type'", "tis"]),
    (["loss_fn.truncated_importance_sampling_ratio_min=3"], ["loss_fn.truncated_importance_sampling_ratio_min"]),
    (["loss_fn.truncated_importance_sampling_ratio=0"], ["'loss_fn.truncated_importance_sampling_ratio' must be > 0"]),
    (["loss_fn.reference_policy_kl_penalty=-0.1"], ["'loss_fn.reference_policy_kl_penalty' must be >= 0"]),
    (["loss_fn.reference_policy_kl_type=k4"], ["'loss_fn.reference_policy_kl_type'", "k3"]),
    (["loss_fn.kl_input_clamp_value=0"], ["'loss_fn.kl_input_clamp_value' must be > 0"]),
    (["grpo.use_dynamic_sampling=true", "grpo.dynamic_sampling_max_gen_batches=0"],
     ["'grpo.dynamic_sampling_max_gen_batches' must be > 0"]),
    (["grpo.batch_multiplier=2"], ["'grpo.batch_multiplier'", "use_dynamic_sampling"]),
    (["grpo.batch_multiplier=0.5", "grpo.use_dynamic_sampling=true"], ["'grpo.batch_multiplier' must be >= 1"]),
    (["grpo.reward_shaping.enabled=true", "grpo.reward_shaping.overlong_buffer_length=10"],
     ["'grpo.reward_shaping.overlong_buffer_length' 10 exceeds", "max_response_length' 6"]),
    (["grpo.reward_shaping.enabled=true"], ["overlong_buffer_length' > 0"]),
    (["grpo.reward_scaling.source_max=0"], ["'grpo.reward_scaling.source_max' must exceed"]),
    (["generation.temperature=0", "generation.top_p=0.9"], ["'generation.temperature' must be > 0"]),
    (["generation.temperature=-1"], ["'generation.temperature' must be > 0"]),
    (["generation.top_p=0"], ["'generation.top_p' must be in"]),
    (["generation.top_p=1.5"], ["'generation.top_p' must be in"]),
    (["generation.top_k=-1"], ["'generation.top_k' must be >= 0"]),
    (["generation.memory_fraction=0"], ["'generation.memory_fraction' must be in"]),
    (["train.global_batch_size=5"], ["'train.global_batch_size' 5 must divide", "= 12"]),
    (["train.micro_batch_tokens=0"], ["'train.micro_batch_tokens' must be > 0"]),
    (["model.name=''", "model.path=/nonexistent/policy"], ["/nonexistent/policy"]),
    (["tokenizer=''"], ["'tokenizer' is required"]),
    (["tokenizer=/nonexistent/tokenizer"], ["/nonexistent/tokenizer"]),
    (["reward.pattern=(unclosed"], ["reward.pattern '(unclosed' is not a valid"]),
    (["reward.pattern='[a-'"], ["reward.pattern '[a-' is not a valid"]),
    (["reward.pattern=''"], ["'reward.kind' regex needs 'reward.pattern'"]),
    (["reward.pattern='{answer}x{answer}'"], ["holds {answer} more than once"]),
    (["reward.kind=command", "reward.pattern=''"], ["'reward.kind' command needs 'reward.command'"]),
    (["reward.kind=exact"], ["reward.pattern is only read by reward.kind regex"]),
    (["reward.kind=math"], ["'reward.kind'", "dapo_math"]),
    (["reward.timeout_s=0"], ["'reward.timeout_s' must be > 0"]),
    (["prompts.task=''"], ["set exactly one of 'prompts.train'"]),
    (["prompts.train=/tmp/x.jsonl"], ["set exactly one of 'prompts.train'"]),
    (["prompts.task=sudoku"], ["'prompts.task' sudoku is not a built-in task"]),
    (["prompts.task_difficulty=99"], ["'prompts.task_difficulty'", "99"]),
    (["prompts.max_input_seq_length=0"], ["'prompts.max_input_seq_length' must be > 0"]),
    (["data.seq_len=64"], ["data.seq_len"]),
    (["grpo.seed=-1"], ["'grpo.seed'"]),
    (["grpo.val_samples_per_prompt=0"], ["'grpo.val_samples_per_prompt' must be > 0"]),
    (["lora.rank=-1"], ["'lora.rank' must be >= 0"]),
    (["train.device=cuda"], ["'train.device' is cuda"]),
    (["generation.stop_strings=['']"], ["'generation.stop_strings' holds an empty string"]),
    (["generation.page_size=100000000"], ["generation.page_size 100000000"]),
]

for _over, _wants in RECIPE_ERRORS:
    def _fn(ctx, over=_over, wants=_wants):
        expect_error("recipe", " ".join(over), ctx.g4, ctx.args(" ".join(over), *over), wants)
    CASES.add("recipe", " ".join(_over))(_fn)


@case("recipe", "loss_fn.ratio_clip_min=1.5 (lower clip below 0: off, never inverted)")
def _(ctx):
    # ε ≥ 0 on both sides keeps 1 - ε_low < 1 + ε_high: the interval cannot invert; ε_low > 1 only turns the lower
    # clip off (r > 0), which NeMo-RL accepts too. The plan line must show the interval used.
    expect_success("recipe", "loss_fn.ratio_clip_min=1.5 runs and shows clip [-0.5, 1.28]", ctx.g4,
                   ctx.args("clipmin", "loss_fn.ratio_clip_min=1.5", "train.steps=1"), ["clip [-0.5, 1.28]"])


@case("recipe", "policy checkpoint without a tokenizer (tokenizer unset)")
def _(ctx):
    # A policy directory (model.path) from an earlier run, its tokenizer files removed: the recipe's tokenizer
    # defaults to model.path, which must then name what is missing.
    src = ctx.run_dir("policy-src")
    rc, out = ctx.g4.run(["rl", ctx.recipe, "checkpoint.dir=" + src, "train.steps=1"])
    if rc:
        record("recipe", "policy checkpoint without a tokenizer", False, "could not make the policy: " + out[-400:])
        return
    pol = os.path.join(ctx.work, "policy-no-tokenizer")
    shutil.rmtree(pol, ignore_errors=True)
    shutil.copytree(complete_checkpoints(src)[-1], pol)
    for n in os.listdir(pol):
        if n.startswith("tokenizer") or n.startswith("special_tokens") or n == "chat_template.jinja":
            os.remove(os.path.join(pol, n))
    expect_success("recipe", "policy checkpoint as model.path (with its tokenizer)", ctx.g4,
                   ctx.args("policy", "model.name=''", "model.config={}", "model.path=" + complete_checkpoints(src)[-1],
                            "tokenizer=''", "train.steps=1"))
    expect_error("recipe", "policy checkpoint without a tokenizer (tokenizer unset)", ctx.g4,
                 ctx.args("policy-no-tok", "model.name=''", "model.config={}", "model.path=" + pol, "tokenizer=''"),
                 [pol, "tokenizer"])


# ---------------------------------------------------------------------------------------------------------- data

DAPO = {"data_source": "math_dapo", "prompt": [{"role": "user", "content": "What is 2 + 2? Answer: <number>"}],
        "reward_model": {"ground_truth": "4", "style": "rule"}}
DATA_CASES = [
    # (file name, bytes, overrides, expected strings; None = the run succeeds)
    ("empty.jsonl", b"", [], ["empty.jsonl holds no prompts"]),
    ("blank-only.jsonl", b"\n   \n\r\n\t\n", [], ["blank-only.jsonl holds no prompts"]),
    ("blank-lines-between.jsonl", PLAIN.replace("\n", "\n\n  \r\n"), [], None),
    ("bom.jsonl", b"\xef\xbb\xbf" + PLAIN.encode(), [], None),
    ("invalid-utf8.jsonl", PLAIN.encode() + b'{"prompt": "caf\xe9 ?", "answer": "1"}\n', [],
     ["invalid-utf8.jsonl:6", "UTF-8"]),
    ("not-json.jsonl", PLAIN + "What is 1 + 1?\n", [], ["not-json.jsonl:6", "not valid JSON"]),
    ("array-line.jsonl", PLAIN + "[1, 2]\n", [], ["array-line.jsonl:6", "must be a JSON object"]),
    ("dapo.jsonl", prompt_lines(DAPO, DAPO), ["reward.kind=dapo_math"], None),
    ("dapo-no-ground-truth.jsonl", prompt_lines(DAPO, dict(DAPO, reward_model={"style": "rule"})),
     ["reward.kind=dapo_math"], ["dapo-no-ground-truth.jsonl:2", "'reward_model' must be an object with a "
                                 "'ground_truth'"]),
    ("dapo-no-content.jsonl", prompt_lines(DAPO, dict(DAPO, prompt=[{"role": "user"}])), ["reward.kind=dapo_math"],
     ["dapo-no-content.jsonl:2", "'prompt[0].content' must be a string"]),
    ("dapo-empty-prompt.jsonl", prompt_lines(DAPO, dict(DAPO, prompt=[])), ["reward.kind=dapo_math"],
     ["dapo-empty-prompt.jsonl:2", "non-empty list"]),
    ("dapo-no-user.jsonl", prompt_lines(DAPO, dict(DAPO, prompt=[{"role": "system", "content": "x"}])),
     ["reward.kind=dapo_math"], ["dapo-no-user.jsonl:2", "has no user message"]),
    # The verifiers compare with the ground truth: a line without one could only ever score 0.
    ("plain-no-answer.jsonl", PLAIN + prompt_lines({"prompt": "What is 9 + 9?"}), ["reward.kind=exact"],
     ["plain-no-answer.jsonl:6", "answer"]),
    ("plain-no-answer-dapo.jsonl", PLAIN + prompt_lines({"prompt": "What is 9 + 9?"}), ["reward.kind=dapo_math"],
     ["plain-no-answer-dapo.jsonl:6", "answer"]),
    # A pattern without {answer} needs no ground truth.
    ("plain-no-answer-regex.jsonl", prompt_lines({"prompt": "Say th"}, {"prompt": "Say the"}), [], None),
    ("number-answers.jsonl", prompt_lines({"prompt": "What is 6 * 7?", "answer": 42},
                                          {"prompt": "What is 0.5 + 1?", "answer": 1.5}), ["reward.kind=exact"], None),
    ("null-answer.jsonl", PLAIN + prompt_lines({"prompt": "q", "answer": None}), ["reward.kind=exact"],
     ["null-answer.jsonl:6", "'answer' must be a string or a number"]),
    ("two-answers.jsonl", PLAIN + prompt_lines({"prompt": "q", "answer": "1", "ground_truth": "1"}), [],
     ["two-answers.jsonl:6", "keep one ground truth"]),
    ("prompt-and-messages.jsonl", PLAIN + prompt_lines({"prompt": "q", "messages": [{"role": "user", "content": "q"}]}),
     [], ["prompt-and-messages.jsonl:6", "not both"]),
    # The countdown reward reads each line's numbers and target: a line without them is refused as the file is read.
    ("countdown-no-numbers.jsonl", prompt_lines({"prompt": "Make 5 from 2 3", "numbers": [2, 3], "target": 5},
                                                {"prompt": "Make 6"}),
     ["reward.kind=countdown"], ["countdown-no-numbers.jsonl:2", "'numbers'"]),
    # Longer than prompts.max_input_seq_length: skipped and counted.
    ("long-skipped.jsonl", PLAIN + prompt_lines({"prompt": "word " * 300, "answer": "1"}),
     ["prompts.max_input_seq_length=200"], None),
    ("all-long.jsonl", prompt_lines({"prompt": "word " * 300, "answer": "1"}), ["prompts.max_input_seq_length=200"],
     ["'prompts.train'", "holds no prompt of at most 200 tokens"]),
    # Within prompts.max_input_seq_length but no room for a response within generation.max_total_sequence_length:
    # an error naming the line when the prompts are read, not when (or whether) the prompt is drawn steps later.
    ("longer-than-context.jsonl", PLAIN + prompt_lines({"prompt": "word " * 100, "answer": "1"}),
     ["generation.max_total_sequence_length=64", "train.steps=1", "grpo.num_prompts_per_step=1"],
     ["longer-than-context.jsonl:6", "generation.max_total_sequence_length"]),
]

for _name, _data, _over, _wants in DATA_CASES:
    def _fn(ctx, name=_name, data=_data, over=_over, wants=_wants):
        extra = ["reward.kind=exact", "reward.pattern=''"] if "reward.kind=exact" in over else []
        extra += ["reward.pattern=''"] if "reward.kind=dapo_math" in over or "reward.kind=countdown" in over else []
        args = file_prompts(ctx, name, data, "train.steps=1", *over, *extra)
        if wants is None:
            expect_success("data", name, ctx.g4, args, ["skipped"] if "skipped" in name else [])
        else:
            expect_error("data", name, ctx.g4, args, wants)
    CASES.add("data", _name)(_fn)


@case("data", "validation file with 0 prompts")
def _(ctx):
    expect_error("data", "validation file with 0 prompts", ctx.g4,
                 ctx.args("val0", "prompts.validation=" + ctx.file("val-empty.jsonl", "\n\n"),
                          "log.validation_every=1"),
                 ["val-empty.jsonl holds no prompts"])


@case("data", "validation prompt longer than the context")
def _(ctx):
    expect_error("data", "validation prompt longer than the context", ctx.g4,
                 ctx.args("vallong", "prompts.validation=" + ctx.file(
                     "val-long.jsonl", PLAIN + prompt_lines({"prompt": "word " * 100, "answer": "1"})),
                     "generation.max_total_sequence_length=64", "log.validation_every=1"),
                 ["val-long.jsonl:6", "generation.max_total_sequence_length"])


@case("data", "system prompt longer than the context (built-in task)")
def _(ctx):
    expect_error("data", "system prompt longer than the context (built-in task)", ctx.g4,
                 ctx.args("syslong", "prompts.system_prompt=" + "word " * 100,
                          "generation.max_total_sequence_length=64"),
                 ["generation.max_total_sequence_length"])


# -------------------------------------------------------------------------------------------------------- reward

def command_args(ctx, name, command, *over):
    # A JSON string is a YAML double-quoted scalar: the command's quotes and braces stay text.
    return ctx.args(name, "reward.kind=command", "reward.pattern=''", "reward.command=" + json.dumps(command), *over)


def processes(marker):
    """Pids of processes whose whole command line is `marker` (a reward program the probe started through g4; g4's
    own command line holds the marker too, among its other arguments)."""
    p = subprocess.run(["pgrep", "-x", "-f", marker], capture_output=True, text=True)
    return [int(x) for x in p.stdout.split()]


def end_processes(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


REWARD_ERRORS = [
    ("missing executable", "/nonexistent/reward-program", [], ["reward.command '/nonexistent/reward-program'",
                                                               "exited with status 127", "not found"]),
    ("exits non-zero", "cat > /dev/null; echo judge crashed >&2; exit 3", [], ["exited with status 3",
                                                                              "judge crashed"]),
    ("fewer lines than responses", "awk 'NR > 1 {print 1}'", [], ["wrote 11 lines for 12 inputs"]),
    ("more lines than responses", "awk '{print 1} END {print 1}'", [], ["wrote 13 lines for 12 inputs"]),
    ("no output", "cat > /dev/null", [], ["wrote 0 lines for 12 inputs"]),
    ("non-numbers", "awk '{print \"yes\"}'", [], ["line 1 of its output is not a finite number: 'yes'"]),
    ("NaN", "awk '{print \"nan\"}'", [], ["is not a finite number: 'nan'"]),
    ("inf", "awk '{print (NR == 3 ? \"-inf\" : 1)}'", [], ["line 3 of its output is not a finite number: '-inf'"]),
    ("overflowing number", "awk '{print \"1e999\"}'", [], ["is not a finite number: '1e999'"]),
    ("killed by a signal", "cat > /dev/null; kill -9 $$", [], ["killed by signal 9"]),
    # Endless output must not fill the memory before the timeout (kept short here all the same).
    ("prints without end", "yes 1", ["reward.timeout_s=30"], ["wrote more than 1048576 bytes on stdout for 12 inputs"]),
    ("validation inputs differ in count", "cat > /dev/null; yes 1 | head -n 12", ["log.validation_every=1"],
     ["wrote 12 lines for 4 inputs"]),
]

for _name, _cmd, _over, _wants in REWARD_ERRORS:
    def _fn(ctx, name=_name, cmd=_cmd, over=_over, wants=_wants):
        expect_error("reward", name, ctx.g4, command_args(ctx, name, cmd, *over), wants)
    CASES.add("reward", _name)(_fn)


@case("reward", "reward.timeout_s=1e12 (meant as never)")
def _(ctx):
    expect_success("reward", "reward.timeout_s=1e12 (meant as never) runs", ctx.g4,
                   command_args(ctx, "long-timeout", "awk '{print NR % 2}'", "reward.timeout_s=1e12", "train.steps=1"))


@case("reward", "huge raw rewards clamped by reward scaling, with validation")
def _(ctx):
    # Scaling clamps what trains, but the accuracy metrics average the raw rewards: 1e308s overflow that sum.
    expect_error("reward", "huge raw rewards clamped by reward scaling, with validation: an error naming them", ctx.g4,
                 command_args(ctx, "huge-val", "awk '{print 1e308}'", "log.validation_every=1"),
                 ["reward.kind command returned rewards up to 1e+308", "too large to average"])


@case("reward", "not executable")
def _(ctx):
    p = ctx.file("reward-not-executable.sh", "#!/bin/sh\nawk '{print 1}'\n")
    os.chmod(p, stat.S_IRUSR | stat.S_IWUSR)
    expect_error("reward", "not executable", ctx.g4, command_args(ctx, "noexec", p),
                 ["exited with status 126", "Permission denied"])


@case("reward", "a good program (reads every line, one number each)")
def _(ctx):
    expect_success("reward", "a good program (reads every line, one number each)", ctx.g4,
                   command_args(ctx, "good", "awk '{print NR % 2}'", "log.validation_every=1"))


@case("reward", "a program that never reads its stdin")
def _(ctx):
    expect_success("reward", "a program that never reads its stdin", ctx.g4,
                   command_args(ctx, "noread", "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo $((i % 2)); done"))


@case("reward", "hangs past reward.timeout_s (it and its children killed)")
def _(ctx):
    marker = "sleep 1000.123"
    t0 = time.time()
    out = expect_error("reward", "hangs past reward.timeout_s=2", ctx.g4,
                       command_args(ctx, "hang", f"{marker}; awk '{{print 1}}'", "reward.timeout_s=2"),
                       ["ran longer than reward.timeout_s (2 s)", "killed"])
    took = time.time() - t0
    left = processes(marker)
    end_processes(left)
    record("reward", "hang: the program and its children are gone, the run stopped soon", not left and took < 60,
           f"{took:.1f} s, left running: {left}" + ("" if out else ""))


@case("reward", "writes 300 MB to stderr")
def _(ctx):
    # A chatty judge (warnings, progress bars): its stderr is only shown when it fails, and then its end; g4 must not
    # hold all of it.
    rc0, out0, base = ctx.g4.run_measured(command_args(ctx, "quiet", "awk '{print NR % 2}'", "train.steps=1"))
    rc, out, peak = ctx.g4.run_measured(command_args(
        ctx, "chatty", "awk '{print NR % 2}'; head -c 300000000 /dev/zero | tr '\\0' x >&2", "train.steps=1"))
    ok = rc0 == 0 and rc == 0 and peak < base + 100 and no_library_text(out)
    record("reward", "writes 300 MB to stderr: runs, memory bounded", ok,
           f"peak RSS {peak:.0f} MiB against {base:.0f} MiB with a quiet program (rc {rc0}, {rc})"
           + ("" if rc == 0 else ": " + out[-400:]))
    out = expect_error("reward", "writes 300 MB to stderr and fails: the error shows the end", ctx.g4,
                       command_args(ctx, "chatty-fail", "head -c 300000000 /dev/zero | tr '\\0' x >&2; "
                                    "echo the real reason >&2; exit 2", "train.steps=1"),
                       ["exited with status 2", "the real reason"])
    record("reward", "a failing chatty program's error stays short", len(out) < 10000, f"{len(out)} characters")


@case("reward", "huge rewards with reward scaling")
def _(ctx):
    run = ctx.run_dir("huge-scaled")
    rc, out = ctx.g4.run(["rl", ctx.recipe, "checkpoint.dir=" + run, "reward.kind=command", "reward.pattern=''",
                          "reward.command=" + json.dumps("awk '{print (NR % 2) * 1e300}'")])
    recs = step_records(run)
    ok = rc == 0 and recs and all(abs(r["reward"]) <= 1 and r["loss"] == r["loss"] for r in recs)
    record("reward", "huge rewards with reward scaling: clamped, finite", bool(ok), "" if ok else out[-600:])


@case("reward", "huge rewards without reward scaling")
def _(ctx):
    # 1e300 and 0 in one group: their mean and standard deviation overflow a double, which must not turn into a NaN
    # loss blamed on the learning rate.
    run = ctx.run_dir("huge-unscaled")
    rc, out = ctx.g4.run(["rl", ctx.recipe, "checkpoint.dir=" + run, "reward.kind=command", "reward.pattern=''",
                          "reward.command=" + json.dumps("awk '{print (NR % 2) * 1e308}'"),
                          "grpo.reward_scaling.enabled=false"])
    recs = step_records(run)
    finite = rc == 0 and recs and all(all(v == v and abs(v) != float("inf") for v in r.values()
                                          if isinstance(v, float)) for r in recs)
    error = next((l for l in out.splitlines() if "error:" in l), "")
    clear = rc == 1 and "reward" in error and "optimizer.lr" not in error and no_library_text(out)
    record("reward", "huge rewards without reward scaling: finite metrics or an error naming the rewards",
           bool(finite or clear), f"rc {rc}: " + out[-600:] if not (finite or clear) else "")


def interrupted_in_reward(ctx, sig):
    """Starts a run whose reward program sleeps in step 2 and signals g4 while it waits; returns (rc, output, the
    reward program's processes still running after g4 ended, run dir)."""
    run = ctx.run_dir(f"reward-{sig.name}")
    marker = f"sleep 1000.{int(sig)}7"
    flag = os.path.join(run, "second-call")
    # The first call (step 1) scores at once; the second (step 2) hangs.
    cmd = f"if [ -e {flag} ]; then {marker}; fi; touch {flag}; awk '{{print NR % 2}}'"
    os.makedirs(run, exist_ok=True)
    p = ctx.g4.start(["rl", ctx.recipe, "checkpoint.dir=" + run, "reward.kind=command", "reward.pattern=''",
                      "reward.command=" + json.dumps(cmd), "train.steps=3"])
    deadline = time.time() + 120
    while not processes(marker) and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    p.send_signal(sig)
    try:
        out, _ = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
        out += "\n(probe: g4 did not end within 60 s of the signal)"
    time.sleep(0.5)
    left = processes(marker)
    end_processes(left)
    return p.returncode, out, left, run


for _sig in (signal.SIGINT, signal.SIGTERM):
    def _fn(ctx, sig=_sig):
        rc, out, left, run = interrupted_in_reward(ctx, sig)
        record("reward", f"{sig.name} while the reward program runs: g4 ends, the program with it",
               rc != 0 and not left and "did not end" not in out,
               f"rc {rc}, reward program still running: {left}" + ("" if rc else out[-300:]))
        ck = complete_checkpoints(run)
        record("reward", f"{sig.name} while the reward program runs: step 1's checkpoint whole",
               [os.path.basename(c) for c in ck] == ["step-00000001"] and not checkpoint_problems(run),
               f"checkpoints {ck}, damaged {checkpoint_problems(run)}")
    CASES.add("reward", f"{_sig.name} while the reward program runs")(_fn)


# -------------------------------------------------------------------------------------------- rundir and resume

def reference(ctx, steps=4):
    """An uninterrupted run (validation every 2 steps, a checkpoint every step) and its curve, made once."""
    if getattr(ctx, "ref", None) is None:
        run = os.path.join(ctx.work, "reference")
        shutil.rmtree(run, ignore_errors=True)
        recipe = rl_recipe(os.path.join(ctx.work, "resume.yaml"), run, **{"train.steps": steps,
                                                                           "log.validation_every": 2,
                                                                           "checkpoint.keep": 2})
        t0 = time.time()
        rc, out = ctx.g4.run(["rl", recipe])
        ctx.ref = (recipe, run, curve(metric_lines(run), CURVE_KEYS), time.time() - t0, rc, out)
    return ctx.ref


@case("resume", "a new run over an earlier run's directory (no --resume)")
def _(ctx):
    recipe, run, want, span, rc, out = reference(ctx)
    if rc:
        record("resume", "reference run", False, out[-400:])
        return
    before = open(os.path.join(run, "metrics.jsonl")).read()
    ckpts = complete_checkpoints(run)
    expect_error("resume", "a new run over an earlier run's directory (no --resume)", ctx.g4, ["rl", recipe],
                 ["holds an earlier run", "--resume"])
    after = open(os.path.join(run, "metrics.jsonl")).read()
    record("resume", "the earlier run's metrics and checkpoints stay", after == before
           and complete_checkpoints(run) == ckpts, f"{len(before)} -> {len(after)} bytes, {ckpts}")


@case("resume", "--resume of a finished run / extended / with a changed key")
def _(ctx):
    recipe, run, want, span, rc, out = reference(ctx)
    d = os.path.join(ctx.work, "resume-copy")
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(run, d)
    before = metric_lines(d)
    expect_success("resume", "--resume of a finished run adds nothing", ctx.g4,
                   ["rl", recipe, "checkpoint.dir=" + d, "--resume"], ["resuming from"])
    record("resume", "... and its metrics.jsonl is unchanged", metric_lines(d) == before)
    expect_success("resume", "--resume with train.steps raised continues", ctx.g4,
                   ["rl", recipe, "checkpoint.dir=" + d, "train.steps=5", "--resume"], ["resuming from", "step 5/5"])
    lines = metric_lines(d)
    record("resume", "... metrics.jsonl keeps the earlier lines", lines[:len(before)] == before
           and any(j.get("step") == 5 and "loss" in j for j in lines), f"{len(before)} -> {len(lines)} lines")
    expect_success("resume", "--resume with a changed grpo.seed names the change", ctx.g4,
                   ["rl", recipe, "checkpoint.dir=" + d, "train.steps=6", "grpo.seed=6", "--resume"],
                   ["note: the recipe differs", "grpo.seed 5 -> 6"])
    expect_success("resume", "--resume of an empty directory starts from scratch (and says so)", ctx.g4,
                   ["rl", recipe, "checkpoint.dir=" + ctx.run_dir("empty-resume"), "train.steps=1", "--resume"],
                   ["starting from scratch"])


@case("resume", "--resume over a g4 train run's directory")
def _(ctx):
    # checkpoint.dir naming the SFT run the policy comes from (instead of model.path): every checkpoint is refused,
    # saying why, and none is moved aside or changed.
    sft = os.path.join(ctx.work, "sft")
    shutil.rmtree(sft, ignore_errors=True)
    os.makedirs(sft)
    rc, out = ctx.g4.run(["task", "arithmetic", "--difficulty", "1", "--count", "40", "--sft", "--out",
                          os.path.join(sft, "sft.jsonl")])
    recipe = os.path.join(sft, "sft.yaml")
    with open(recipe, "w") as f:
        json.dump({"model": {"name": "tiny-dense", "init_seed": 3, "config": {"num_hidden_layers": 2}},
                   "tokenizer": os.path.join(ROOT, "recipes/data/kjv-chat-tokenizer"),
                   "data": {"train": [os.path.join(sft, "sft.jsonl")], "format": "chat", "seq_len": 64,
                            "validation_fraction": 0},
                   "train": {"steps": 2, "batch_size": 2}, "checkpoint": {"dir": os.path.join(sft, "run"), "every": 1},
                   "log": {"validation_every": 0, "samples": 0}}, f)
    rc, out = ctx.g4.run(["train", recipe])
    if rc:
        record("resume", "--resume over a g4 train run's directory", False, "the SFT run failed: " + out[-400:])
        return
    run = os.path.join(sft, "run")
    before = sorted(os.listdir(os.path.join(run, "checkpoints")))
    expect_error("resume", "--resume over a g4 train run's directory: refused, saying why", ctx.g4,
                 ["rl", ctx.recipe, "checkpoint.dir=" + run, "--resume"], ["not a checkpoint of g4 rl", "model.path"])
    after = sorted(os.listdir(os.path.join(run, "checkpoints")))
    record("resume", "... its checkpoints stay where they were", before == after, f"{before} -> {after}")


@case("resume", "killed at fixed points and at random, resumed to the same metrics")
def _(ctx):
    recipe, ref, want, span, rc, out = reference(ctx)
    if rc:
        record("resume", "reference run", False, out[-400:])
        return
    trials = [("G4_FAULT_KILL=step:2 (after the step, before its checkpoint)", {"G4_FAULT_KILL": "step:2"}),
              ("G4_FAULT_KILL=checkpoint:2 (halfway through writing it)", {"G4_FAULT_KILL": "checkpoint:2"}),
              ("G4_FAULT_KILL=checkpoint:4 (the final checkpoint)", {"G4_FAULT_KILL": "checkpoint:4"})]
    trials += [(f"random #{i}", None) for i in range(ctx.kills)]
    for name, env in trials:
        run = ctx.run_dir(name.split()[0])
        log, problems = interrupted_run_problems(ctx.g4, ["rl", recipe, "checkpoint.dir=" + run], env, ctx.rng, span,
                                                 run, want, lambda lines: curve(lines, CURVE_KEYS))
        record("resume", f"{name} {' '.join(log or [])}".strip(), not problems, "; ".join(problems))


@case("resume", "SIGINT in the reward program, then --resume: same metrics")
def _(ctx):
    # The reward program is a command here, so the reference is rerun with it (it scores like the regex would not).
    run0 = ctx.run_dir("cmd-reference")
    cmd = "awk '{print (length($0) % 3 == 0)}'"
    base = ["rl", ctx.recipe, "reward.kind=command", "reward.pattern=''", "train.steps=3"]
    rc, out = ctx.g4.run(base + ["checkpoint.dir=" + run0, "reward.command=" + json.dumps(cmd)])
    want = curve(metric_lines(run0), CURVE_KEYS)
    run = ctx.run_dir("cmd-interrupted")
    os.makedirs(run)
    flag, marker = os.path.join(run, "called"), "sleep 1000.555"
    # Hangs on its second call (step 2) until the probe interrupts g4; scores like `cmd` otherwise.
    slow = f"if [ -e {flag} ] && [ ! -e {flag}.2 ]; then touch {flag}.2; {marker}; fi; touch {flag}; {cmd}"
    p = ctx.g4.start(base + ["checkpoint.dir=" + run, "reward.command=" + json.dumps(slow)])
    deadline = time.time() + 120
    while not processes(marker) and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=60)
    end_processes(processes(marker))
    problems = []
    if complete_checkpoints(run) != [os.path.join(run, "checkpoints", "step-00000001")]:
        problems.append(f"checkpoints after the interrupt: {complete_checkpoints(run)}")
    rc, out = ctx.g4.run(base + ["checkpoint.dir=" + run, "reward.command=" + json.dumps(slow), "--resume"])
    if rc:
        problems.append(f"the resume failed: {out[-400:]}")
    got = curve(metric_lines(run), CURVE_KEYS)
    if got != want:
        problems.append(f"metrics differ from the uninterrupted run at "
                        f"{sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))[:6]}")
    record("resume", "SIGINT in the reward program, then --resume: same metrics", not problems, "; ".join(problems))


# ---------------------------------------------------------------------------------------------------------- disk
# Small tmpfs mounts (root only; the cases say so and pass otherwise). A tiny-dense checkpoint is about 7 MiB.

@contextlib.contextmanager
def tmpfs_case(ctx, name, opts):
    """A fresh tmpfs for one case at work/mnt-<name>, unmounted afterwards; None (said) when it cannot be mounted."""
    with tmpfs(os.path.join(ctx.work, "mnt-" + "".join(c if c.isalnum() else "-" for c in name)[:40]), opts) as d:
        if d is None:
            record("disk", name, True, "skipped: no tmpfs could be mounted (needs root)")
        yield d


@case("disk", "disk full at the second checkpoint, resumed once there is room")
def _(ctx):
    recipe, ref_run, want, span, rc, out = reference(ctx)
    with tmpfs_case(ctx, "disk full at the second checkpoint", "size=10m") as mnt:
        if mnt is None:
            return
        run = os.path.join(mnt, "run")
        expect_error("disk", "disk full at the second checkpoint: the error names the file", ctx.g4,
                     ["rl", recipe, "checkpoint.dir=" + run], ["No space left on device", run])
        kept = complete_checkpoints(run)
        record("disk", "the first checkpoint stays whole, no partial one looks complete",
               [os.path.basename(c) for c in kept] == ["step-00000001"] and not checkpoint_problems(run),
               f"{kept} {checkpoint_problems(run)}")
        remount_tmpfs(mnt, "size=64m")
        rc, out = ctx.g4.run(["rl", recipe, "checkpoint.dir=" + run, "--resume"])
        got = curve(metric_lines(run), CURVE_KEYS)
        left = temporary_files(run)
        record("disk", "--resume once there is room: the uninterrupted run's metrics, no temporary files left",
               rc == 0 and got == want and not left,
               f"rc {rc}, {len(got)} of {len(want)} values equal: {got == want}, left {left}; {out[-300:]!r}")


DISK_ERRORS = [  # case, tmpfs options, overrides, what the error must name
    ("metrics log on a full disk (no checkpoint yet): the error names metrics.jsonl and the reason", "size=8k",
     ["checkpoint.every=100", "train.steps=8"], ["metrics.jsonl", "No space left on device"]),
    ("read-only run directory: the error names checkpoint.dir", "ro,size=1m", [],
     ["Read-only file system", "checkpoint.dir"]),
]
for _name, _opts, _over, _wants in DISK_ERRORS:
    def _fn(ctx, name=_name, opts=_opts, over=_over, wants=_wants):
        with tmpfs_case(ctx, name, opts) as mnt:
            if mnt is not None:
                expect_error("disk", name, ctx.g4, ctx.args(name, "checkpoint.dir=" + os.path.join(mnt, "run"), *over),
                             wants)
    CASES.add("disk", _name)(_fn)


# --------------------------------------------------------------------------------------------------------- ranks
# Two data-parallel CPU ranks under `g4 launch` (Open MPI's mpirun), faulted on one rank with the checkpoint hooks
# (G4_FAULT_KILL / G4_FAULT_ERROR at step:N, G4_FAULT_RANK=r).

def two_rank_reference(ctx):
    """An uninterrupted two-rank run of 4 steps and its curve, made once."""
    if getattr(ctx, "ref2", None) is None:
        run = os.path.join(ctx.work, "reference-2-ranks")
        shutil.rmtree(run, ignore_errors=True)
        rc, out = ctx.g4.run(["launch", "-n", "2", "rl", ctx.recipe, "checkpoint.dir=" + run, "train.steps=4"])
        ctx.ref2 = (run, curve(metric_lines(run), CURVE_KEYS), rc, out)
    return ctx.ref2


def left_ranks(run):
    """g4 processes still running on `run` (a rank the launcher should have stopped)."""
    p = subprocess.run(["pgrep", "-f", "checkpoint.dir=" + run], capture_output=True, text=True)
    return p.stdout.split()


@case("ranks", "a rank killed after step 2, resumed on two ranks")
def _(ctx):
    ref_run, want, rc, out = two_rank_reference(ctx)
    if rc:
        record("ranks", "two-rank reference run", False, out[-400:])
        return
    run = ctx.run_dir("rank-killed")
    args = ["launch", "-n", "2", "rl", ctx.recipe, "checkpoint.dir=" + run, "train.steps=4"]
    rc, out = ctx.g4.run(args, env={"G4_FAULT_KILL": "step:2", "G4_FAULT_RANK": "1"}, timeout=120)
    time.sleep(1)
    left = left_ranks(run)
    record("ranks", "rank 1 killed after step 2: the job stops, non-zero, no rank left running",
           rc != 0 and not left, f"rc {rc}, left {left}")
    record("ranks", "rank 1 killed: the checkpoint before stays whole",
           [os.path.basename(c) for c in complete_checkpoints(run)] == ["step-00000001"] and not checkpoint_problems(run),
           f"{complete_checkpoints(run)} {checkpoint_problems(run)}")
    rc, out = ctx.g4.run(args + ["--resume"], timeout=120)
    got = curve(metric_lines(run), CURVE_KEYS)
    record("ranks", "--resume on two ranks: the uninterrupted two-rank run's metrics bit for bit",
           rc == 0 and got == want, f"rc {rc}, equal {got == want}; {out[-300:]!r}")


@case("ranks", "a rank's error at step 2")
def _(ctx):
    run = ctx.run_dir("rank-error")
    rc, out = ctx.g4.run(["launch", "-n", "2", "rl", ctx.recipe, "checkpoint.dir=" + run, "train.steps=4"],
                         env={"G4_FAULT_ERROR": "step:2", "G4_FAULT_RANK": "0"}, timeout=120)
    time.sleep(1)
    left = left_ranks(run)
    record("ranks", "rank 0's error at step 2: the job stops, non-zero, with rank 0's message, no rank left",
           rc != 0 and "[rank 0]" in out and "G4_FAULT_ERROR" in out and not left and no_library_text(out),
           f"rc {rc}, left {left}; {out[-300:]!r}")


@case("ranks", "a two-rank run resumed on one rank")
def _(ctx):
    ref_run, want, rc, out = two_rank_reference(ctx)
    if rc:
        return
    run = ctx.run_dir("one-rank-resume")
    args = ["rl", ctx.recipe, "checkpoint.dir=" + run, "train.steps=4"]
    ctx.g4.run(["launch", "-n", "2"] + args, env={"G4_FAULT_KILL": "step:2", "G4_FAULT_RANK": "1"}, timeout=120)
    rc, out = ctx.g4.run(args + ["--resume"], timeout=120)
    got = curve(metric_lines(run), CURVE_KEYS)
    # The rollouts do not depend on how the prompts are split over ranks (one seed per request); the gradients'
    # sums run in another order, so losses may differ in their last bits.
    same = {k: v for k, v in got.items() if k[1] in ("reward", "accuracy", "response_length_mean")}
    want_same = {k: v for k, v in want.items() if k[1] in ("reward", "accuracy", "response_length_mean")}
    record("ranks", "--resume of a two-rank run on one rank: runs to the end with the two-rank run's rewards",
           rc == 0 and same == want_same and len(got) == len(want), f"rc {rc}; {out[-300:]!r}")


# ---------------------------------------------------------------------------------------------------- degenerate

@case("degenerate", "every reward equal (no dynamic sampling)")
def _(ctx):
    run = ctx.run_dir("all-equal")
    rc, out = ctx.g4.run(["rl", ctx.recipe, "checkpoint.dir=" + run, "reward.pattern=QQQ#never"])
    recs = step_records(run)
    finite = rc == 0 and recs and all(r["loss"] == 0 and r["grad_norm"] == 0 for r in recs)
    said = "no reward spread" in out
    record("degenerate", "every reward equal: finite zero loss, and the step says nothing was learned",
           bool(finite and said), f"rc {rc}, records {[(r['loss'], r['grad_norm']) for r in recs]}, "
           f"said: {said}; {out[-300:]!r}")


@case("degenerate", "every reward equal with dynamic sampling")
def _(ctx):
    expect_error("degenerate", "every reward equal with dynamic sampling: an error naming the key", ctx.g4,
                 ctx.args("ds-all-equal", "reward.pattern=QQQ#never", "grpo.use_dynamic_sampling=true",
                          "grpo.dynamic_sampling_max_gen_batches=2"),
                 ["grpo.dynamic_sampling_max_gen_batches = 2", "gave only 0 of the 12 samples"])


@case("degenerate", "dynamic sampling fills the step")
def _(ctx):
    run = ctx.run_dir("ds")
    rc, out = ctx.g4.run(["rl", ctx.recipe, "checkpoint.dir=" + run, "grpo.use_dynamic_sampling=true",
                          "grpo.batch_multiplier=1.5"])
    recs = step_records(run)
    ok = rc == 0 and recs and all(r["samples_trained"] == 12 for r in recs)
    record("degenerate", "dynamic sampling fills the step with 12 samples", bool(ok), "" if ok else out[-500:])


@case("degenerate", "every response truncated")
def _(ctx):
    run = ctx.run_dir("truncated")
    rc, out = ctx.g4.run(["rl", ctx.recipe, "checkpoint.dir=" + run, "generation.max_new_tokens=1"])
    recs = step_records(run)
    ok = rc == 0 and recs and all(r["truncation_rate"] == 1 and r["loss"] == r["loss"] for r in recs)
    record("degenerate", "every response truncated (max_new_tokens 1): runs, truncation_rate 1", bool(ok),
           "" if ok else out[-500:])
    run = ctx.run_dir("truncated-shaped")
    rc, out = ctx.g4.run(["rl", ctx.recipe, "checkpoint.dir=" + run, "grpo.reward_shaping.enabled=true",
                          "grpo.reward_shaping.overlong_buffer_length=2"])
    recs = step_records(run)
    ok = rc == 0 and recs and all(r["loss"] == r["loss"] for r in recs)
    record("degenerate", "overlong shaping over truncated responses: finite", bool(ok), "" if ok else out[-500:])


@case("degenerate", "more prompts per step than the prompt set holds")
def _(ctx):
    expect_success("degenerate", "more prompts per step than the prompt set holds (epochs wrap)", ctx.g4,
                   file_prompts(ctx, "two.jsonl", prompt_lines({"prompt": "Say th"}, {"prompt": "Say the"}),
                                "grpo.num_prompts_per_step=5", "train.steps=1"))


@case("degenerate", "validation with no validation prompts")
def _(ctx):
    expect_success("degenerate", "validation asked for, 0 task validation prompts: the plan says 0", ctx.g4,
                   ctx.args("noval", "prompts.task_validation_prompts=0", "log.validation_every=1", "train.steps=1"),
                   ["0 validation prompts"])


# ---------------------------------------------------------------------------------------------------------- main

def main():
    CASES.main(__doc__, lambda g4, work, a: Ctx(g4, work, a.rng, a.kills), kills=4,
               sections="recipe,data,reward,resume,disk,ranks,degenerate")


if __name__ == "__main__":
    main()
