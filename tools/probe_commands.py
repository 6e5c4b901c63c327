"""What the command probes share: running the g4 binary, recording one PASS/DEFECT line per case, expecting a clear
error or a success, and checking what a run left on disk (whole checkpoints, the complete lines of metrics.jsonl)
after it was interrupted. One table of cases, Cases, runs every probe but probe_train.py: in sections of cases that
record their own findings, with interruption trials (probe_rl.py, probe_train_media.py), or as cases that each return a
note or raise Defect in a scratch folder of their own (probe_cli.py, probe_misc.py).

A case fails when g4 crashes (a signal, an abort), prints a library's exception text instead of its own error, exits
with another status than the case expects, or lacks a string the case expects in its output (an error must name the
file, key or shape at fault).
"""
import argparse, contextlib, json, os, signal, struct, subprocess, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = []  # (section, case, ok, detail)
# Text that means an exception escaped as a library's (or the runtime's) message rather than as g4's own error.
LIBRARY_TEXT = ["[json.exception", "basic_filebuf", "std::bad_alloc", "yaml-cpp", "terminate called", "what():",
                "Segmentation", "Aborted", "core dumped"]


def record(section, case, ok, detail=""):
    RESULTS.append((section, case, ok, detail))
    print(f"{'PASS  ' if ok else 'DEFECT'} [{section}] {case}" + (f": {detail}" if detail else ""), flush=True)


def summarize(work, keep_work):
    """Prints the defects; returns the exit status (1 when any case failed). The work directory goes when clean."""
    import shutil
    bad = [r for r in RESULTS if not r[2]]
    print(f"\n{len(RESULTS)} cases, {len(bad)} defects (work directory {work})")
    for sec, case, _, detail in bad:
        print(f"  [{sec}] {case}: {detail[:400]}")
    if not bad and not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if bad else 0


class G4:
    """The binary under test, run single-threaded from the repository root (relative recipe paths resolve there)."""

    def __init__(self, binary, work):
        self.binary, self.work = binary, work

    def env(self, env):
        return dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", **(env or {}))

    def run(self, args, env=None, cwd=None, timeout=600):
        p = subprocess.run([self.binary] + args, capture_output=True, text=True, env=self.env(env), cwd=cwd or ROOT,
                           timeout=timeout, errors="replace")
        return p.returncode, p.stdout + p.stderr

    def run_measured(self, args, env=None, timeout=600):
        """run() that also returns the process's peak resident memory in MiB (wait4's ru_maxrss)."""
        with tempfile.TemporaryFile() as out:
            p = subprocess.Popen([self.binary] + args, stdout=out, stderr=subprocess.STDOUT, env=self.env(env),
                                 cwd=ROOT)
            deadline = time.time() + timeout
            while True:
                pid, status, usage = os.wait4(p.pid, os.WNOHANG)
                if pid:
                    break
                if time.time() > deadline:
                    p.kill()
                    pid, status, usage = os.wait4(p.pid, 0)
                    break
                time.sleep(0.05)
            p.returncode = os.waitstatus_to_exitcode(status)
            out.seek(0)
            text = out.read().decode(errors="replace")
        return p.returncode, text, usage.ru_maxrss / 1024

    def start(self, args, env=None):
        return subprocess.Popen([self.binary] + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=self.env(env), cwd=ROOT, errors="replace")


def no_library_text(out):
    return not any(t in out for t in LIBRARY_TEXT)


def expect_error(section, case, g4, args, wants, cwd=None, env=None):
    """rc 1 (a g4::Error), every string of `wants` in the output, no library text, no crash."""
    rc, out = g4.run(args, cwd=cwd, env=env)
    lines = out.splitlines()
    first = next((i for i, l in enumerate(lines) if "error:" in l), max(0, len(lines) - 1))
    last = [" | ".join(lines[first:first + 3])] if lines else []
    missing = [w for w in wants if w not in out]
    ok = rc == 1 and not missing and no_library_text(out)
    record(section, case, ok, (last[0][:300] if last else "") if ok else
           f"rc {rc}, missing {missing}; output tail: {out[-600:]!r}")
    return out


