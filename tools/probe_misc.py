#!/usr/bin/env python3
"""Attacks `g4 eval`, `g4 launch`, `g4 task` and `g4 bench` on the CPU with bad input and interruptions.

Usage: python3 tools/probe_misc.py [--g4 build-cpu/g4] [--only NAME[,NAME...]] [--work DIR] [--list]

Every case runs the real binary on the tiny test fixtures (tiny-dense-ple with the serve test's 256-token tokenizer,
the tiny-moe training recipe of probe_train.py for multi-rank runs) and states what it expects: exit status 1 (or
CLI11's usage code) with an error naming the file, key, flag or shape; or a success whose output is checked. A case
that crashes (a signal, an abort), hangs, prints a library's exception text instead of g4's, succeeds where it must
refuse, leaves processes behind or loses a file the user wrote is a DEFECT. One line per case; the exit status is 1
when any case is a DEFECT. `--only` takes parts of case names (`--only launch` runs that group). No torch and no
GPU needed (the bench cases check that GPU benchmarks refuse bad flags, and say that there is no GPU, on a machine
without one); not part of CI (each defect found here has a unit test in tests/cli).
"""
import json, math, os, re, signal, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "serve"))
import openai_client_test as fixture  # noqa: E402  (the serve test's model directory)
from probe_commands import CaseEnv, Cases, Defect, clean, error_line, refused, succeeds  # noqa: E402
from probe_train import write_recipe  # noqa: E402  (the tiny-moe recipe that trains in seconds on the CPU)

DATA = os.path.join(ROOT, "tests", "data")
GENESIS = os.path.join(DATA, "text", "genesis.txt")
TABLE = Cases("misc")
case = TABLE.case


class Env(CaseEnv):
    def __init__(self, g4, scratch):
        super().__init__(g4, scratch)
        self.tiny = os.path.join(scratch, "models", "tiny")  # tokenizer of 256 ids, vocab 256, context 4096
        fixture.make_model_dir(DATA, self.tiny)
        self.notok = os.path.join(DATA, "hf-gemma4", "tiny-dense-ple")  # no tokenizer

    def marker_processes(self):
        """Processes (other than this one) whose command line names this case's folder: what a run left behind."""
        out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
        return [l.strip() for l in out.splitlines() if self.dir in l and str(os.getpid()) != l.split()[0]]


def loss_of(out):
    m = re.search(r"loss (\S+)\s+perplexity (\S+)\s+over (\d+) tokens \((\d+) rows", out)
    if not m:
        raise Defect(f"no loss line in {out[-300:]!r}")
    return float(m.group(1)), float(m.group(2)), int(m.group(3)), int(m.group(4))


# ------------------------------------------------------------------------------------------ g4 eval

def ev(env, data, *extra, model=None):
    return ["eval", model or env.tiny, "--data", data, "--seq-len", 32] + list(extra)


@case("eval.baseline")
def _(env):
    a = loss_of(succeeds(env, ev(env, GENESIS)))
    b = loss_of(succeeds(env, ev(env, GENESIS)))
    if a != b:
        raise Defect(f"two runs differ: {a} and {b}")
    if not all(math.isfinite(x) for x in a[:2]) or a[2] <= 0:
        raise Defect(f"loss line {a}")
    if abs(math.exp(a[0]) - a[1]) > 1e-3 * a[1] + 2e-3:
        raise Defect(f"perplexity {a[1]} is not exp(loss {a[0]})")
    return f"loss {a[0]} over {a[2]} tokens, {a[3]} rows, twice the same"


@case("eval.batch_size_changes_nothing")
def _(env):
    # --batch-size is how many rows a forward pass takes: the loss over all rows is the same for each.
    losses = {b: loss_of(succeeds(env, ev(env, GENESIS, "--batch-size", b))) for b in [1, 3, 1000]}
    base = losses[1]
    for b, l in losses.items():
        if l[2:] != base[2:] or abs(l[0] - base[0]) > 1e-4:
            raise Defect(f"--batch-size {b}: {l} against {base} at 1")
    return f"batch 1, 3, 1000: {base}"


