#!/usr/bin/env python3
"""Attacks `g4 train` on the CPU: interruptions, damaged checkpoints, bad recipes, odd data, the export.

Usage: python3 tools/probe_train.py [--g4 build-cpu/g4] [--work DIR] [--seed S] [--kills N]
                                    [--sections recipe,data,rundir,interrupt,corrupt,export]
                                    [--python /work/venv-ref/bin/python]

Every case runs the real binary on a tiny built-in MoE (2 layers, hidden 64) over tests/data/text/genesis.txt and
states what it expects: an exit status, an error naming a file/key/shape, or a loss curve equal to an uninterrupted
run's. A case that crashes (a signal, an abort), prints a library's exception text, loses an earlier checkpoint or
log line, or resumes to a different curve is a DEFECT; the script prints one line per case and exits non-zero when
any case failed. Nothing needs torch except the export section (transformers in --python; skipped without it).

Interruptions: SIGINT, SIGTERM and SIGKILL at random moments of a run (seeded), plus kills at fixed points
(G4_FAULT_KILL=step:N / checkpoint:N: halfway through writing a checkpoint, the final one included). After each, every
complete checkpoint must be whole (each safetensors file's header and data fill the file exactly), metrics.jsonl must
hold the uninterrupted run's lines for the steps it has, and --resume (interrupted again at random, up to three
times) must end with the uninterrupted run's losses bit for bit (the CPU trainer is deterministic).

The disk-full and read-only cases mount a small tmpfs (needs root; skipped and said so otherwise).
"""
import json, os, random, shutil, struct, subprocess, sys, tempfile, time

import probe_commands
from probe_commands import (ROOT, G4, command_probe_parser, checkpoint_problems, complete_checkpoints, expect_error, expect_success,
                       interrupted_run_problems, metric_lines, no_library_text, record)


def write_recipe(path, run_dir, **over):
    """The probes' base recipe (absolute paths), with `over` laid over it as `section.key: value`."""
    r = {
        "model": {"name": "tiny-moe", "config": {"hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 2,
                                                 "num_experts": 4, "moe_intermediate_size": 32, "head_dim": 16,
                                                 "global_head_dim": 32, "sliding_window": 16}},
        "tokenizer": os.path.join(ROOT, "recipes/data/kjv-tokenizer"),
        "data": {"train": [os.path.join(ROOT, "tests/data/text/genesis.txt")], "seq_len": 64,
                 "validation_fraction": 0.2},
        "optimizer": {"lr": 3e-3, "betas": [0.9, 0.95], "weight_decay": 0.1},
        "schedule": {"kind": "cosine", "warmup_steps": 2},
        "train": {"steps": 8, "batch_size": 2},
        "checkpoint": {"dir": run_dir, "every": 2, "keep": 2},
        "log": {"validation_every": 4, "validation_batches": 2, "samples": 0},
    }
    for k, v in over.items():
        sec, key = k.split(".", 1) if "." in k else (None, k)
        if sec is None:
            r[key] = v
        else:
            r.setdefault(sec, {})[key] = v
    with open(path, "w") as f:
        json.dump(r, f, indent=1)  # JSON is YAML
    return path


def curve(lines):
    """(step, kind) -> value of the losses (timings differ between runs)."""
    return probe_commands.curve(lines, ("loss", "validation_loss", "lr", "grad_norm"))


# -------------------------------------------------------------------------------------------------------- sections

