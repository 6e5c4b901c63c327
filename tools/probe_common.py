"""What the differential probes (probe_vs_transformers.py, probe_diffusion_vs_transformers.py) share: running g4,
the error yardstick against transformers in f64, and the trial loop that keeps failing trials.

Every value is checked against transformers in f64; the bound is the larger of a fixed f32 tolerance and NOISE times
transformers' own f32 error (a deep random model amplifies rounding, and two f32 implementations round differently).
Where one rounding dominates (an ill-conditioned tower whose whole effect on the logits is one direction), that one
f32 error can be small by chance; a probe then checks again against the largest of transformers' f32 errors over
a few copies of the model with each weight moved by at most one ulp (`ulp_jittered`): rounding-sized changes.
"""
import argparse, json, os, shutil, subprocess, tempfile, traceback

RATIOS = []  # g4's error / transformers' f32 error, per checked value (printed as a distribution)
# Two f32 implementations round differently; against f64, g4's error over transformers' f32 error had a
# median of 1.1-1.9 and a 99th percentile of 2.8-3.5 over 2,300 values (seeds 2 and 3, 150 trials each),
# with single values up to 8 where rounding meets an ill-conditioned gradient. A defect is orders of
# magnitude above that (a 0.1% change of one norm weight shows as 1e-3 against 1e-6).
NOISE = 10


def trial_parser(doc, keep):
    """The options every probe takes (each adds its own): how many trials, the seed, one trial alone, the g4
    binary, and where failing trials are kept."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only-trial", type=int, default=None, help="run only this trial of the seed (to reproduce one)")
    ap.add_argument("--g4", default="build/g4")
    ap.add_argument("--keep", default=keep, help="where failing trials are kept")
    return ap


def run_g4(g4, args, cwd=None):
    p = subprocess.run([g4] + args, capture_output=True, text=True, cwd=cwd)
    if p.returncode:
        raise RuntimeError(f"g4 {' '.join(args)} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    return p.stdout


def error(got, want):
    return (got.double() - want.double()).abs().max().item()


def as_list(hf32):
    """transformers' f32 value(s) of a check: one, or several (the ulp-jittered copies' too)."""
    return hf32 if isinstance(hf32, list) else [hf32]


ENVELOPE_COPIES = 4


def ulp_jittered(model, seed):
    """A copy of the f32 `model` whose every weight element is moved by -1, 0 or +1 unit in the last place (drawn
    with `seed`): transformers with a rounding-sized change, whose outputs move by what rounding alone moves them."""
    import copy, torch
    m = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            if not p.is_floating_point():
                continue
            step = torch.randint(-1, 2, p.shape, generator=g)
            up = torch.nextafter(p, torch.full_like(p, float("inf")))
            down = torch.nextafter(p, torch.full_like(p, float("-inf")))
            p.copy_(torch.where(step > 0, up, torch.where(step < 0, down, p)))
    return m


def within_rounding(problems_against, model, batch, hf_outputs, hf32):
    """problems_against([hf32]) (a probe's checks, given transformers' f32 outputs), and where that finds problems,
    problems_against with the outputs of ENVELOPE_COPIES ulp-jittered copies of `model` too
    (hf_outputs(model, batch) gives them): transformers' f32 error is then the largest over all of them."""
    mark = len(RATIOS)
    problems = problems_against([hf32])
    if problems:
        del RATIOS[mark:]  # the ratios of this trial are then the ones against the envelope
        copies = [hf_outputs(ulp_jittered(model, seed), batch) for seed in range(ENVELOPE_COPIES)]
        problems = problems_against([hf32] + copies)
    return problems


def check_outputs_within_rounding(ours, model, batch, hf_outputs, hf32, hf64, mask):
    """check_outputs, within_rounding."""
    return within_rounding(lambda hf32s: check_outputs(ours, hf32s, hf64, mask), model, batch, hf_outputs, hf32)


def check_values(problems, checks):
    """checks: (name, g4's value, transformers f32 (or a list: the largest error counts), transformers f64, fixed
    floor) each; max-abs errors."""
    for name, got, hf_f32, want, floor in checks:
        e_g4, e_hf = error(got, want), max(error(h, want) for h in as_list(hf_f32))
        if e_hf > 0.01 * floor:
            RATIOS.append(e_g4 / e_hf)
        if e_g4 > max(floor, NOISE * e_hf):
            problems.append(f"{name}: g4 error {e_g4:.3e} against transformers f64 "
                            f"(transformers f32: {e_hf:.3e}, bound {max(floor, NOISE * e_hf):.3e})")