def expect_success(section, case, g4, args, wants=(), env=None):
    rc, out = g4.run(args, env=env)
    missing = [w for w in wants if w not in out]
    ok = rc == 0 and not missing and no_library_text(out)
    record(section, case, ok, "" if ok else f"rc {rc}, missing {missing}; output tail: {out[-600:]!r}")
    return out


# ---------------------------------------------------------------------------------------------- what a run left

def safetensors_whole(path):
    """The header parses and header + the largest data offset is the file's size: nothing cut or appended."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            return False
        n = struct.unpack("<Q", raw)[0]
        if 8 + n > size:
            return False
        header = json.loads(f.read(n))
    end = max([v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"] or [0])
    return 8 + n + end == size


def complete_checkpoints(run_dir):
    d = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(d):
        return []
    return sorted(os.path.join(d, n) for n in os.listdir(d)
                  if n.startswith("step-") and os.path.exists(os.path.join(d, n, "trainer_state.json")))


def checkpoint_problems(run_dir):
    bad = []
    for c in complete_checkpoints(run_dir):
        for n in os.listdir(c):
            p = os.path.join(c, n)
            if n.endswith(".safetensors") and not safetensors_whole(p):
                bad.append(p)
            if n.endswith(".json"):
                try:
                    json.load(open(p))
                except Exception as e:  # noqa: BLE001 - the probe reports whatever is wrong
                    bad.append(f"{p} ({e})")
    return bad


def temporary_files(run_dir):
    """Files a checkpoint or log write leaves only when it is cut short (name.tmp.<pid>)."""
    return [os.path.join(dp, f) for dp, dn, fn in os.walk(run_dir) for f in fn + dn if ".tmp." in f]


def mount_tmpfs(path, opts):
    """Mounts a tmpfs with mount options `opts` (e.g. "size=1m", "ro,size=1m") at `path`; False when that cannot be
    done (it needs root). remount_tmpfs changes its options; unmount undoes either."""
    os.makedirs(path, exist_ok=True)
    return os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", path],
                                                capture_output=True).returncode == 0


def remount_tmpfs(path, opts):
    return subprocess.run(["mount", "-o", "remount," + opts, path], capture_output=True).returncode == 0


def unmount(path):
    subprocess.run(["umount", path], capture_output=True)


@contextlib.contextmanager
def tmpfs(path, opts):
    """mount_tmpfs for a `with` block: yields `path`, or None when no tmpfs could be mounted; unmounts after."""
    if not mount_tmpfs(path, opts):
        yield None
        return
    try:
        yield path
    finally:
        unmount(path)


def metric_lines(run_dir):
    """Complete JSON lines of metrics.jsonl (a line cut by a kill is not complete)."""
    p = os.path.join(run_dir, "metrics.jsonl")
    out = []
    if not os.path.exists(p):
        return out
    for line in open(p):
        if line.endswith("\n") and line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def curve(lines, keys):
    """(step, key) -> value of `keys` in the metric records (timings differ between runs, so they are left out)."""
    c = {}
    for j in lines:
        for k in keys:
            if k in j:
                c[(j["step"], k)] = j[k]
    return c


def run_to_end(g4, args, rng, max_interrupts, after_interrupt, span):
    """Runs `args`, interrupting it up to `max_interrupts` times at random (each resumed with --resume, and
    `after_interrupt()` called after each); returns the interruption log, the last output, whether it finished."""
    log = []
    for attempt in range(max_interrupts + 1):
        a = args + (["--resume"] if attempt > 0 else [])
        p = g4.start(a)
        if attempt < max_interrupts:
            delay = rng.uniform(0.05 * span, span)  # anywhere in a run: loading, steps, checkpoints
            sig = rng.choice([signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
            try:
                p.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                p.send_signal(sig)
                log.append(f"{signal.Signals(sig).name}@{delay:.2f}s")
        out, _ = p.communicate()
        if log and len(log) == attempt + 1:
            after_interrupt()
        if p.returncode == 0:
            return log, out, True
        if p.returncode > 0 and len(log) < attempt + 1:
            return log, out, False  # an error, not our signal
        if attempt == max_interrupts:
            return log, out, False
    return log, "", False


def write_safetensors(path, tensors):
    """Writes a safetensors file; tensors: {name: (dtype "I64", "I32" or "F32", shape, flat list)}. Returns path."""
    header, blobs, offset = {}, [], 0
    for name, (dtype, shape, values) in tensors.items():
        blob = struct.pack(f"<{len(values)}{ {'I64': 'q', 'F32': 'f', 'I32': 'i'}[dtype]}", *values)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    return path


def resumed_run_problems(run, got, want, problems):
    """Appends what an interrupted and resumed run in `run` left wrong: a metrics curve `got` other than the
    uninterrupted run's `want`, damaged checkpoints, temporary files."""
    if got != want:
        diff = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
        problems.append(f"metrics differ from the uninterrupted run at {diff[:6]}")
    bad = checkpoint_problems(run)
    if bad:
        problems.append(f"damaged checkpoints {bad}")
    cruft = temporary_files(run)
    if cruft:
        problems.append(f"temporary files left behind {cruft}")