def probe_recipe(g4, work, mounts):
    s = "recipe"
    run = os.path.join(work, "recipe-run")
    base = write_recipe(os.path.join(work, "recipe.yaml"), run, **{"train.steps": 1, "log.validation_every": 0})
    for over, wants in [
        ("optimizer.lrr=1", ["unknown recipe key 'optimizer.lrr'", "recipe.yaml"]),
        ("optimizer.lr=fast", ["'optimizer.lr' has the wrong type"]),
        ("optimizer.lr=-1", ["'optimizer.lr' must be > 0"]),
        ("train.steps=0", ["'train.steps' must be > 0"]),
        ("train.steps=1.5", ["'train.steps' has the wrong type"]),
        ("train.batch_size=-2", ["'train.batch_size' must be > 0"]),
        ("data.seq_len=0", ["'data.seq_len' must be > 0"]),
        ("data.validation_fraction=1", ["'data.validation_fraction' must be in"]),
        ("checkpoint.keep=-1", ["'checkpoint.keep' must be >= 0"]),
        ("log.every=0", ["'log.every' must be > 0"]),
        ("checkpoint.dir=", ["'checkpoint.dir' has the wrong type"]),
        ("data.train=[]", ["'data.train' names no file"]),
        ("data.train=/nonexistent/kjv.txt", ["/nonexistent/kjv.txt"]),
        ("tokenizer=/nonexistent/tok", ["/nonexistent/tok"]),
        ("data.seq_len=100000", ["exceeds the model's context length"]),
        ("checkpoint.dir=" + os.path.join(base, "sub"), ["checkpoint.dir", base]),  # a file on the way
    ]:
        expect_error(s, over, g4, ["train", base, over], wants)
    # Relative data paths are taken from the working directory, not the recipe's folder.
    shutil.copy(os.path.join(ROOT, "tests/data/text/genesis.txt"), os.path.join(work, "genesis.txt"))
    rel = write_recipe(os.path.join(work, "relative.yaml"), run, **{"train.steps": 1, "log.validation_every": 0,
                                                                     "data.train": ["genesis.txt"]})
    expect_error(s, "data path relative to the recipe, run from elsewhere", g4, ["train", rel],
                 ["genesis.txt", "working directory"], cwd=ROOT)
    if "full" in mounts:
        d = os.path.join(mounts["full"], "run")
        expect_error(s, "disk full while writing a checkpoint", g4,
                     ["train", base, "checkpoint.dir=" + d], ["No space left on device", d])
        leftovers = [n for n in os.listdir(os.path.join(d, "checkpoints")) if n.startswith("step-")]
        record(s, "disk full leaves no checkpoint that looks complete", not leftovers, str(leftovers))
    else:
        record(s, "disk full", True, "skipped: no tmpfs could be mounted (needs root)")
    if "ro" in mounts:
        expect_error(s, "read-only output dir", g4, ["train", base, "checkpoint.dir=" + os.path.join(mounts["ro"], "r")],
                     ["Read-only file system", "checkpoint.dir"])
    else:
        record(s, "read-only output dir", True, "skipped: no read-only tmpfs (needs root)")


def probe_data(g4, work):
    s = "data"
    d = os.path.join(work, "data")
    os.makedirs(d, exist_ok=True)
    chat_tok = os.path.join(ROOT, "recipes/data/kjv-chat-tokenizer")
    cases = [  # file name, bytes, extra overrides, None (trains) or the strings the error must hold
        ("empty.txt", b"", [], ["no documents in", "empty.txt"]),
        ("blank.txt", b"\n\n\n  \n", [], ["no documents in", "blank.txt"]),
        ("bom.txt", b"\xef\xbb\xbfIn the beginning God created the heaven and the earth.\n", [], None),
        ("bad-utf8.txt", b"In the \xff\xfe beginning\n", [], ["bad-utf8.txt:1", "not valid UTF-8"]),
        ("not-object.jsonl", b'{"text": "hello world"}\n[1, 2]\n', [], ["not-object.jsonl:2", "JSON object"]),
        ("empty-lines.jsonl", b'{"text": "hello world"}\n\n{"text": "again"}\n', [], None),
        ("bom.jsonl", b'\xef\xbb\xbf{"text": "hello world"}\n', [], None),
        ("cut.jsonl", b'{"text": "hello world"}\n{"text": "hel', [], ["cut.jsonl:2", "invalid JSON"]),
        ("no-role.jsonl", b'{"messages": [{"content": "hi"}, {"role": "assistant", "content": "yo"}]}\n',
         ["tokenizer=" + chat_tok], ["no-role.jsonl:1", "'role'"]),
        ("no-content.jsonl", b'{"messages": [{"role": "user"}, {"role": "assistant", "content": "yo"}]}\n',
         ["tokenizer=" + chat_tok], ["no-content.jsonl:1", "'content'"]),
        ("bad-role.jsonl", b'{"messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n',
         ["tokenizer=" + chat_tok], ["bad-role.jsonl:1", "wizard"]),
        ("content-number.jsonl", b'{"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "yo"}]}\n',
         ["tokenizer=" + chat_tok], ["content-number.jsonl:1", "content"]),
        ("no-reply.jsonl", b'{"messages": [{"role": "user", "content": "hi there"}]}\n',
         ["tokenizer=" + chat_tok], ["no documents in", "without an assistant reply"]),
        ("long.txt", (" ".join(["word"] * 300) + "\n").encode(), ["data.overlong=error"],
         ["long.txt:1", "longer than seq_len 64"]),
        ("long-split.txt", (" ".join(["word"] * 300) + "\n").encode(), [], None),
        ("long-truncate.txt", (" ".join(["word"] * 300) + "\n").encode(), ["data.overlong=truncate"], None),
        ("long-chat.jsonl", json.dumps({"messages": [{"role": "user", "content": "word " * 200},
                                                     {"role": "assistant", "content": "yo"}]}).encode() + b"\n",
         ["tokenizer=" + chat_tok, "data.overlong=error"], ["long-chat.jsonl:1", "longer than seq_len"]),
        # Truncated before its reply: every label masked. It trained with loss 0.0 and gradient norm 0.
        ("reply-cut-off.jsonl", json.dumps({"messages": [{"role": "user", "content": "word " * 200},
                                                         {"role": "assistant", "content": "yo"}]}).encode() + b"\n",
         ["tokenizer=" + chat_tok, "data.overlong=truncate"], ["no training document of", "has a trained token"]),
    ]
    for name, data, extra, wants in cases:
        p = os.path.join(d, name)
        open(p, "wb").write(data)
        run = os.path.join(d, "run-" + name)
        shutil.rmtree(run, ignore_errors=True)
        args = ["train", os.path.join(work, "recipe.yaml"), "data.train=" + p, "checkpoint.dir=" + run, "train.steps=1",
                "log.validation_every=0"] + extra
        if wants is None:
            expect_success(s, name + " trains", g4, args)
        else:
            expect_error(s, name, g4, args, wants)
    # One document cannot be split for validation: the plan line says so (0 validation rows).
    p = os.path.join(d, "one-doc.txt")
    open(p, "w").write("In the beginning God created the heaven and the earth.\n")
    run = os.path.join(d, "run-one-doc")
    shutil.rmtree(run, ignore_errors=True)
    out = expect_success(s, "validation_fraction leaving no validation document", g4,
                         ["train", os.path.join(work, "recipe.yaml"), "data.train=" + p, "checkpoint.dir=" + run,
                          "train.steps=1", "data.validation_fraction=0.5"], ["0 validation rows"])
    record(s, "no validation set is said, not silent", "no validation: data.validation_fraction" in out,
           "" if "no validation" in out else "the run names no reason for the missing validation loss")