@case("eval.batch_size_out_of_range")
def _(env):
    for v in ["0", "-1", "x", "1e30", "99999999999999999999"]:
        refused(env, ev(env, GENESIS, "--batch-size=" + v), "--batch-size")
    return "0, -1, x, 1e30, 2^66 refused naming --batch-size"


@case("eval.seq_len")
def _(env):
    for v, want in [("0", "--seq-len"), ("-5", "--seq-len"), ("x", "--seq-len"), ("4097", "4096"),
                    ("99999999999999999999", "--seq-len"), ("1000000000000", "4096")]:
        args = ev(env, GENESIS)
        args[args.index("--seq-len") + 1] = v
        refused(env, args, want)
    return "0, -5, x, 2^66 refused; 4097 and 10^12 past the context (4096) refused"


@case("eval.model_missing")
def _(env):
    return refused(env, ev(env, GENESIS, model=os.path.join(env.dir, "nope")), "nope")


@case("eval.model_is_a_file")
def _(env):
    return refused(env, ev(env, GENESIS, model=GENESIS), "genesis.txt")


@case("eval.model_without_weights")
def _(env):
    d = os.path.join(env.dir, "m")
    os.makedirs(d)
    for name in ["config.json", "tokenizer.json"]:
        with open(os.path.join(env.tiny, name)) as f:
            env.file("m/" + name, f.read())
    return refused(env, ev(env, GENESIS, model=d), d, "safetensors")


@case("eval.data_missing")
def _(env):
    return refused(env, ev(env, os.path.join(env.dir, "nope.txt")), "nope.txt")


@case("eval.data_is_a_directory")
def _(env):
    return refused(env, ev(env, env.dir), env.dir)


@case("eval.data_empty")
def _(env):
    return refused(env, ev(env, env.file("e.txt", "")), "e.txt")


@case("eval.data_blank_lines")
def _(env):
    return refused(env, ev(env, env.file("b.txt", "\n\n  \n\t\n")), "b.txt")


@case("eval.jsonl_empty")
def _(env):
    return refused(env, ev(env, env.file("e.jsonl", "\n\n")), "e.jsonl")


@case("eval.data_bom")
def _(env):
    # A UTF-8 BOM is not text: with it, the loss is the loss without it.
    text = open(GENESIS, encoding="utf-8").read()[:3000]
    plain = loss_of(succeeds(env, ev(env, env.file("p.txt", text))))
    bom = loss_of(succeeds(env, ev(env, env.file("b.txt", "\ufeff" + text))))
    if plain != bom:
        raise Defect(f"with a BOM {bom}, without {plain}")
    return f"same loss with and without a BOM ({plain[0]})"


@case("eval.data_invalid_utf8")
def _(env):
    return refused(env, ev(env, env.file("bad.txt", b"In the beginning \xff\xfe God\n")), "bad.txt")


@case("eval.jsonl_bad_lines")
def _(env):
    for name, line in [("array", "[1, 2]"), ("cut", '{"text": "In the beg'), ("wrong_key", '{"txt": "In the"}'),
                       ("number_text", '{"text": 5}'), ("null", "null"), ("string", '"In the beginning"')]:
        f = env.file(f"{name}.jsonl", '{"text": "In the beginning"}\n' + line + "\n")
        refused(env, ev(env, f), f"{name}.jsonl:2")
    return "arrays, cut objects, wrong keys, a number text, null, a string: refused naming file:line"


@case("eval.chat_without_assistant")
def _(env):
    f = env.file("c.jsonl", json.dumps({"messages": [{"role": "user", "content": "In the beginning"}]}) + "\n")
    return refused(env, ev(env, f, "--format", "chat"), "c.jsonl")


@case("eval.chat")
def _(env):
    f = env.file("c.jsonl", json.dumps({"messages": [{"role": "user", "content": "In the beginning"},
                                                     {"role": "assistant", "content": "God created"}]}) + "\n")
    loss = loss_of(succeeds(env, ev(env, f, "--format", "chat")))
    return f"loss {loss[0]} over {loss[2]} tokens"