def interrupted_run_problems(g4, args, env, rng, span, run, want, curve_of):
    """One interruption trial of the run `args` (writing to `run`): killed by the fault `env` names (then resumed once)
    or, without `env`, interrupted at random up to three times (run_to_end). After each interruption the complete
    checkpoints must be whole and the logged values the uninterrupted run's (`want`, a curve_of(metric lines)); at the
    end, what resumed_run_problems checks. Returns the interruption log and the problems found."""
    problems = []

    def after_interrupt():
        bad = checkpoint_problems(run)
        if bad:
            problems.append(f"damaged complete checkpoints after the kill {bad}")
        got = curve_of(metric_lines(run))
        diff = [k for k in got if got[k] != want.get(k)]
        if diff:
            problems.append(f"logged values differ from the uninterrupted run at {diff[:4]}")
    if env:
        rc, out = g4.run(args, env=env)
        if rc not in (128 + 9, -9):
            problems.append(f"the fault did not kill it (rc {rc})")
        after_interrupt()
        rc, out = g4.run(args + ["--resume"])
        log, done = [], rc == 0
    else:
        log, out, done = run_to_end(g4, args, rng, 3, after_interrupt, span)
    if not done:
        problems.append(f"did not finish after {log}: {out[-500:]!r}")
    else:
        resumed_run_problems(run, curve_of(metric_lines(run)), want, problems)
    return log, problems


def command_probe_parser(doc, kills, sections):
    """The options the command probes (probe_train.py, probe_rl.py, probe_train_media.py) share: the binary, the
    scratch directory, the seed, how many runs are interrupted at random, and which sections run."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--g4", default=os.path.join(ROOT, "build-cpu/g4"))
    ap.add_argument("--work", default=None, help="scratch directory (default: a new temporary one, removed if clean)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kills", type=int, default=kills, help="runs interrupted at random moments")
    ap.add_argument("--sections", default=sections)
    return ap


# ------------------------------------------------------------------------------------------- tables of cases

def nest(r, dotted, value):
    """Sets r[a][b][c] = value for dotted "a.b.c", making the mappings on the way."""
    *path, last = dotted.split(".")
    for k in path:
        r = r.setdefault(k, {})
    r[last] = value


class Cases:
    """A probe's cases in order, run by main(). Two ways to write a case:
    - `@cases.add(section, name)`: fn(ctx) records its own findings (record(); several per case if it likes);
    - `@cases.case(name)`: fn(env) returns a note (PASS) or raises Defect; env is a copy of the context (a CaseEnv)
      with a scratch folder of the case's own, `env.dir`, and the finding is recorded under the table's section.
    An exception a case did not mean to raise is a DEFECT too (a probe that breaks is reported, not hidden)."""

    def __init__(self, section="cases"):
        self.section = section
        self.table = []  # (section, name, fn, own_dir)

    def add(self, section, name):
        def register(fn):
            self.table.append((section, name, fn, False))
            return fn
        return register

    def case(self, name):
        def register(fn):
            self.table.append((self.section, name, fn, True))
            return fn
        return register

    def run_case(self, section, name, fn, own_dir, ctx, work):
        try:
            if not own_dir:
                fn(ctx)
                return
            env = type(ctx).__new__(type(ctx))
            env.__dict__.update(ctx.__dict__)
            env.dir = os.path.join(work, "cases", name)
            os.makedirs(env.dir, exist_ok=True)
            try:
                record(section, name, True, fn(env) or "")
            except Defect as e:
                record(section, name, False, str(e))
        except Exception as e:  # noqa: BLE001 - a probe that breaks is a finding too
            record(section, name, False, f"the probe itself failed: {type(e).__name__}: {e}")

    def main(self, doc, make_ctx, kills=None, sections=None):
        """Parses the options (--g4, --work, --seed, --only, --list; a command probe's --kills and --sections when
        `kills` is given), builds the context with make_ctx(G4, work, args) (args.rng: a Random of the seed), runs the
        selected cases and exits with summarize's status."""
        import random, sys
        if kills is not None:
            ap = command_probe_parser(doc, kills, sections)
        else:
            ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
            ap.add_argument("--g4", default=os.path.join(ROOT, "build-cpu/g4"))
            ap.add_argument("--work", default=None, help="scratch directory (default: a new temporary one, "
                                                         "removed if clean)")
            ap.add_argument("--seed", type=int, default=0)
        ap.add_argument("--only", default="", help="comma-separated parts of case names: run the cases named so")
        ap.add_argument("--list", action="store_true", help="list the cases")
        a = ap.parse_args()
        if a.list:
            for sec, name, _, _ in self.table:
                print(f"[{sec}] {name}")
            return
        script = os.path.splitext(os.path.basename(sys.argv[0]))[0]  # probe_rl -> /tmp/probe_rl_XXXX
        work = os.path.abspath(a.work or tempfile.mkdtemp(prefix=script + "_"))
        os.makedirs(work, exist_ok=True)
        a.rng = random.Random(a.seed)
        ctx = make_ctx(G4(os.path.abspath(a.g4), work), work, a)
        chosen = a.sections.split(",") if kills is not None else None
        only = [o for o in a.only.split(",") if o]
        t0 = time.time()
        for sec, name, fn, own_dir in self.table:
            if (chosen is None or sec in chosen) and (not only or any(o in name for o in only)):
                self.run_case(sec, name, fn, own_dir, ctx, work)
        print(f"({time.time() - t0:.0f} s)")
        sys.exit(summarize(work, a.work))