def probe_rundir(g4, work):
    s = "rundir"
    run = os.path.join(work, "earlier")
    shutil.rmtree(run, ignore_errors=True)
    recipe = write_recipe(os.path.join(work, "rundir.yaml"), run, **{"train.steps": 4})
    rc, out = g4.run(["train", recipe])
    if rc:
        record(s, "earlier run", False, out[-400:])
        return
    before = open(os.path.join(run, "metrics.jsonl")).read()
    ckpts = complete_checkpoints(run)
    expect_error(s, "a new run over an earlier one (no --resume)", g4, ["train", recipe, "train.steps=3"],
                 ["holds an earlier run", "--resume"])
    after = open(os.path.join(run, "metrics.jsonl")).read()
    record(s, "the earlier run's metrics and checkpoints stay", after == before and complete_checkpoints(run) == ckpts,
           f"checkpoints {ckpts} -> {complete_checkpoints(run)}, metrics {len(before)} -> {len(after)} bytes")
    expect_success(s, "--resume of a finished run only summarises", g4, ["train", recipe, "--resume"],
                   ["resuming from"])


def probe_interrupt(g4, work, rng, kills):
    s = "interrupt"
    ref = os.path.join(work, "int-ref")
    shutil.rmtree(ref, ignore_errors=True)
    # 16 steps, a checkpoint every 2: a random moment often falls in a checkpoint's writing.
    recipe = write_recipe(os.path.join(work, "interrupt.yaml"), ref, **{"train.steps": 16})
    t0 = time.time()
    rc, out = g4.run(["train", recipe])
    span = time.time() - t0
    if rc:
        record(s, "reference run", False, out[-400:])
        return
    want = curve(metric_lines(ref))
    # Fixed points: after a step, halfway through a checkpoint, halfway through the final checkpoint (the export).
    trials = [("G4_FAULT_KILL=step:3", {"G4_FAULT_KILL": "step:3"}), ("G4_FAULT_KILL=checkpoint:4",
              {"G4_FAULT_KILL": "checkpoint:4"}), ("G4_FAULT_KILL=checkpoint:16 (the final export)",
                                                   {"G4_FAULT_KILL": "checkpoint:16"})]
    trials += [(f"random #{i}", None) for i in range(kills)]
    for name, env in trials:
        run = os.path.join(work, "int-" + name.split()[0].replace("=", "-").replace(":", "-").replace("#", ""))
        shutil.rmtree(run, ignore_errors=True)
        # After each kill the complete checkpoints are whole and the logged lines the reference's.
        log, problems = interrupted_run_problems(g4, ["train", recipe, "checkpoint.dir=" + run], env, rng, span, run,
                                                 want, curve)
        record(s, f"{name} {' '.join(log or [])}".strip(), not problems, "; ".join(problems))