@case("eval.documents_longer_than_seq_len")
def _(env):
    # Longer documents are split into rows (data.overlong's default): every token is counted once.
    text = open(GENESIS, encoding="utf-8").read()[:4000].replace("\n\n", " ")
    f = env.file("long.txt", text)
    l16 = loss_of(succeeds(env, ["eval", env.tiny, "--data", f, "--seq-len", 16, "--text-split", "file"]))
    l512 = loss_of(succeeds(env, ["eval", env.tiny, "--data", f, "--seq-len", 512, "--text-split", "file"]))
    if l16[3] <= l512[3]:
        raise Defect(f"rows at 16: {l16[3]}, at 512: {l512[3]}")
    return f"seq 16: {l16[3]} rows, seq 512: {l512[3]} rows"


@case("eval.format_and_split")
def _(env):
    refused(env, ev(env, GENESIS, "--format", "yaml"), "yaml")
    refused(env, ev(env, GENESIS, "--text-split", "word"), "word")
    return refused(env, ev(env, env.file("t.txt", "In the beginning\n"), "--format", "jsonl"), "t.txt")


@case("eval.tokenizer_missing")
def _(env):
    refused(env, ev(env, GENESIS, model=env.notok), "tokenizer")
    return refused(env, ev(env, GENESIS, "--tokenizer", os.path.join(env.dir, "nope.json")), "nope.json")


@case("eval.tokenizer_larger_than_model")
def _(env):
    # plain.json has more ids than the model's 256: its ids past the vocabulary must be an error naming the
    # tokenizer, not an embedding lookup's failure or a silent loss.
    return refused(env, ev(env, GENESIS, "--tokenizer", os.path.join(DATA, "tokenizers", "plain.json")),
                   "tokenizer", "256")


