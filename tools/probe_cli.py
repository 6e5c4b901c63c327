#!/usr/bin/env python3
"""Attacks `g4 generate`, `g4 forward`, `g4 inspect` and `g4 convert` on the CPU with bad input and interruptions.

Usage: python3 tools/probe_cli.py [--g4 build-cpu/g4] [--only NAME[,NAME...]] [--work DIR] [--list]

Every case runs the real binary on the tiny test fixtures (tiny-dense-ple with the serve test's 256-token tokenizer,
the same without a tokenizer, tiny-mm-e with its media tokens, tiny-dg-a for diffusion) and states what it expects:
exit status 1 with an error naming the file, key, flag or shape; or a success whose output is checked. A case that
crashes (a signal, an abort), hangs (60 s), prints a library's exception text instead of g4's, succeeds where it
must refuse, or loses a file the user wrote is a DEFECT. One line per case; the exit status is 1 when any case is a
DEFECT. `--only` takes parts of case names (`--only gen.prompts` runs that group). No torch needed; not part of CI
(each defect found here has a unit test in tests/cli/cli_test.cpp or tests/serve/request_test.cpp).
"""
import json, os, shutil, signal, struct, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "serve"))
import openai_client_test as fixture  # noqa: E402  (the serve test's model directories)
from probe_commands import (CaseEnv, Cases, Defect, clean, error_line, refused, succeeds, tmpfs,  # noqa: E402
                            write_safetensors)

DATA = os.path.join(ROOT, "tests", "data")
PROC = os.path.join(DATA, "hf-gemma4-mm", "processor")
TABLE = Cases("cli")
case = TABLE.case


class Env(CaseEnv):
    """The model directories on top of the binary and the scratch folder."""

    def __init__(self, g4, scratch):
        super().__init__(g4, scratch)
        self.tiny = os.path.join(scratch, "models", "tiny")  # tokenizer, vocab 256, context 4096
        fixture.make_model_dir(DATA, self.tiny)
        self.notok = os.path.join(DATA, "hf-gemma4", "tiny-dense-ple")  # no tokenizer
        self.mm = os.path.join(scratch, "models", "mm")  # image/audio/video tokens
        fixture.make_mm_model_dir(DATA, self.mm)
        self.dg = os.path.join(DATA, "hf-diffusion-gemma", "tiny-dg-a")  # diffusion, canvas 8, vocab 256
        self.moe = os.path.join(DATA, "hf-gemma4", "tiny-moe")