def probe_corrupt(g4, work):
    s = "corrupt"
    src = os.path.join(work, "int-ref")
    if not os.path.isdir(src):
        src = os.path.join(work, "corrupt-ref")
        shutil.rmtree(src, ignore_errors=True)
        g4.run(["train", write_recipe(os.path.join(work, "interrupt.yaml"), src, **{"train.steps": 16})])
    recipe = os.path.join(work, "interrupt.yaml")
    ck = complete_checkpoints(src)  # step 6 and 8 (keep 2)
    names = [os.path.basename(c) for c in ck]

    def fresh(name):
        d = os.path.join(work, "cor-" + name)
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(src, d)
        return d

    def truncate(p, frac=0.5):
        os.truncate(p, int(os.path.getsize(p) * frac))

    # The newest damaged: resumes from the one before, saying which file.
    for what, damage in [
        ("truncated model.safetensors", lambda c: truncate(os.path.join(c, "model.safetensors"))),
        ("truncated optimizer.safetensors", lambda c: truncate(os.path.join(c, "optimizer.safetensors"))),
        ("missing optimizer.safetensors", lambda c: os.remove(os.path.join(c, "optimizer.safetensors"))),
        ("missing model.safetensors", lambda c: os.remove(os.path.join(c, "model.safetensors"))),
        ("header cut to 4 bytes", lambda c: truncate(os.path.join(c, "model.safetensors"), 4e-7)),
        ("empty trainer_state.json", lambda c: open(os.path.join(c, "trainer_state.json"), "w").close()),
        ("trainer_state.json step is a string",
         lambda c: json.dump(dict(json.load(open(os.path.join(c, "trainer_state.json"))), step="eight"),
                             open(os.path.join(c, "trainer_state.json"), "w"))),
    ]:
        d = fresh("newest-" + what.replace(" ", "-"))
        damage(os.path.join(d, "checkpoints", names[-1]))
        rc, out = g4.run(["train", recipe, "checkpoint.dir=" + d, "--resume"])
        moved = os.path.isdir(os.path.join(d, "checkpoints", "damaged-" + names[-1]))
        ok = rc == 0 and f"{names[-1]} cannot be resumed" in out and f"(step {int(names[-2][5:])})" in out \
            and no_library_text(out) and moved and not checkpoint_problems(d)
        reason = [l for l in out.splitlines() if "cannot be resumed" in l]
        record(s, f"newest checkpoint: {what}", ok, (reason[0][:300] if reason else "") if ok else out[-600:])
    # Every checkpoint damaged: an error listing each, never a silent start from scratch.
    d = fresh("all-truncated")
    for c in complete_checkpoints(d):
        truncate(os.path.join(c, "model.safetensors"))
    expect_error(s, "every checkpoint truncated", g4, ["train", recipe, "checkpoint.dir=" + d, "--resume"],
                 ["can be resumed"] + [os.path.join(d, "checkpoints", n) for n in names])
    # A checkpoint of another model: another width.
    d = fresh("other-model")
    expect_error(s, "checkpoint of another model (hidden_size 32 vs 64)", g4,
                 ["train", recipe, "checkpoint.dir=" + d, "model.config.hidden_size=32", "--resume"],
                 ["can be resumed", "model.safetensors", "shape"])
    # Another layout: a checkpoint whose optimizer state was written by 2 ranks (sharded), read by one.
    d = fresh("other-layout")
    for c in complete_checkpoints(d):
        os.rename(os.path.join(c, "optimizer.safetensors"), os.path.join(c, "optimizer-rank0-of2.safetensors"))
    expect_error(s, "optimizer state of another parallel layout (rank0-of2 file only)", g4,
                 ["train", recipe, "checkpoint.dir=" + d, "--resume"], ["can be resumed", "optimizer"])
    # The same model resumed with another recipe (other rows, batch): allowed, but the differences are named.
    d = fresh("other-recipe")
    expect_success(s, "resumed with another data.seq_len and batch size", g4,
                   ["train", recipe, "checkpoint.dir=" + d, "train.steps=18", "data.seq_len=32", "train.batch_size=3",
                    "--resume"], ["note: the recipe differs", "data.seq_len 64 -> 32", "train.batch_size 2 -> 3"])
    # A tensor of the wrong shape inside an otherwise fine checkpoint (the header rewritten).
    d = fresh("wrong-shape")
    for c in complete_checkpoints(d):
        p = os.path.join(c, "model.safetensors")
        raw = open(p, "rb").read()
        n = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8:8 + n])
        key = next(k for k, v in header.items() if k != "__metadata__" and len(v["shape"]) == 2)
        r0, c0 = header[key]["shape"]
        header[key]["shape"] = [c0, r0] if r0 != c0 else [r0 * 2, c0 // 2]
        h = json.dumps(header).encode()
        h += b" " * (-len(h) % 8)
        open(p, "wb").write(struct.pack("<Q", len(h)) + h + raw[8 + n:])
    expect_error(s, f"a tensor stored transposed ({key})", g4, ["train", recipe, "checkpoint.dir=" + d, "--resume"],
                 ["can be resumed", key])


def probe_export(g4, work, python):
    s = "export"
    if not python or not os.path.exists(python):
        record(s, "export", True, "skipped: no Python with transformers (--python)")
        return
    ck = complete_checkpoints(os.path.join(work, "int-ref"))
    targets = []
    if ck:
        targets.append(("tiny-moe SFT checkpoint", ck[-1]))
    mm = os.path.join(work, "mm-run")
    shutil.rmtree(mm, ignore_errors=True)
    rc, out = g4.run(["train", "recipes/multimodal/tiny-image-sft.yaml", "train.steps=2", "checkpoint.every=0",
                      "log.validation_every=0", "checkpoint.dir=" + mm])
    if rc == 0:
        targets.append(("tiny-image-sft checkpoint (vision + audio towers)", complete_checkpoints(mm)[-1]))
    else:
        record(s, "tiny-image-sft run", False, out[-500:])
    script = r'''
import json, subprocess, sys, torch, transformers
from safetensors.torch import save_file, load_file
g4, ckpt, work = sys.argv[1:4]
cfg = transformers.AutoConfig.from_pretrained(ckpt)
cls = getattr(transformers, cfg.architectures[0])
model, info = cls.from_pretrained(ckpt, dtype=torch.float32, output_loading_info=True)
problems = {k: v for k, v in info.items() if v}
vocab = cfg.get_text_config().vocab_size
ids = torch.randint(3, vocab, (2, 12), generator=torch.Generator().manual_seed(0))
save_file({"input_ids": ids.to(torch.int64).contiguous()}, work + "/in.safetensors")
subprocess.run([g4, "forward", ckpt, "--inputs", work + "/in.safetensors", "--out", work + "/out.safetensors"],
               check=True, capture_output=True)
ours = load_file(work + "/out.safetensors")["logits"]
with torch.no_grad():
    theirs = model.eval()(input_ids=ids).logits
print(json.dumps({"diff": (ours.double() - theirs.double()).abs().max().item(), "problems": str(problems)}))
'''
    for name, ck_dir in targets:
        p = subprocess.run([python, "-c", script, g4.binary, ck_dir, work], capture_output=True, text=True)
        if p.returncode:
            record(s, name, False, p.stderr[-800:])
            continue
        res = json.loads(p.stdout.strip().splitlines()[-1])
        ok = res["diff"] <= 1e-4 and res["problems"] == "{}"
        record(s, name + " loads in transformers with g4's logits", ok,
               f"max |logits| difference {res['diff']:.2e}, loading problems {res['problems']}")


def mount_tmpfs(work):
    mounts = {}
    for name, opts in [("full", "size=1m"), ("ro", "ro,size=1m")]:
        d = os.path.join(work, "mnt-" + name)
        if probe_commands.mount_tmpfs(d, opts):
            mounts[name] = d
    return mounts


def main():
    ap = command_probe_parser(__doc__, 8, "recipe,data,rundir,interrupt,corrupt,export")
    ap.add_argument("--python", default="/work/venv-ref/bin/python", help="a Python with transformers (export)")
    a = ap.parse_args()
    work = os.path.abspath(a.work or tempfile.mkdtemp(prefix="probe_train_"))
    os.makedirs(work, exist_ok=True)
    g4 = G4(os.path.abspath(a.g4), work)
    rng = random.Random(a.seed)
    sections = a.sections.split(",")
    mounts = mount_tmpfs(work) if "recipe" in sections else {}
    try:
        if "recipe" in sections:
            probe_recipe(g4, work, mounts)
        if "data" in sections:
            probe_data(g4, work)
        if "rundir" in sections:
            probe_rundir(g4, work)
        if "interrupt" in sections:
            probe_interrupt(g4, work, rng, a.kills)
        if "corrupt" in sections:
            probe_corrupt(g4, work)
        if "export" in sections:
            probe_export(g4, work, a.python)
    finally:
        for d in mounts.values():
            probe_commands.unmount(d)
    sys.exit(probe_commands.summarize(work, a.work))


if __name__ == "__main__":
    main()