# ---------------------------------------------------------------- the helpers of cases that raise Defect (Cases.case)

class Defect(Exception):
    pass


# What the case probes also count as a library's text: a C++ conversion that threw past g4's own checks.
CASE_LIBRARY_TEXT = LIBRARY_TEXT + ["stoll", "stoi", "std::invalid_argument", "std::out_of_range"]


class CaseEnv:
    """The binary and a scratch folder per case (`dir`); a probe's subclass adds its fixtures."""

    def __init__(self, g4, scratch):
        self.g4, self.scratch, self.dir = g4, scratch, scratch

    def run(self, args, timeout=60, env=None):
        e = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
        try:
            p = subprocess.run([self.g4] + [str(a) for a in args], capture_output=True, text=True, env=e,
                               timeout=timeout, errors="replace")
        except subprocess.TimeoutExpired:
            raise Defect(f"hung (> {timeout} s): g4 {' '.join(map(str, args))}")
        return p.returncode, p.stdout + p.stderr

    def file(self, name, content):
        path = os.path.join(self.dir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(content.encode() if isinstance(content, str) else content)
        return path


def clean(out):
    bad = [t for t in CASE_LIBRARY_TEXT if t in out]
    if bad:
        raise Defect(f"library text {bad} in the output: {out[-400:]!r}")


def error_line(out):
    lines = [l for l in out.splitlines() if "rror" in l]
    return (lines[0] if lines else out.strip().splitlines()[-1] if out.strip() else "")[:220]


def refused(env, args, *wants, timeout=60):
    """rc 1 (a g4 error) or CLI11's usage codes (100-127), every `wants` string in the output, no library text."""
    rc, out = env.run(args, timeout)
    if rc != 1 and not 100 <= rc < 128:
        raise Defect(f"rc {rc} (expected a refusal naming {list(wants)}); output: {out[-500:]!r}")
    missing = [w for w in wants if w not in out]
    if missing:
        raise Defect(f"the error does not name {missing}: {error_line(out)!r}")
    clean(out)
    return error_line(out)


def succeeds(env, args, timeout=60, extra_env=None):
    rc, out = env.run(args, timeout, env=extra_env)
    if rc != 0:
        raise Defect(f"rc {rc}: {out[-500:]!r}")
    clean(out)
    return out