def jsonl(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


# ------------------------------------------------------------------------------------------ generate --prompts

def gen_file(env, lines, *extra, chat=False, out=None, raw=None):
    src = env.file("in.jsonl", raw if raw is not None else "".join(json.dumps(l) + "\n" for l in lines))
    out = out or os.path.join(env.dir, "out.jsonl")
    args = ["generate", env.tiny, "--prompts", src, "--out", out, "--max-new-tokens", 3]
    return args + (["--chat"] if chat else []) + list(extra), src, out


def refused_line(env, line, *wants, chat=False, extra=()):
    args, src, out = gen_file(env, [line], *extra, chat=chat)
    r = refused(env, args, f"{src}:1", *wants)
    if os.path.exists(out):
        raise Defect(f"{out} written despite the error")
    return r


BAD_LINES = {
    "string_max_tokens": ({"prompt": "a", "max_tokens": "5"}, "max_tokens"),
    "negative_n": ({"prompt": "a", "n": -1}, "n"),
    "zero_n": ({"prompt": "a", "n": 0}, "n"),
    "temperature_-1": ({"prompt": "a", "temperature": -1}, "temperature"),
    "top_p_0": ({"prompt": "a", "top_p": 0}, "top_p"),
    "top_p_1.5": ({"prompt": "a", "top_p": 1.5}, "top_p"),
    "top_k_negative": ({"prompt": "a", "top_k": -5}, "top_k"),
    "huge_max_tokens": ({"prompt": "a", "max_tokens": 10 ** 9}, "4096"),
    "stop_number": ({"prompt": "a", "stop": 5}, "stop"),
    "logprobs_21": ({"prompt": "a", "logprobs": 21}, "logprobs"),
    "logprobs_-2": ({"prompt": "a", "logprobs": -2}, "logprobs"),
    "seed_2^64": ({"prompt": "a", "seed": 2 ** 64}, "seed"),
    "unknown_key": ({"prompt": "a", "max_new_tokens": 3}, "max_new_tokens"),
    "prompt_and_prompt_ids": ({"prompt": "a", "prompt_ids": [5]}, "prompt"),
    "prompt_ids_out_of_vocab": ({"prompt_ids": [5, 256]}, "256"),
    "prompt_ids_negative": ({"prompt_ids": [-1]}, "-1"),
    "prompt_ids_empty": ({"prompt_ids": []}, "prompt"),
    "prompt_ids_float": ({"prompt_ids": [5.5]}, "prompt"),
    "prompt_ids_not_list": ({"prompt_ids": "5,6"}, "prompt"),
    "prompt_not_string": ({"prompt": 5}, "prompt"),
    "no_prompt": ({"max_tokens": 2}, "prompt"),
    "messages_without_chat": ({"messages": [{"role": "user", "content": "hi"}]}, "--chat"),
}
for _name, (_line, _want) in BAD_LINES.items():
    case(f"gen.prompts.{_name}")(lambda env, l=_line, w=_want: refused_line(env, l, w))

BAD_CHAT = {
    "missing_role": ([{"content": "hi"}], "role"),
    "unknown_role": ([{"role": "wizard", "content": "hi"}], "wizard"),
    "content_number": ([{"role": "user", "content": 5}], "content"),
    "messages_not_list": ({"role": "user", "content": "hi"}, "messages"),
    "messages_empty": ([], "messages"),
}
for _name, (_msgs, _want) in BAD_CHAT.items():
    case(f"gen.chat.{_name}")(lambda env, m=_msgs, w=_want: refused_line(env, {"messages": m}, w, chat=True))


@case("gen.chat.prompt_with_chat")
def _(env):
    return refused_line(env, {"prompt": "hi"}, "messages", chat=True)


@case("gen.prompts.seed_negative")
def _(env):
    # vLLM takes any 64-bit seed; a negative one must still be a fixed seed (the same sample twice).
    args, src, out = gen_file(env, [{"prompt_ids": [5], "seed": -1, "temperature": 1.0, "max_tokens": 8}] * 2)
    succeeds(env, args)
    a, b = [g["token_ids"] for g in jsonl(out)]
    if a != b:
        raise Defect(f"seed -1 gave two samples: {a} and {b}")
    return "accepted as vLLM does, and the same sample twice"


@case("gen.chat.missing_content")
def _(env):
    # The API reads a message without content as an empty turn, as vLLM does; a prompts file is g4's own format,
    # read as strictly as g4 train's chat data.
    return refused_line(env, {"messages": [{"role": "user"}]}, "messages[0]", "content", chat=True)


@case("gen.chat.misspelt_key")
def _(env):
    return refused_line(env, {"messages": [{"role": "user", "contents": "hi"}]}, "contents", chat=True)


@case("gen.prompts.temperature_nan_inf")
def _(env):
    for t in ["NaN", "Infinity", "-Infinity"]:  # JSON has no NaN; a line that says it is not JSON
        args, src, out = gen_file(env, None, raw='{"prompt": "a", "temperature": %s}\n' % t)
        refused(env, args, f"{src}:1")
    return "NaN / Infinity refused as not JSON, naming the line"


@case("gen.prompts.missing_before_load")
def _(env):
    # A model whose weights cannot load: the missing prompts file must be the error (it is checked first).
    broken = os.path.join(env.dir, "broken")
    os.makedirs(broken)
    shutil.copy(os.path.join(env.notok, "config.json"), broken)
    env.file("broken/model.safetensors", b"")
    missing = os.path.join(env.dir, "missing.jsonl")
    r = refused(env, ["generate", broken, "--prompts", missing, "--out", os.path.join(env.dir, "o.jsonl")], missing)
    if "model.safetensors" in r:
        raise Defect("the model was loaded before the prompts file was looked at")
    return r


@case("gen.prompts.empty_file")
def _(env):
    args, src, out = gen_file(env, None, raw="")
    return refused(env, args, src, "no request")


@case("gen.prompts.blank_lines_only")
def _(env):
    args, src, out = gen_file(env, None, raw="\n  \n\t\r\n")
    return refused(env, args, src, "no request")


@case("gen.prompts.not_an_object")
def _(env):
    for bad in ['[1, 2]', '"text"', '5', 'null', '{"prompt": "a"', '{"prompt": "a"} {"prompt": "b"}']:
        args, src, out = gen_file(env, None, raw='{"prompt": "x"}\n' + bad + "\n")
        refused(env, args, f"{src}:2")
    return "arrays, strings, numbers, null, cut and doubled objects refused naming line 2"


@case("gen.prompts.bom")
def _(env):
    # A UTF-8 BOM (Windows editors write one) before the first object.
    args, src, out = gen_file(env, None, raw='\ufeff{"prompt_ids": [5, 6]}\n{"prompt_ids": [7]}\n')
    rc, o = env.run(args)
    clean(o)
    if rc == 0:
        if len(jsonl(out)) != 2:
            raise Defect(f"BOM file: {len(jsonl(out))} output lines for 2 requests")
        return "accepted (BOM skipped)"
    if f"{src}:1" not in o:
        raise Defect(f"BOM refused without naming {src}:1: {error_line(o)!r}")
    return "refused naming line 1: " + error_line(o)


@case("gen.prompts.invalid_utf8")
def _(env):
    args, src, out = gen_file(env, None, raw=b'{"prompt_ids": [5]}\n{"prompt": "caf\xe9"}\n')
    return refused(env, args, f"{src}:2")


@case("gen.prompts.crlf_and_blank_lines_order")
def _(env):
    # Blank lines and CRLF endings: one output line per request, in input order, index counting requests.
    rows = [{"prompt_ids": [5 + i], "max_tokens": 1 + i % 3} for i in range(6)]
    raw = "\r\n\r\n".join(json.dumps(r) for r in rows) + "\r\n\n"
    args, src, out = gen_file(env, None, raw=raw)
    succeeds(env, args)
    got = jsonl(out)
    if [g["index"] for g in got] != list(range(6)):
        raise Defect(f"indices {[g['index'] for g in got]}")
    if [len(g["token_ids"]) for g in got] != [r["max_tokens"] for r in rows]:
        raise Defect("per-line max_tokens not honoured in order")
    return "6 requests, 6 lines in order"


@case("gen.prompts.n_samples_order")
def _(env):
    args, src, out = gen_file(env, [{"prompt_ids": [5], "n": 3, "temperature": 1, "seed": 1}, {"prompt_ids": [6]}])
    succeeds(env, args)
    got = [(g["index"], g.get("sample")) for g in jsonl(out)]
    if got != [(0, 0), (0, 1), (0, 2), (1, None)]:
        raise Defect(f"(index, sample) {got}")
    return "n = 3 then n = 1: 4 lines in order"


@case("gen.prompts.out_exists")
def _(env):
    args, src, out = gen_file(env, [{"prompt_ids": [5]}])
    env.file("out.jsonl", "precious\n")
    refused(env, args, out, "--overwrite")
    if open(out).read() != "precious\n":
        raise Defect("the existing --out changed without --overwrite")
    succeeds(env, args + ["--overwrite"])
    return "refused without --overwrite, replaced with it"


def unwritable_out(env, model, out, *extra):
    """An --out that cannot be written must be refused before the model loads and the prompts run (a large batch
    runs for hours), naming the path the user gave, and leave no .tmp file behind."""
    src = env.file("in.jsonl", '{"prompt_ids": [5, 6]}\n')
    r = refused(env, ["generate", model, "--prompts", src, "--out", out, "--max-new-tokens", 8] + list(extra), out)
    if ".tmp" in r:
        raise Defect(f"the error names a temporary file, so came after the run: {r!r}")
    left = [n for n in os.listdir(os.path.dirname(out)) if ".tmp" in n] if os.path.isdir(os.path.dirname(out)) else []
    if left:
        raise Defect(f"left behind: {left}")
    return r


def unwritable_out_cases(kind, model_of):
    """An --out in a missing folder, and an --out that is a directory, for one kind of model."""
    @case(f"gen.{kind}.out_missing_dir")
    def _(env):
        return unwritable_out(env, model_of(env), os.path.join(env.dir, "no", "such", "out.jsonl"))

    @case(f"gen.{kind}.out_is_a_directory")
    def _(env):
        d = os.path.join(env.dir, "adir")
        os.makedirs(d)
        r = unwritable_out(env, model_of(env), d, "--overwrite")
        if not os.path.isdir(d):
            raise Defect(f"the directory {d} was replaced")
        return r


unwritable_out_cases("prompts", lambda env: env.tiny)
unwritable_out_cases("diffusion", lambda env: env.dg)


@case("gen.prompts.out_on_a_full_disk")
def _(env):
    """The batch has run when --out is written: a full disk must name the file and the reason, keep the earlier
    --out, and leave no partial temporary file filling the disk (root only: a 8 KiB tmpfs)."""
    with tmpfs(os.path.join(env.dir, "mnt"), "size=8k") as mnt:
        if mnt is None:
            return "skipped: no tmpfs could be mounted (needs root)"
        out = os.path.join(mnt, "out.jsonl")
        with open(out, "w") as f:
            f.write("earlier\n")
        src = env.file("in.jsonl", "".join(json.dumps({"prompt_ids": [5, 6 + i]}) + "\n" for i in range(40)))
        r = refused(env, ["generate", env.tiny, "--prompts", src, "--out", out, "--overwrite", "--max-new-tokens", 16],
                    "--out", out, "No space left on device")
        left = [n for n in os.listdir(mnt) if n != "out.jsonl"]
        if left or open(out).read() != "earlier\n":
            raise Defect(f"left behind {left}; the earlier --out holds {open(out).read()[:40]!r}")
        return r


@case("gen.prompts.out_is_prompts")
def _(env):
    src = env.file("in.jsonl", '{"prompt_ids": [5]}\n')
    for extra in [[], ["--overwrite"]]:
        args = ["generate", env.tiny, "--prompts", src, "--out", src, "--max-new-tokens", 2] + extra
        refused(env, args, src)
        if open(src).read() != '{"prompt_ids": [5]}\n':
            raise Defect(f"--out == --prompts {extra}: the prompts file was replaced")
    # The same file by another name.
    alias = os.path.join(env.dir, "sub", "..", "in.jsonl")
    os.makedirs(os.path.join(env.dir, "sub"), exist_ok=True)
    refused(env, ["generate", env.tiny, "--prompts", src, "--out", alias, "--overwrite", "--max-new-tokens", 2], src)
    link = os.path.join(env.dir, "link.jsonl")
    os.symlink(src, link)
    refused(env, ["generate", env.tiny, "--prompts", link, "--out", src, "--overwrite", "--max-new-tokens", 2], "")
    if open(src).read() != '{"prompt_ids": [5]}\n':
        raise Defect("the prompts file was replaced through another name")
    return "refused, with and without --overwrite, also through ../ and a symlink"


@case("gen.prompts.out_is_prompts_diffusion")
def _(env):
    src = env.file("in.jsonl", '{"prompt_ids": [5, 6]}\n')
    refused(env, ["generate", env.dg, "--prompts", src, "--out", src, "--overwrite", "--max-new-tokens", 8], src)
    if open(src).read() != '{"prompt_ids": [5, 6]}\n':
        raise Defect("diffusion --out == --prompts: the prompts file was replaced")
    return "refused"


@case("gen.prompts.out_in_model_dir")
def _(env):
    args, src, out = gen_file(env, [{"prompt_ids": [5]}], "--overwrite", out=os.path.join(env.tiny, "config.json"))
    return refused(env, args, "config.json")


def interrupted(env, sig, existing=False):
    """Stops a long batch with `sig`: no OUT may appear (it is written whole at the end), and an OUT replaced with
    --overwrite must still hold what it held."""
    # Long enough never to finish before the signal (about 1,000,000 tokens on the tiny model).
    rows = [{"prompt_ids": [5 + i % 200], "max_tokens": 4000} for i in range(256)]
    args, src, out = gen_file(env, rows, "--max-running", 2, *(["--overwrite"] if existing else []))
    if existing:
        env.file("out.jsonl", "precious\n")
    p = subprocess.Popen([env.g4] + [str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    time.sleep(1.5)
    if p.poll() is not None:
        raise Defect(f"the run ended before the signal (rc {p.returncode}): make it longer")
    p.send_signal(sig)
    try:
        p.wait(20)
    except subprocess.TimeoutExpired:
        p.kill()
        raise Defect(f"{signal.Signals(sig).name}: still running 20 s after the signal")
    if existing:
        if open(out).read() != "precious\n":
            raise Defect(f"{signal.Signals(sig).name}: the existing {out} changed")
    elif os.path.exists(out):
        n = open(out).read().count("\n")
        raise Defect(f"{signal.Signals(sig).name}: {out} exists after an interrupted run ({n} lines)")
    left = [n for n in os.listdir(env.dir) if n.startswith("out.jsonl")]
    return f"rc {p.returncode}, " + ("the old OUT intact" if existing else "no OUT") + f" (left: {left})"


@case("gen.prompts.sigint")
def _(env):
    return interrupted(env, signal.SIGINT)


@case("gen.prompts.sigterm")
def _(env):
    return interrupted(env, signal.SIGTERM)


@case("gen.prompts.sigterm_over_existing")
def _(env):
    return interrupted(env, signal.SIGTERM, existing=True)


# ------------------------------------------------------------------------------------------ generate, one prompt

def gen(env, *extra, model=None):
    return ["generate", model or env.tiny] + list(extra)


@case("gen.one.max_new_tokens_negative")
def _(env):
    return refused(env, gen(env, "--prompt-ids", "5,6", "--max-new-tokens=-3"), "max-new-tokens")


@case("gen.one.past_context")
def _(env):
    return refused(env, gen(env, "--prompt-ids", "5,6", "--max-new-tokens", 5000), "4096")


@case("gen.one.prompt_ids_garbage")
def _(env):
    for bad in ["5,,7", "a", "5,", ",5", "5;6", "5 6", "99999999999999999999", "0x10"]:
        refused(env, gen(env, "--prompt-ids", bad, "--max-new-tokens", 1), "--prompt-ids")
        refused(env, dgen(env, "--prompt-ids", bad), "--prompt-ids")
    refused(env, gen(env, "--prompt-ids", "", "--max-new-tokens", 1), "--prompt-ids")
    a = succeeds(env, gen(env, "--prompt-ids", "5, 6", "--max-new-tokens", 2))
    if a != succeeds(env, gen(env, "--prompt-ids", "5,6", "--max-new-tokens", 2)):
        raise Defect("'5, 6' is not read as 5,6")
    return "'5,,7', 'a', '5,', ',5', '5;6', '5 6', 2^66, '0x10', '' refused naming --prompt-ids (AR and diffusion)"


@case("gen.one.max_new_tokens_0_is_empty")
def _(env):
    # >= 0 is the documented range of the one-prompt form: 0 prints an empty completion.
    out = succeeds(env, gen(env, "--prompt-ids", "5,6", "--max-new-tokens", 0))
    if out.strip():
        raise Defect(f"--max-new-tokens 0 printed {out!r}")
    return "empty completion"


@case("gen.one.prompt_ids_out_of_vocab")
def _(env):
    return refused(env, gen(env, "--prompt-ids", "5,256", "--max-new-tokens", 1), "256")


@case("gen.one.greedy_and_temperature")
def _(env):
    return refused(env, gen(env, "--prompt-ids", "5", "--max-new-tokens", 1, "--greedy", "--temperature", 0.5),
                   "--greedy")


@case("gen.one.sampling_out_of_range")
def _(env):
    for flag, v in [("--temperature", "-1"), ("--temperature", "nan"), ("--temperature", "inf"), ("--top-p", "0"),
                    ("--top-p", "1.5"), ("--top-k", "-1"), ("--min-p", "2")]:
        refused(env, gen(env, "--prompt-ids", "5", "--max-new-tokens", 1, f"{flag}={v}"), flag)
    return "temperature -1/nan/inf, top-p 0/1.5, top-k -1, min-p 2 refused naming the flag"


@case("gen.one.stop_ids_garbage")
def _(env):
    return refused(env, gen(env, "--prompt-ids", "5", "--max-new-tokens", 1, "--stop-ids", "1,x"), "--stop-ids")


@case("gen.one.device_cuda_no_gpu")
def _(env):
    rc, out = env.run(gen(env, "--prompt-ids", "5", "--max-new-tokens", 1, "--device", "cuda"))
    clean(out)
    if rc == 0:
        return "ran (a GPU is here)"
    if rc not in (1, 2) or not any(w in out for w in ["CUDA", "cuda", "GPU"]):
        raise Defect(f"rc {rc}: {out[-300:]!r}")
    return error_line(out)


@case("gen.one.prompt_without_tokenizer")
def _(env):
    return refused(env, gen(env, "--prompt", "hello", "--max-new-tokens", 1, model=env.notok), "tokenizer")


@case("gen.one.chat_without_prompt")
def _(env):
    return refused(env, gen(env, "--prompt-ids", "5", "--chat", "--max-new-tokens", 1), "--chat")


def small_tokenizer(env, n=100):
    """plain.json cut to its first n ids: a tokenizer smaller than the models' 256-id vocabulary."""
    t = json.load(open(os.path.join(DATA, "tokenizers", "plain.json")))
    m = t["model"]
    m["vocab"] = {k: v for k, v in m["vocab"].items() if v < n}
    m["merges"] = [x for x in m["merges"] if x[0] in m["vocab"] and x[1] in m["vocab"] and x[0] + x[1] in m["vocab"]]
    t["added_tokens"] = [a for a in t["added_tokens"] if a["id"] < n]
    return env.file("small/tokenizer.json", json.dumps(t))


@case("gen.small_tokenizer")
def _(env):
    # Generated ids past the tokenizer have no text (both kinds of model, one prompt and a prompts file).
    tok = small_tokenizer(env)
    src = env.file("d.jsonl", '{"prompt_ids": [5, 6]}\n')
    for model in [env.notok, env.dg]:
        succeeds(env, ["generate", model, "--prompt-ids", "5,6", "--max-new-tokens", 8, "--tokenizer", tok])
        out = os.path.join(env.dir, "o.jsonl")
        if os.path.exists(out):
            os.remove(out)
        succeeds(env, ["generate", model, "--prompts", src, "--out", out, "--max-new-tokens", 8, "--tokenizer", tok])
    return "ids past a 100-id tokenizer left out of the text"


@case("gen.one.tokenizer_larger_than_model")
def _(env):
    return refused(env, gen(env, "--prompt", "your God have", "--max-new-tokens", 1, "--tokenizer",
                            os.path.join(DATA, "tokenizers", "plain.json"), model=env.notok), "--prompt", "tokenizer")


@case("gen.one.tokenizer_missing")
def _(env):
    missing = os.path.join(env.dir, "nope.json")
    return refused(env, gen(env, "--prompt", "hi", "--max-new-tokens", 1, "--tokenizer", missing), missing)


@case("gen.one.image_missing")
def _(env):
    missing = os.path.join(env.dir, "nope.png")
    return refused(env, gen(env, "--prompt", "<|image|> hi", "--image", missing, "--max-new-tokens", 1, model=env.mm),
                   missing)


@case("gen.one.image_corrupt")
def _(env):
    bad = env.file("bad.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    return refused(env, gen(env, "--prompt", "<|image|> hi", "--image", bad, "--max-new-tokens", 1, model=env.mm), bad)


@case("gen.one.image_not_an_image")
def _(env):
    bad = env.file("text.jpg", "hello, not a picture\n")
    return refused(env, gen(env, "--prompt", "<|image|> hi", "--image", bad, "--max-new-tokens", 1, model=env.mm), bad)


@case("gen.one.image_count_mismatch")
def _(env):
    img = os.path.join(PROC, "rgba_97x150.png")
    refused(env, gen(env, "--prompt", "<|image|> <|image|> hi", "--image", img, "--max-new-tokens", 1, model=env.mm),
            "image")
    return refused(env, gen(env, "--prompt", "<|image|> hi", "--image", img, "--image", img, "--max-new-tokens", 1,
                            model=env.mm), "image")


@case("gen.one.image_on_text_model")
def _(env):
    img = os.path.join(PROC, "rgba_97x150.png")
    return refused(env, gen(env, "--prompt", "hi", "--image", img, "--max-new-tokens", 1), "vision")


@case("gen.one.max_soft_tokens")
def _(env):
    img = os.path.join(PROC, "rgba_97x150.png")
    for v in ["71", "0", "-70", "x"]:
        r = refused(env, gen(env, "--prompt", "<|image|> hi", "--image", img, "--max-soft-tokens", v,
                             "--max-new-tokens", 1, model=env.mm), "--max-soft-tokens")
        if "processor_config" in r:
            raise Defect(f"--max-soft-tokens {v} blamed on processor_config.json: {r!r}")
    return "71, 0, -70, x refused naming the flag"


@case("gen.one.chat_with_placeholders")
def _(env):
    img = os.path.join(PROC, "rgba_97x150.png")
    return refused(env, gen(env, "--chat", "--prompt", "<|image|> hi", "--image", img, "--max-new-tokens", 1,
                            model=env.mm), "--chat", "<|image|>")


@case("gen.one.video_bad")
def _(env):
    img = os.path.join(PROC, "rgba_97x150.png")
    empty = os.path.join(env.dir, "frames")
    os.makedirs(empty)
    for args, want in [(["--video", empty], empty), (["--video", os.path.join(env.dir, "nodir")], "nodir"),
                       (["--video", f"{img},,{img}"], "empty frame"),
                       (["--video", f"{img},{img}", "--video-fps", "nan"], "fps"),
                       (["--video", f"{img},{img}", "--video-frames", "0"], "--video-frames")]:
        refused(env, gen(env, "--prompt", "<|video|> hi", *args, "--max-new-tokens", 1, model=env.mm), want)
    return "an empty or missing frame folder, an empty frame name, fps NaN, 0 frames refused"


@case("gen.one.wav_corrupt")
def _(env):
    bad = env.file("bad.wav", b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 20)
    return refused(env, gen(env, "--prompt", "<|audio|> hi", "--audio", bad, "--max-new-tokens", 1, model=env.mm), bad)


@case("gen.one.wav_missing")
def _(env):
    missing = os.path.join(env.dir, "nope.wav")
    return refused(env, gen(env, "--prompt", "<|audio|> hi", "--audio", missing, "--max-new-tokens", 1, model=env.mm),
                   missing)


@case("gen.one.sampling_flags_with_prompts_defaults")
def _(env):
    args, src, out = gen_file(env, [{"prompt_ids": [5]}], "--top-p", 0)
    return refused(env, args, "--top-p")


# ------------------------------------------------------------------------------------------ generate, diffusion

def dgen(env, *extra):
    args = list(extra)
    if "--prompt-ids" not in args:
        args = ["--prompt-ids", "5,6,7"] + args
    if "--max-new-tokens" not in args:
        args += ["--max-new-tokens", 8]
    return ["generate", env.dg] + args


@case("gen.diffusion.max_new_tokens_0")
def _(env):
    return refused(env, dgen(env, "--max-new-tokens", 0), "max_new_tokens")


DIFFUSION_BAD = {
    "t_min_gt_t_max": (["--t-min", "0.9", "--t-max", "0.1"], "t_min"),
    "t_min_negative": (["--t-min=-0.1"], "t_min"),
    "t_max_nan": (["--t-max", "nan"], "--t-max"),
    "steps_negative": (["--max-denoising-steps=-1"], "max_denoising_steps"),
    "steps_zero": (["--max-denoising-steps", "0"], "max_denoising_steps"),
    "steps_text": (["--max-denoising-steps", "many"], "--max-denoising-steps"),
    "entropy_bound_negative": (["--entropy-bound=-1"], "entropy_bound"),
    "entropy_bound_inf": (["--entropy-bound", "inf"], "--entropy-bound"),
    "stability_negative": (["--stability-threshold=-1"], "stability_threshold"),
    "confidence_negative": (["--confidence-threshold=-0.5"], "confidence_threshold"),
    "confidence_nan": (["--confidence-threshold", "nan"], "--confidence-threshold"),
    "eos_garbage": (["--eos-token-id", "1,,x"], "--eos-token-id"),
    "eos_out_of_vocab": (["--eos-token-id", "1,999"], "999"),
    "pad_out_of_vocab": (["--pad-token-id", "999"], "999"),
    "pad_negative": (["--pad-token-id=-1"], "pad"),
    "rng_unknown": (["--rng", "mersenne"], "--rng"),
    "decoder_ids_wrong_count": (["--decoder-input-ids", "1,2,3"], "--decoder-input-ids"),
    "decoder_ids_out_of_vocab": (["--decoder-input-ids", "1,2,3,4,5,6,7,999"], "999"),
    "greedy_flag": (["--greedy"], "--greedy"),
    "temperature_flag": (["--temperature", "0.5"], "--temperature"),
    "n_flag_without_prompts": (["--top-k", "3"], "--top-k"),
    # 2^64 - 1 was clamped to 2^63 - 1, whose block count wrapped negative: nothing was generated
    "max_new_tokens_past_int64": (["--max-new-tokens", "18446744073709551615"], "out of range"),
    "max_new_tokens_octal": (["--max-new-tokens", "010"], "leading zero"),
}
for _name, (_flags, _want) in DIFFUSION_BAD.items():
    case(f"gen.diffusion.{_name}")(lambda env, f=_flags, w=_want: refused(env, dgen(env, *f), w))


@case("gen.diffusion.prompt_id_past_int64")
def _(env):
    # an id past int64 in a prompts file was named as the -1 it wraps to, without its line
    prompts = env.file("p.jsonl", '{"prompt_ids": [5, 6]}\n{"prompt_ids": [5, 18446744073709551615]}\n')
    return refused(env, ["generate", env.dg, "--prompts", prompts, "--out", os.path.join(env.dir, "o.jsonl")],
                   "p.jsonl line 2", "18446744073709551615", "outside the vocabulary")


@case("gen.diffusion.past_context")
def _(env):
    # tiny-dg-a: context 1024, canvas 8; every block is a whole canvas.
    return refused(env, dgen(env, "--max-new-tokens", 10 ** 9, "--max-denoising-steps", 1),
                   "max_position_embeddings 1024", timeout=30)


@case("convert.canvas_past_context")
def _(env):
    return refused(env, ["convert", env.moe, os.path.join(env.dir, "o"), "--to-diffusion", "--canvas-length", 4096],
                   "--canvas-length", "max_position_embeddings")


@case("gen.diffusion.none_values")
def _(env):
    # `none` is documented for the fields that transformers lets be None.
    rc, out = env.run(dgen(env, "--entropy-bound", "none", "--stability-threshold", "none",
                           "--confidence-threshold", "none", "--eos-token-id", "none"))
    clean(out)
    if rc not in (0, 1):
        raise Defect(f"rc {rc}: {out[-300:]!r}")
    return "ran" if rc == 0 else "refused: " + error_line(out)


@case("gen.diffusion.none_t_min")
def _(env):
    # docs/diffusion.md: `--t-min none` is transformers' None, the temperature off.
    succeeds(env, dgen(env, "--t-min", "none"))
    return "ran (documented: the temperature off)"


@case("gen.diffusion.self_conditioning_missing_file")
def _(env):
    missing = os.path.join(env.dir, "nope.safetensors")
    return refused(env, dgen(env, "--self-conditioning-logits", missing), missing)


@case("gen.diffusion.self_conditioning_wrong_shape")
def _(env):
    f = write_safetensors(os.path.join(env.dir, "sc.safetensors"),
                          {"self_conditioning_logits": ("F32", [1, 8, 10], [0.0] * 80)})
    return refused(env, dgen(env, "--self-conditioning-logits", f), "self_conditioning_logits")


@case("gen.diffusion.self_conditioning_wrong_name")
def _(env):
    f = write_safetensors(os.path.join(env.dir, "sc.safetensors"), {"logits": ("F32", [1, 8, 256], [0.0] * 2048)})
    return refused(env, dgen(env, "--self-conditioning-logits", f), "self_conditioning_logits")


@case("gen.diffusion.flags_on_autoregressive")
def _(env):
    for flags in [["--t-min", "0.2"], ["--rng", "philox"], ["--entropy-bound", "0.1"], ["--eos-token-id", "1"],
                  ["--max-denoising-steps", "4"], ["--decoder-input-ids", "1,2"]]:
        refused(env, gen(env, "--prompt-ids", "5", "--max-new-tokens", 1, *flags), flags[0])
    return "every diffusion flag refused on tiny-dense-ple"


@case("gen.diffusion.prompts_file")
def _(env):
    for bad, want in [('{"prompt_ids": [5], "max_tokens": 3}', "line 1"), ('{"prompt_ids": [999]}', "999"),
                      ('{"prompt_ids": []}', "prompt_ids"), ('{"prompt": "hi"}', "tokenizer"), ("[1]", "line 1")]:
        src = env.file("d.jsonl", bad + "\n")
        refused(env, ["generate", env.dg, "--prompts", src, "--out", os.path.join(env.dir, "d.out"),
                      "--max-new-tokens", 8], want)
    return "unknown keys, out-of-vocab ids, empty lists, text without a tokenizer, non-objects refused"


# ------------------------------------------------------------------------------------------ forward

def fwd(env, inputs, *extra, out=None):
    return ["forward", env.notok, "--inputs", inputs, "--out", out or os.path.join(env.dir, "fwd.safetensors")] + \
        list(extra)


@case("forward.missing_input_ids")
def _(env):
    f = write_safetensors(os.path.join(env.dir, "in.safetensors"), {"ids": ("I64", [1, 2], [5, 6])})
    return refused(env, fwd(env, f), "input_ids", f)


@case("forward.input_ids_1d_3d_float")
def _(env):
    for shape, dtype, vals in [([2], "I64", [5, 6]), ([1, 1, 2], "I64", [5, 6]), ([1, 2], "F32", [5.0, 6.0])]:
        f = write_safetensors(os.path.join(env.dir, "in.safetensors"), {"input_ids": (dtype, shape, vals)})
        refused(env, fwd(env, f), "input_ids")
    return "1-D, 3-D and float input_ids refused naming input_ids"


def bad_inputs_case(name, tensors, want):
    """g4 forward on an inputs file holding `tensors` is refused, naming `want`."""
    @case(name)
    def _(env):
        return refused(env, fwd(env, write_safetensors(os.path.join(env.dir, "in.safetensors"), tensors)), want)


IDS3 = ("I64", [1, 3], [5, 6, 7])
bad_inputs_case("forward.ids_out_of_vocab", {"input_ids": ("I64", [1, 2], [5, 256])}, "256")
bad_inputs_case("forward.labels_other_length", {"input_ids": IDS3, "labels": ("I64", [1, 2], [6, 7])}, "labels")
bad_inputs_case("forward.labels_out_of_vocab", {"input_ids": IDS3, "labels": ("I64", [1, 3], [6, 7, 300])}, "labels")
bad_inputs_case("forward.attention_mask_wrong_shape",
                {"input_ids": IDS3, "attention_mask": ("I64", [1, 4], [1, 1, 1, 1])}, "attention_mask")
bad_inputs_case("forward.position_ids_wrong_shape", {"input_ids": IDS3, "position_ids": ("I64", [1, 2], [0, 1])},
                "position_ids")


@case("forward.inputs_missing")
def _(env):
    missing = os.path.join(env.dir, "nope.safetensors")
    return refused(env, fwd(env, missing), missing)


@case("forward.inputs_not_safetensors")
def _(env):
    f = env.file("in.safetensors", "not a safetensors file at all\n")
    return refused(env, fwd(env, f), f)


@case("forward.out_is_inputs")
def _(env):
    f = write_safetensors(os.path.join(env.dir, "in.safetensors"), {"input_ids": ("I64", [1, 2], [5, 6])})
    before = open(f, "rb").read()
    for extra in [[], ["--overwrite"]]:
        refused(env, fwd(env, f, *extra, out=f), f)
        if open(f, "rb").read() != before:
            raise Defect(f"--out == --inputs {extra}: the inputs file was replaced")
    return "refused, with and without --overwrite"


@case("forward.out_exists")
def _(env):
    f = write_safetensors(os.path.join(env.dir, "in.safetensors"), {"input_ids": ("I64", [1, 2], [5, 6])})
    out = env.file("old.safetensors", "precious")
    rc, o = env.run(fwd(env, f, out=out))
    clean(o)
    # docs/reliability.md: outputs that are not files of a model directory are replaced (as cp does).
    return f"rc {rc}: " + ("replaced (documented)" if rc == 0 else error_line(o))


@case("forward.out_missing_dir")
def _(env):
    # save_safetensors makes the missing folders (as every safetensors writer of g4 does).
    f = write_safetensors(os.path.join(env.dir, "in.safetensors"), {"input_ids": ("I64", [1, 2], [5, 6])})
    out = os.path.join(env.dir, "no", "such", "o.safetensors")
    succeeds(env, fwd(env, f, out=out))
    if not os.path.isfile(out):
        raise Defect(f"no {out}")
    return "folders made, file written"


@case("forward.grads_without_labels")
def _(env):
    f = write_safetensors(os.path.join(env.dir, "in.safetensors"), {"input_ids": ("I64", [1, 2], [5, 6])})
    return refused(env, fwd(env, f, "--grads"), "labels")


@case("forward.diffusion_step_inputs")
def _(env):
    # Automodel's training step (loss_mask): each input out of range or of another shape names its tensor.
    S = 16
    base = {"input_ids": ("I64", [1, S], [5] * S), "loss_mask": ("I64", [1, S], [0] * 8 + [1] * 8),
            "noisy_input_ids": ("I64", [1, S], [5] * S), "selected_block": ("I64", [1], [0])}
    f = os.path.join(env.dir, "in.safetensors")
    out = os.path.join(env.dir, "o.safetensors")
    for extra, want in [({"selected_block": ("I64", [1], [99])}, "selected_block"),
                        ({"selected_block": ("I64", [1], [-1])}, "selected_block"),
                        ({"selected_block": ("I64", [2], [0, 1])}, "selected_block"),
                        ({"noisy_input_ids": ("I64", [1, S], [999] * S)}, "noisy_input_ids"),
                        ({"loss_mask": ("I64", [1, S - 1], [1] * (S - 1))}, "loss_mask"),
                        ({"self_conditioning_mask": ("I64", [3], [1, 1, 1])}, "self_conditioning_mask"),
                        ({"labels": ("I64", [1, S], [1] * S)}, "labels")]:
        t = dict(base)
        t.update(extra)
        write_safetensors(f, t)
        refused(env, ["forward", env.dg, "--inputs", f, "--out", out], want)
    write_safetensors(f, base)
    succeeds(env, ["forward", env.dg, "--inputs", f, "--out", out])
    return "selected_block 99 / -1 / [2], noisy ids past the vocabulary, masks of another shape, labels beside " \
        "loss_mask refused naming the tensor; the good batch runs"


@case("forward.diffusion_bad_canvas")
def _(env):
    f = write_safetensors(os.path.join(env.dir, "in.safetensors"),
                          {"input_ids": ("I64", [1, 2], [5, 6]), "decoder_input_ids": ("I64", [2, 8], [1] * 16)})
    return refused(env, ["forward", env.dg, "--inputs", f, "--out", os.path.join(env.dir, "o.safetensors")],
                   "decoder_input_ids")


@case("forward.diffusion_canvas_out_of_vocab")
def _(env):
    f = write_safetensors(os.path.join(env.dir, "in.safetensors"),
                          {"input_ids": ("I64", [1, 2], [5, 6]), "decoder_input_ids": ("I64", [1, 8], [999] * 8)})
    return refused(env, ["forward", env.dg, "--inputs", f, "--out", os.path.join(env.dir, "o.safetensors")], "999")


# ------------------------------------------------------------------------------------------ inspect / convert

def model_copy(env, src=None, name="m"):
    d = os.path.join(env.dir, name)
    shutil.copytree(src or env.notok, d)
    return d


@case("inspect.missing_config")
def _(env):
    d = model_copy(env)
    os.remove(os.path.join(d, "config.json"))
    refused(env, ["inspect", d], "config.json")
    return refused(env, ["convert", d, os.path.join(env.dir, "o")], "config.json")


@case("inspect.unknown_model_type")
def _(env):
    d = model_copy(env)
    c = json.load(open(os.path.join(d, "config.json")))
    c["model_type"] = "llama"
    json.dump(c, open(os.path.join(d, "config.json"), "w"))
    refused(env, ["inspect", d], "llama")
    return refused(env, ["convert", d, os.path.join(env.dir, "o")], "llama")


@case("inspect.config_values")
def _(env):
    for key, value in [("hidden_size", 0), ("num_hidden_layers", 10 ** 12), ("vocab_size", -5), ("hidden_size", "64"),
                       ("num_attention_heads", 3), ("head_dim", 0), ("sliding_window", 0),
                       ("max_position_embeddings", -1)]:
        d = os.path.join(env.dir, "m")
        shutil.rmtree(d, ignore_errors=True)
        model_copy(env)
        c = json.load(open(os.path.join(d, "config.json")))
        c.get("text_config", c)[key] = value
        json.dump(c, open(os.path.join(d, "config.json"), "w"))
        refused(env, ["inspect", d], key)
    return "zero, negative, huge, string and indivisible sizes refused naming the key"


@case("inspect.config_not_json")
def _(env):
    d = model_copy(env)
    env.file(os.path.join(d, "config.json"), "{ not json")
    return refused(env, ["inspect", d], "config.json")


@case("inspect.not_a_directory")
def _(env):
    return refused(env, ["inspect", os.path.join(env.dir, "nothing")], "nothing")


@case("convert.header_truncated")
def _(env):
    d = model_copy(env)
    p = os.path.join(d, "model.safetensors")
    raw = open(p, "rb").read()
    open(p, "wb").write(raw[:8 + 100])
    return refused(env, ["convert", d, os.path.join(env.dir, "o")], "model.safetensors")


@case("convert.header_lies_about_offsets")
def _(env):
    d = model_copy(env)
    p = os.path.join(d, "model.safetensors")
    raw = open(p, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    h = json.loads(raw[8:8 + n])
    k = sorted(k for k in h if k != "__metadata__")[0]
    a, b = h[k]["data_offsets"]
    h[k]["data_offsets"] = [a, b + 4096 * 1024]
    hb = json.dumps(h).encode()
    hb += b" " * (-len(hb) % 8)
    open(p, "wb").write(struct.pack("<Q", len(hb)) + hb + raw[8 + n:])
    return refused(env, ["convert", d, os.path.join(env.dir, "o")], "model.safetensors")


@case("convert.missing_shard")
def _(env):
    d = model_copy(env)
    out = os.path.join(env.dir, "sharded")
    succeeds(env, ["convert", d, out, "--max-shard-gb", 0.0003])
    shards = sorted(n for n in os.listdir(out) if n.endswith(".safetensors"))
    if len(shards) < 2:
        raise Defect(f"--max-shard-gb 0.0003 wrote {shards}")
    os.remove(os.path.join(out, shards[1]))
    return refused(env, ["convert", out, os.path.join(env.dir, "o")], shards[1])


@case("convert.out_is_in")
def _(env):
    d = model_copy(env)
    before = sorted(os.listdir(d))
    refused(env, ["convert", d, d, "--overwrite"], d)
    refused(env, ["convert", d, d + "/.", "--overwrite"], "input")
    if sorted(os.listdir(d)) != before:
        raise Defect("IN_DIR changed")
    return "refused with --overwrite, also as DIR/."


@case("convert.out_inside_in")
def _(env):
    d = model_copy(env)
    out = os.path.join(d, "sub")
    rc, o = env.run(["convert", d, out])
    clean(o)
    if rc != 0:
        return "refused: " + error_line(o)
    if sorted(os.listdir(d)) != sorted(["sub"] + os.listdir(env.notok)):
        raise Defect("IN_DIR's own files changed")
    return "allowed (IN_DIR's files untouched)"


@case("convert.max_shard_gb")
def _(env):
    for v in ["0", "-1", "nan", "x"]:
        refused(env, ["convert", env.notok, os.path.join(env.dir, "o"), f"--max-shard-gb={v}"], "--max-shard-gb")
    return "0, -1, nan, x refused"


@case("convert.out_is_a_file")
def _(env):
    f = env.file("afile", "precious")
    refused(env, ["convert", env.notok, f], f)
    if open(f).read() != "precious":
        raise Defect("the file was replaced")
    return "refused"


@case("convert.out_holds_model")
def _(env):
    out = os.path.join(env.dir, "o")
    succeeds(env, ["convert", env.notok, out])
    return refused(env, ["convert", env.notok, out], "--overwrite")


def q_proj_shapes(model_dir):
    """{layer: [out, in]} of tiny-dense-ple's q_proj weights (full layers have a wider head)."""
    raw = open(os.path.join(model_dir, "model.safetensors"), "rb").read()
    h = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
    return {int(k.split("layers.")[1].split(".")[0]): v["shape"] for k, v in h.items()
            if k.endswith("self_attn.q_proj.weight")}


def peft_adapter(env, name, rank, targets, layers=None, tensor_rank=None, widen=1, module="q_proj"):
    """A PEFT LoRA adapter of `module` tensors (shaped for q_proj) on `layers` of tiny-dense-ple; adapter_config.json
    says rank `rank` and `targets`, the tensors have rank `tensor_rank` (default: the same)."""
    d = os.path.join(env.dir, name)
    os.makedirs(d)
    json.dump({"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": targets,
               "base_model_name_or_path": "tiny", "task_type": "CAUSAL_LM", "lora_dropout": 0.0, "bias": "none",
               "fan_in_fan_out": False}, open(os.path.join(d, "adapter_config.json"), "w"))
    r = tensor_rank or rank
    tensors = {}
    shapes = q_proj_shapes(env.notok)
    for l in (shapes if layers is None else layers):
        out_dim, in_dim = shapes[l]
        in_dim *= widen
        pre = f"base_model.model.model.layers.{l}.self_attn.{module}"
        tensors[f"{pre}.lora_A.weight"] = ("F32", [r, in_dim], [0.01] * (r * in_dim))
        tensors[f"{pre}.lora_B.weight"] = ("F32", [out_dim, r], [0.01] * (out_dim * r))
    write_safetensors(os.path.join(d, "adapter_model.safetensors"), tensors)
    return d


def convert_lora(env, adapter):
    return ["convert", env.notok, os.path.join(env.dir, "o"), "--merge-lora", adapter]


@case("convert.merge_lora_good")
def _(env):
    a = peft_adapter(env, "good", 2, ["q_proj"])
    out = succeeds(env, convert_lora(env, a)).strip().splitlines()[-1]
    # The merged model must differ from the base (the adapter is not silently dropped).
    base = succeeds(env, ["generate", env.notok, "--prompt-ids", "5,6,7", "--max-new-tokens", 8])
    merged = succeeds(env, ["generate", os.path.join(env.dir, "o"), "--prompt-ids", "5,6,7", "--max-new-tokens", 8])
    return out + ("" if base != merged else " (same greedy output as the base)")


@case("convert.merge_lora_wrong_rank")
def _(env):
    a = peft_adapter(env, "rank", 4, ["q_proj"], tensor_rank=2)
    return refused(env, convert_lora(env, a), "lora_A")


@case("convert.merge_lora_other_base")
def _(env):
    a = peft_adapter(env, "base", 2, ["q_proj"], widen=2)
    return refused(env, convert_lora(env, a), "q_proj", "shape")


@case("convert.merge_lora_targets_mismatch")
def _(env):
    # adapter_config says v_proj, the tensors are q_proj's: refused naming the missing v_proj tensor.
    a = peft_adapter(env, "targets", 2, ["v_proj"])
    return refused(env, convert_lora(env, a), "v_proj")


@case("convert.merge_lora_stray_tensors")
def _(env):
    # The config targets q_proj; the file also holds k_proj pairs the config does not name. Dropping them would
    # merge another adapter than the one trained.
    a = peft_adapter(env, "stray", 2, ["q_proj"])
    b = peft_adapter(env, "stray_k", 2, ["q_proj"], module="k_proj", layers=[0])
    raw = open(os.path.join(b, "adapter_model.safetensors"), "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    extra = {k: v for k, v in json.loads(raw[8:8 + n]).items()}
    rawa = open(os.path.join(a, "adapter_model.safetensors"), "rb").read()
    na = struct.unpack("<Q", rawa[:8])[0]
    ha = json.loads(rawa[8:8 + na])
    tensors = {}
    for src_raw, src_n, h in [(rawa, na, ha), (raw, n, extra)]:
        for k, v in h.items():
            a0, a1 = v["data_offsets"]
            vals = struct.unpack(f"<{(a1 - a0) // 4}f", src_raw[8 + src_n + a0:8 + src_n + a1])
            tensors[k] = ("F32", v["shape"], list(vals))
    write_safetensors(os.path.join(a, "adapter_model.safetensors"), tensors)
    rc, out = env.run(convert_lora(env, a))
    clean(out)
    if rc == 0:
        raise Defect("k_proj tensors outside target_modules silently dropped")
    return error_line(out)


@case("convert.merge_lora_missing_layers")
def _(env):
    a = peft_adapter(env, "partial", 2, ["q_proj"], layers=[0, 1, 2])
    return refused(env, convert_lora(env, a), "layers.3", "q_proj")


@case("convert.merge_lora_missing_dir")
def _(env):
    missing = os.path.join(env.dir, "noadapter")
    return refused(env, ["convert", env.notok, os.path.join(env.dir, "o"), "--merge-lora", missing], missing)


@case("convert.to_diffusion_on_dense")
def _(env):
    return refused(env, ["convert", env.notok, os.path.join(env.dir, "o"), "--to-diffusion"], "MoE")


@case("convert.interrupted")
def _(env):
    # Kill convert at several moments: OUT_DIR must never look like a complete model with missing or cut weights.
    out = os.path.join(env.dir, "o")
    problems, mid = [], 0
    for delay in [0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5]:
        shutil.rmtree(out, ignore_errors=True)
        p = subprocess.Popen([env.g4, "convert", env.moe, out, "--max-shard-gb", "0.0005"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        mid += p.poll() is None and os.path.isdir(out) and bool(os.listdir(out))
        p.kill()
        p.wait()
        if not os.path.exists(os.path.join(out, "config.json")):
            continue
        rc, o = env.run(["convert", out, os.path.join(env.dir, "o2"), "--overwrite"])
        if rc != 0:
            problems.append(f"killed after {delay} s: config.json present but the model does not load: {error_line(o)}")
        shutil.rmtree(os.path.join(env.dir, "o2"), ignore_errors=True)
    if problems:
        raise Defect("; ".join(problems))
    return f"10 kills, {mid} while writing: each left either no config.json or a loadable model"


@case("gen.prompts.flag_ranges")
def _(env):
    for flags, want in [(["--n", 0], "--n"), (["--n", 200], "--n"), (["--n", 1000], "--n"),
                        (["--logprobs=-2"], "--logprobs"), (["--logprobs", 21], "--logprobs"),
                        (["--stop-ids", 999], "--stop-ids"), (["--stop-ids=-1"], "--stop-ids"),
                        (["--max-new-tokens", 0], "--max-new-tokens")]:
        args, src, out = gen_file(env, [{"prompt_ids": [5]}], *flags)
        if "--max-new-tokens" in flags:
            args = args[:args.index("--max-new-tokens")] + args[args.index("--max-new-tokens") + 2:]
        r = refused(env, args, want)
        if "in.jsonl:1" in r:
            raise Defect(f"{flags}: the flag's mistake is blamed on the first line: {r!r}")
    return "--n 0 / 200 / 1000, --logprobs -2 / 21, --stop-ids 999 / -1, --max-new-tokens 0 refused naming the flag"


# ------------------------------------------------------------------------------------------ main

if __name__ == "__main__":
    TABLE.main(__doc__, lambda g4, work, a: Env(g4.binary, work))