def check_grads(problems, ours, hf32, hf64, names):
    """Every gradient `names` (keys 'grad.<HF name>' of hf32 (a dict, or a list of them: the largest error counts) and
    hf64) against g4's, in absolute L2 terms: a gradient
    that is nearly zero by cancellation (a query that sees one or two keys, a top-1 router whose weight
    renormalises to exactly 1) carries f32 noise of the size of the whole gradient's rounding, so each may also be
    off by 1e-6 of the norm of all gradients together. A nonzero gradient g4 does not give is a failure."""
    for k in sorted(set(names) - set(ours)):
        if hf64[k].abs().max().item() > 0:
            problems.append(f"{k}: no gradient from g4")
    total = sum(hf64[k].double().norm().item() ** 2 for k in names) ** 0.5
    for k in sorted(set(names) & set(ours)):
        got, want = ours[k].reshape(hf64[k].shape).double(), hf64[k].double()
        e_hf = max((h[k].double() - want).norm().item() for h in as_list(hf32))
        e_g4, norm = (got - want).norm().item(), want.norm().item()
        if e_hf > 1e-6 * total:  # ratios of pure noise floors say nothing
            RATIOS.append(e_g4 / e_hf)
        bound = max(1e-4 * norm, NOISE * e_hf, 1e-6 * total)
        if e_g4 > bound:
            problems.append(f"{k}: g4 error {e_g4:.3e} against transformers f64 (||hf64|| {norm:.3e}, "
                            f"transformers f32: {e_hf:.3e}, bound {bound:.3e})")


def check_outputs(ours, hf32, hf64, mask):
    """The problems of g4's logits, loss and gradients (`ours`, as `g4 forward --grads` writes them) against
    transformers (`hf32` (or a list of such outputs: the largest f32 error counts), `hf64`: logits, loss and
    grad.<name>), logits at the positions `mask` keeps."""
    problems = []
    scale = max(1.0, hf64["logits"][mask].abs().max().item())
    check_values(problems, [("logits", ours["logits"].reshape(hf64["logits"].shape)[mask],
                             [h["logits"][mask] for h in as_list(hf32)], hf64["logits"][mask], 1e-5 * scale),
                            ("loss", ours["loss"], [h["loss"] for h in as_list(hf32)], hf64["loss"],
                             1e-6 * max(1.0, abs(hf64["loss"].item())))])
    check_grads(problems, ours, hf32, hf64, [k for k in hf64 if k.startswith("grad.")])
    return problems


def run_trials(trials, seed, keep, trial, only_trial=None):
    """Runs trial(t, dir, info) -> problems for t < trials, each in a fresh directory; the trial puts its config in
    info["spec"] and a one-line description in info["summary"] first, so that a crash on either side (a finding
    too) still names them. Failing trials keep their directory (and spec.json) under `keep`. Returns the number
    of failures, after printing the error-ratio distribution. only_trial: run that one alone (to reproduce it)."""
    failures = 0
    for t in range(trials) if only_trial is None else [only_trial]:
        d = tempfile.mkdtemp(prefix="g4_probe_")
        info = {"summary": "?", "spec": {}}
        try:
            problems = trial(t, d, info)
        except Exception as e:
            where = traceback.extract_tb(e.__traceback__)[-1]
            problems = [f"{type(e).__name__}: {e} (at {where.filename}:{where.lineno})"]
        summary, spec = info["summary"], info["spec"]
        if problems:
            failures += 1
            kept = os.path.join(keep, f"seed{seed}-trial{t}")
            shutil.rmtree(kept, ignore_errors=True)
            os.makedirs(os.path.dirname(kept), exist_ok=True)
            shutil.move(d, kept)
            json.dump(spec, open(os.path.join(kept, "spec.json"), "w"), indent=1)
            print(f"trial {t}: FAIL {summary} (kept in {kept})")
            for p in problems[:8]:
                print("    " + p)
        else:
            shutil.rmtree(d)
            print(f"trial {t}: ok   {summary}", flush=True)
    if RATIOS:
        q = sorted(RATIOS)
        pick = lambda f: q[min(len(q) - 1, int(f * len(q)))]
        print(f"g4 error / transformers' f32 error (both against transformers f64), over {len(q)} values: "
              f"median {pick(0.5):.2f}, 90% {pick(0.9):.2f}, 99% {pick(0.99):.2f}, max {q[-1]:.2f}")
    ran = trials if only_trial is None else 1
    print(f"{ran - failures}/{ran} trials agree")
    return failures