@case("eval.sigint")
def _(env):
    # A long evaluation stopped by SIGINT: it ends promptly with a signal's status or an error, no crash.
    text = (open(GENESIS, encoding="utf-8").read() + "\n\n") * 40
    f = env.file("big.txt", text)
    args = ev(env, f)
    args[args.index("--seq-len") + 1] = 512
    p = subprocess.Popen([env.g4] + [str(a) for a in args], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    time.sleep(2)
    if p.poll() is not None:
        raise Defect(f"finished before the signal ({p.returncode}); make the input longer")
    p.send_signal(signal.SIGINT)
    try:
        out, _ = p.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        p.kill()
        raise Defect("did not stop within 20 s of SIGINT")
    clean(out)
    if p.returncode not in (-signal.SIGINT, 130, 1):
        raise Defect(f"exit status {p.returncode} after SIGINT: {out[-300:]!r}")
    return f"stopped, status {p.returncode}"


# ------------------------------------------------------------------------------------------ g4 launch

def train_args(env, steps=4, **over):
    run = os.path.join(env.dir, "run")
    r = write_recipe(os.path.join(env.dir, "recipe.yaml"), run,
                     **{"train.steps": steps, "log.validation_every": 0, "checkpoint.every": 0, **over})
    return ["train", r], run


@case("launch.n_out_of_range")
def _(env):
    for v in ["0", "-1", "x", "99999999999"]:
        refused(env, ["launch", "-n", v, "inspect", env.tiny], "-n")
    return "0, -1, x, 10^11 refused naming -n"


@case("launch.n_huge")
def _(env):
    # More ranks than a machine can start: refused before mpirun tries to fork a million processes.
    return refused(env, ["launch", "-n", 1000000, "inspect", env.tiny], "-n", timeout=30)


@case("launch.one_rank")
def _(env):
    out = succeeds(env, ["launch", "-n", 1, "inspect", env.tiny])
    if not all(l.startswith("[rank 0] ") for l in out.splitlines() if l.strip()):
        raise Defect(f"lines without the rank prefix: {out[:300]!r}")
    return "output prefixed [rank 0]"


@case("launch.two_ranks")
def _(env):
    out = succeeds(env, ["launch", "-n", 2, "inspect", env.tiny])
    for r in (0, 1):
        if f"[rank {r}] " not in out:
            raise Defect(f"no line of rank {r}: {out[:300]!r}")
    return "both ranks' lines prefixed"


@case("launch.two_ranks_one_file")
def _(env):
    # Both ranks run `g4 task`; rank 0 alone writes --out (the other ranks would race its existence check): one whole
    # file is left.
    out = os.path.join(env.dir, "t.jsonl")
    succeeds(env, ["launch", "-n", 2, "task", "arithmetic", "--count", 50000, "--out", out], timeout=120)
    lines = read_jsonl(out)
    if len(lines) != 50000 or [f for f in os.listdir(env.dir) if ".tmp" in f]:
        raise Defect(f"{len(lines)} lines, files {os.listdir(env.dir)}")
    return "one whole file of 50000 lines, no temporary file left"


@case("launch.not_a_command")
def _(env):
    for n in (1, 2):
        rc, out = env.run(["launch", "-n", n, "frobnicate", "x"])
        clean(out)
        if rc == 0 or "frobnicate" not in out:
            raise Defect(f"-n {n}: rc {rc}, {out[-300:]!r}")
    return refused(env, ["launch", "-n", 1], "command")


@case("launch.nested")
def _(env):
    refused(env, ["launch", "-n", 1, "launch", "-n", 1, "inspect", env.tiny], "launch")
    return refused(env, ["launch", "-n", 2, "launch-rank", "inspect", env.tiny], "launch-rank")


def faulted_launch(env, steps, timeout, fault, rank, *wants):
    """Two ranks under `g4 launch` with fault `fault` ({"G4_FAULT_ERROR": "step:1"}) on `rank`: the run must fail,
    print every string of `wants` and leave no process behind."""
    args, _ = train_args(env, steps=steps)
    rc, out = env.run(["launch", "-n", 2] + args, timeout=timeout, env=dict(fault, G4_FAULT_RANK=str(rank)))
    left = env.marker_processes()
    if rc == 0 or any(w not in out for w in wants) or left:
        raise Defect(f"rc {rc}, left {left}: {out[-500:]!r}")
    return rc


@case("launch.rank_fails_early")
def _(env):
    # One rank's error (the other rank is waiting for it in a collective): every rank stops, the status is
    # non-zero, the failing rank's message is shown, nothing is left running.
    rc = faulted_launch(env, 50, 120, {"G4_FAULT_ERROR": "step:1"}, 1, "G4_FAULT_ERROR", "[rank 1]")
    return f"rc {rc}, rank 1's error shown, no process left"


@case("launch.rank_fails_late")
def _(env):
    rc = faulted_launch(env, 30, 180, {"G4_FAULT_ERROR": "step:20"}, 0, "G4_FAULT_ERROR")
    return f"rc {rc}, rank 0's error shown, no process left"


@case("launch.rank_killed")
def _(env):
    rc = faulted_launch(env, 50, 120, {"G4_FAULT_KILL": "step:2"}, 1)
    return f"rc {rc}, no process left"


def interrupt_launcher(env, n, sig):
    args, _ = train_args(env, steps=100000)
    p = subprocess.Popen([env.g4, "launch", "-n", str(n)] + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and len(env.marker_processes()) < 1 + 2 * n:
        time.sleep(0.2)
    time.sleep(1.5)
    if p.poll() is not None:
        raise Defect(f"ended before the signal: {p.communicate()[0][-300:]!r}")
    p.send_signal(sig)
    try:
        out, _ = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        raise Defect(f"the launcher did not stop within 30 s of {sig.name}")
    time.sleep(1)
    left = env.marker_processes()
    if left:
        for l in left:
            try:
                os.kill(int(l.split()[0]), signal.SIGKILL)
            except ProcessLookupError:
                pass
        raise Defect(f"after {sig.name} to the launcher, left running: {left}")
    clean(out)
    if p.returncode == 0:
        raise Defect(f"exit status 0 after {sig.name}")
    return f"status {p.returncode}, no process left"


@case("launch.sigint_one_rank")
def _(env):
    return interrupt_launcher(env, 1, signal.SIGINT)


@case("launch.sigint_two_ranks")
def _(env):
    return interrupt_launcher(env, 2, signal.SIGINT)


@case("launch.sigterm_two_ranks")
def _(env):
    return interrupt_launcher(env, 2, signal.SIGTERM)


@case("launch.no_mpirun")
def _(env):
    # PATH without mpirun: -n 2 must say what is missing; -n 1 needs none.
    empty = os.path.join(env.dir, "bin")
    os.makedirs(empty)
    rc, out = env.run(["launch", "-n", 2, "inspect", env.tiny], env={"PATH": empty})
    clean(out)
    if rc != 1 or "mpirun" not in out:
        raise Defect(f"rc {rc}: {out[-300:]!r}")
    rc, out2 = env.run(["launch", "-n", 1, "inspect", env.tiny], env={"PATH": empty})
    if rc != 0:
        raise Defect(f"-n 1 without mpirun: rc {rc}: {out2[-300:]!r}")
    return error_line(out)


# ------------------------------------------------------------------------------------------ g4 task

def read_jsonl(path):
    with open(path) as f:
        return [json.loads(l) for l in f]


def countdown_ok(expr, numbers, target):
    if not re.fullmatch(r"[\d\s+\-*()]+", expr):
        return False
    used = [int(x) for x in re.findall(r"\d+", expr)]
    pool = list(numbers)
    for u in used:
        if u not in pool:
            return False
        pool.remove(u)
    return eval(expr) == target  # noqa: S307 - digits, + - * and brackets only (checked above)


@case("task.answers_verify")
def _(env):
    # Every written problem's answer is right, checked here independently of g4's generator: the arithmetic
    # expression evaluates to the answer; the countdown answer uses the numbers at most once and hits the target.
    checked = 0
    for task in ["arithmetic", "countdown"]:
        for d in [0, 3, 8]:
            out = os.path.join(env.dir, f"{task}{d}.jsonl")
            succeeds(env, ["task", task, "--count", 50, "--difficulty", d, "--seed", 7, "--out", out])
            for i, line in enumerate(read_jsonl(out)):
                if task == "arithmetic":
                    ok = re.fullmatch(r"[\d\s+\-*()]+", line["expression"]) and \
                        str(eval(line["expression"])) == str(line["answer"])  # noqa: S307 - checked digits/ops
                else:
                    ok = countdown_ok(str(line["answer"]), line["numbers"], line["target"])
                if not ok or "Answer:" not in line["prompt"]:
                    raise Defect(f"{task} difficulty {d} problem {i}: {line}")
                checked += 1
    return f"{checked} problems verified"


@case("task.sft_answers_verify")
def _(env):
    out = os.path.join(env.dir, "sft.jsonl")
    ref = os.path.join(env.dir, "p.jsonl")
    succeeds(env, ["task", "countdown", "--count", 30, "--sft", "--seed", 3, "--out", out])
    succeeds(env, ["task", "countdown", "--count", 30, "--seed", 3, "--out", ref])
    for line, p in zip(read_jsonl(out), read_jsonl(ref)):
        reply = line["messages"][1]["content"]
        m = re.search(r"Answer: (.*)$", reply.strip())
        if line["messages"][0]["content"] != p["prompt"] or not m or \
                not countdown_ok(m.group(1), p["numbers"], p["target"]):
            raise Defect(f"SFT reply {reply!r} to {p}")
    return "30 countdown replies reach their targets"


@case("task.deterministic")
def _(env):
    a, b, c = (os.path.join(env.dir, n) for n in ["a", "b", "c"])
    succeeds(env, ["task", "arithmetic", "--count", 20, "--seed", 5, "--out", a])
    succeeds(env, ["task", "arithmetic", "--count", 20, "--seed", 5, "--out", b])
    succeeds(env, ["task", "arithmetic", "--count", 10, "--begin", 10, "--seed", 5, "--out", c])
    la, lb, lc = read_jsonl(a), read_jsonl(b), read_jsonl(c)
    if la != lb or la[10:] != lc:
        raise Defect("the same seed gave other problems, or --begin 10 is not problems 10..19")
    return "same seed, same problems; --begin picks the range"


@case("task.flags_out_of_range")
def _(env):
    out = os.path.join(env.dir, "o.jsonl")
    for flags, want in [(["--count=-1"], "--count"), (["--count", "x"], "--count"), (["--begin=-1"], "--begin"),
                        (["--difficulty=-1"], "difficulty"), (["--difficulty", 9], "difficulty"),
                        (["--seed", 2 ** 64], "--seed"), (["--seed=-1"], "--seed"), (["--seed", "x"], "--seed"),
                        (["--answer-line-fraction", "nan", "--sft"], "--answer-line-fraction"),
                        (["--answer-line-fraction", 2, "--sft"], "--answer-line-fraction"),
                        (["--count", 2 ** 64], "--count")]:
        refused(env, ["task", "arithmetic", "--out", out] + flags, want)
        if os.path.exists(out):
            raise Defect(f"{flags}: {out} written despite the error")
    return "count -1/x/2^64, begin -1, difficulty -1/9, seed 2^64/-1/x, fraction NaN/2 refused"


@case("task.unknown_task")
def _(env):
    return refused(env, ["task", "sudoku", "--out", os.path.join(env.dir, "o.jsonl")], "sudoku", "arithmetic")


@case("task.count_huge")
def _(env):
    # A count no memory holds must be refused at once, not allocate until the machine gives up.
    out = os.path.join(env.dir, "o.jsonl")
    r = refused(env, ["task", "arithmetic", "--count", 10 ** 12, "--out", out], "--count", timeout=30)
    if os.path.exists(out):
        raise Defect("written")
    return r


@case("task.begin_overflow")
def _(env):
    out = os.path.join(env.dir, "o.jsonl")
    return refused(env, ["task", "arithmetic", "--begin", 2 ** 63 - 2, "--count", 5, "--out", out], "--begin")


@case("task.count_zero")
def _(env):
    out = os.path.join(env.dir, "o.jsonl")
    succeeds(env, ["task", "arithmetic", "--count", 0, "--out", out])
    if open(out).read() != "":
        raise Defect("--count 0 wrote lines")
    return "an empty file"


@case("task.out")
def _(env):
    out = env.file("o.jsonl", "mine\n")
    refused(env, ["task", "arithmetic", "--count", 2, "--out", out], "--overwrite")
    if open(out).read() != "mine\n":
        raise Defect("the existing file changed without --overwrite")
    refused(env, ["task", "arithmetic", "--out", os.path.join(env.dir, "no", "such", "o.jsonl")], "no/such")
    refused(env, ["task", "arithmetic", "--out", env.dir, "--overwrite"], env.dir)
    if not os.path.isdir(env.dir):
        raise Defect("the directory was replaced")
    succeeds(env, ["task", "arithmetic", "--count", 2, "--out", out, "--overwrite"])
    if len(read_jsonl(out)) != 2 or [f for f in os.listdir(env.dir) if ".tmp" in f]:
        raise Defect(f"after --overwrite: {os.listdir(env.dir)}")
    return "refused without --overwrite, a missing folder and a directory named; replaced whole with it"


@case("task.out_twice")
def _(env):
    a, b = os.path.join(env.dir, "a.jsonl"), os.path.join(env.dir, "b.jsonl")
    rc, out = env.run(["task", "arithmetic", "--count", 2, "--out", a, "--out", b])
    clean(out)
    if rc == 0 and os.path.exists(a) == os.path.exists(b):
        raise Defect(f"--out twice: both or neither written ({os.listdir(env.dir)})")
    if rc == 0:
        raise Defect(f"--out given twice ran, writing only {os.listdir(env.dir)}: a typo silently drops a path")
    return error_line(out)


# ------------------------------------------------------------------------------------------ g4 bench

CPU_BENCH = ["bench", "train", "--device", "cpu", "--model", "tiny-moe", "--layers", 2, "--seq", 32, "--steps", 1,
             "--warmup", 0]


def bench_flag(args, flag, value):
    args = list(args)
    if flag in args:
        i = args.index(flag)
        del args[i:i + 2]
    return args + [f"{flag}={value}"]


@case("bench.train.cpu_runs")
def _(env):
    js = os.path.join(env.dir, "b.json")
    out = succeeds(env, CPU_BENCH + ["--json", js], timeout=120)
    j = json.load(open(js))
    if not math.isfinite(j["g4"]["loss_first"]) or j["g4"]["tokens_per_s"] <= 0:
        raise Defect(f"report {j['g4']}")
    return out.strip().splitlines()[-1][:120]


@case("bench.train.numeric_flags")
def _(env):
    bad = []
    for flag in ["--seq", "--steps", "--accum", "--warmup", "--layers", "--peak-tflops", "--lora", "--lora-alpha",
                 "--images", "--audio-seconds", "--image-soft-tokens", "--seed"]:
        for v in ["0", "-1", "nan", "inf", "x", "1e30", "99999999999999999999"]:
            if (flag, v) in {("--warmup", "0"), ("--lora", "0"), ("--images", "0"), ("--audio-seconds", "0"),
                             ("--peak-tflops", "0"), ("--seed", "0"), ("--image-soft-tokens", "0")}:
                continue  # the defaults' values (none, off)
            rc, out = env.run(bench_flag(CPU_BENCH, flag, v), timeout=60)
            problem = None
            if any(t in out for t in ["Segmentation", "Aborted", "terminate called", "what():", "stoll", "stod",
                                      "std::"]) or rc < 0:
                problem = "crash or library text"
            elif rc == 0:
                problem = "ran"
            elif flag not in out:
                problem = f"the error does not name the flag: {error_line(out)!r}"
            if problem:
                bad.append(f"{flag}={v}: {problem}")
    if bad:
        raise Defect("; ".join(bad))
    return "0, -1, NaN, inf, x, 1e30 and 2^66 refused naming the flag, for every numeric flag"


@case("bench.train.unknown_model")
def _(env):
    return refused(env, bench_flag(CPU_BENCH, "--model", "gemma-9"), "gemma-9", "tiny-moe", "gemma-4-e4b")


@case("bench.train.layers_past_depth")
def _(env):
    # A released shape has a depth (E4B 42); the tiny shapes take any (CI's smoke runs).
    return refused(env, bench_flag(bench_flag(CPU_BENCH, "--model", "gemma-4-e4b"), "--layers", 43), "--layers 43", "42")


@case("bench.train.ranks_lists")
def _(env):
    for v in ["1,,2", "0", "-1", "1,", "x"]:
        refused(env, bench_flag(CPU_BENCH, "--ranks", v), "--ranks")
    rc, out = env.run(bench_flag(bench_flag(CPU_BENCH, "--ranks", "1,2"), "--model", "gemma-9"))
    if rc == 0 or "gemma-9" not in out or "running:" in out:
        raise Defect(f"--ranks with a wrong --model: rc {rc}, ranks started or the model not named: {out[-300:]!r}")
    return "1,,2 / 0 / -1 / 1, / x refused naming --ranks; a wrong --model before any rank starts"


@case("bench.train.device")
def _(env):
    refused(env, bench_flag(CPU_BENCH, "--device", "tpu"), "--device", "tpu")
    return refused(env, bench_flag(CPU_BENCH, "--device", "cuda"), "GPU")


@case("bench.train.flags_before_gpu")
def _(env):
    # On a machine without a GPU, a mistake in the flags is reported as such, not hidden behind "no GPU".
    gpu = bench_flag(CPU_BENCH, "--device", "cuda")
    refused(env, gpu + ["--lora-experts"], "--lora-experts")
    refused(env, bench_flag(gpu, "--model", "gemma-9"), "gemma-9")
    refused(env, gpu + ["--json", os.path.join(env.dir, "no", "b.json")], "--json")
    no_model = gpu[:gpu.index("--model")] + gpu[gpu.index("--model") + 4:]  # without --model NAME --layers N
    return refused(env, no_model + ["--config", os.path.join(env.dir, "nope.json")], "nope.json")


@case("bench.train.json_unwritable")
def _(env):
    # A --json that cannot be written must be refused before the run, not lost silently after it.
    return refused(env, CPU_BENCH + ["--json", os.path.join(env.dir, "no", "such", "b.json")], "--json", timeout=120)


@case("bench.train.hf_without_python")
def _(env):
    empty = os.path.join(env.dir, "bin")
    os.makedirs(empty)
    rc, out = env.run(CPU_BENCH + ["--hf"], env={"PATH": empty}, timeout=120)
    clean(out)
    if rc == 0 and "python3" not in out:
        raise Defect(f"--hf without python3 ran without saying so: {out[-400:]!r}")
    if rc != 0 and "python" not in out:
        raise Defect(f"rc {rc} without naming python: {out[-400:]!r}")
    return error_line(out) or out.strip().splitlines()[-1][:200]


@case("bench.train.hf_without_torch")
def _(env):
    # python3 without torch: g4's row stands, and the Hugging Face rows say the script failed, with its exit status
    # (not the raw wait status, 256) and its own ModuleNotFoundError above.
    import shutil
    bindir = os.path.join(env.dir, "bin")
    os.makedirs(bindir)
    python = os.path.realpath(shutil.which("python3"))
    with open(os.path.join(bindir, "python3"), "w") as f:
        f.write(f'#!/bin/sh\nexec {python} -S "$@"\n')  # -S: no site-packages, so no torch
    os.chmod(os.path.join(bindir, "python3"), 0o755)
    out = succeeds(env, CPU_BENCH + ["--hf"], timeout=120, extra_env={"PATH": bindir + ":" + os.environ["PATH"]})
    for want in ["No module named", "failed (exit status 1", "g4 (f32, CPU)"]:
        if want not in out:
            raise Defect(f"no {want!r} in {out[-600:]!r}")
    return "g4's row kept; HF rows: the script's exit status 1 and its ModuleNotFoundError"


@case("bench.train.hf_script_missing")
def _(env):
    return refused(env, CPU_BENCH + ["--hf", "--hf-script", os.path.join(env.dir, "nope.py")], "nope.py", timeout=120)


GEN = ["bench", "generate", "--model", "gemma-4-e4b", "--layers", 1, "--batch", 1, "--prompt-len", 8,
       "--new-tokens", 2]


@case("bench.generate.no_gpu")
def _(env):
    return refused(env, GEN, "GPU")


@case("bench.generate.flags")
def _(env):
    for flag, vals in [("--batch", ["1,,2", "0", "-1", "1,", "x", "nan"]), ("--layers", ["0", "-1", "x", "1000"]),
                       ("--prompt-len", ["0", "-1", "nan"]), ("--new-tokens", ["0", "-1", "1e30"]),
                       ("--page-size", ["0", "-3"]), ("--denoising-steps", ["0", "-1"]),
                       ("--model", ["gemma-9"]), ("--seed", ["-1", "x", str(2 ** 64)]),
                       ("--json", [os.path.join(env.dir, "no", "g.json")]), ("--hf-script", [env.dir])]:
        for v in vals:
            refused(env, bench_flag(GEN, flag, v) + (["--hf"] if flag == "--hf-script" else []), flag)
    return "bad --batch lists, layers, lengths, page size, steps, model, seed refused naming the flag"


RL = ["bench", "rl", "--model", "gemma-4-e4b", "--layers", 1, "--prompts", 1, "--generations", 2,
      "--new-tokens", 2]


@case("bench.rl.no_gpu")
def _(env):
    return refused(env, RL, "GPU")


@case("bench.rl.flags")
def _(env):
    for flag, vals in [("--layers", ["0", "-1", "x", "1000"]), ("--prompts", ["0", "-1"]),
                       ("--generations", ["1", "0", "-1"]), ("--new-tokens", ["0", "-1"]),
                       ("--model", ["gemma-9"]), ("--tokenizer", [os.path.join(env.dir, "nope")])]:
        for v in vals:
            refused(env, bench_flag(RL, flag, v), flag if flag != "--tokenizer" else "nope")
    return "bad layers, prompts, generations, new tokens, model, tokenizer refused naming the flag"


@case("bench.no_subcommand")
def _(env):
    refused(env, ["bench"], "subcommand")
    return refused(env, ["bench", "frobnicate"], "frobnicate")


if __name__ == "__main__":
    TABLE.main(__doc__, lambda g4, work, a: Env(g4.binary, work))
