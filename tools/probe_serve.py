#!/usr/bin/env python3
"""Probes the edges of `g4 serve` as the OpenAI API and vLLM's server define them, with the official `openai`
client and raw HTTP, and prints one line per probe: `ok`, or `DEFECT` with what differed. Exit status 1 when any
probe found a defect.

    scripts/python_venv.sh build-cpu
    build-cpu/pyvenv/bin/python tools/probe_serve.py --g4 build-cpu/g4

The server runs on the fixture of tests/serve/openai_client_test.py (tiny-dense-ple, 256-token tokenizer, context
4096) whose helpers it reuses. Probed: completions and chat, whole and streamed (SSE framing, [DONE], usage chunk),
n > 1 (stream indices), max_tokens / max_completion_tokens at 0, 1 and past the context, prompts past the context,
messages (empty, unknown roles, system and developer, tool fields), stop strings (one, a list, spanning tokens, at
the first token) and stop_token_ids, finish reasons, logprobs and top_logprobs (0, 1, 20, 21; tokens and bytes; the
sampled tokens' log-probs against `g4 forward` of the same ids), seeds alone and beside other requests, temperature
and top_p bounds, unsupported penalties, 16 requests at once, a client leaving mid-stream, malformed JSON, other
content types, a body over the limit, unknown routes and methods, /v1/models and /health.

Regressions found here live in tests/serve/openai_client_test.py (CI); this tool is for re-probing by hand.
"""
import argparse
import http.client
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "serve"))
import openai_client_test as fixture  # noqa: E402  (the test's model directory and server wrapper)
from probe_commands import write_safetensors  # noqa: E402


# ----------------------------------------------------------------------------------------------- raw HTTP


class Raw:
    """One HTTP exchange with the server, without the openai client (which hides framing and status details)."""

    def __init__(self, base):
        host, port = base.split("//")[1].split(":")
        self.host, self.port = host, int(port)

    def request(self, method, path, body=None, headers=None, timeout=60):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        h = {"Content-Type": "application/json"}
        h.update(headers or {})
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        data = r.read()
        conn.close()
        return r.status, dict((k.lower(), v) for k, v in r.getheaders()), data

    def json(self, method, path, body=None, headers=None):
        status, headers, data = self.request(method, path, body, headers)
        try:
            return status, json.loads(data) if data.strip() else None
        except ValueError:
            return status, {"unparsed": data[:200].decode(errors="replace")}

    def sse(self, path, body):
        """The events of a stream: (status, content type, [data payloads as str], raw text)."""
        status, headers, data = self.request("POST", path, body)
        text = data.decode()
        events = []
        for block in text.split("\n\n"):
            if not block.strip() or block.startswith(":"):
                continue
            lines = block.split("\n")
            assert all(ln.startswith("data: ") for ln in lines), f"an event that is not 'data: ...': {block!r}"
            events.append("\n".join(ln[len("data: "):] for ln in lines))
        return status, headers.get("content-type", ""), events, text


# ------------------------------------------------------------------------------------ safetensors (no numpy)


def read_safetensors(path, name):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    info = header[name]
    assert info["dtype"] == "F32", info
    a, b = info["data_offsets"]
    body = raw[8 + n + a:8 + n + b]
    return info["shape"], struct.unpack(f"<{len(body) // 4}f", body)


def run_concurrently(work, count, timeout):
    """Runs work(k) for k < count, each in its own thread; returns the (k, error) pairs of those that raised."""
    errors = []

    def one(k):
        try:
            work(k)
        except Exception as e:
            errors.append((k, repr(e)))
    threads = [threading.Thread(target=one, args=(k,)) for k in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    return errors


def log_softmax(row):
    m = max(row)
    s = math.log(sum(math.exp(x - m) for x in row))
    return [x - m - s for x in row]


# ------------------------------------------------------------------------------------------------ probes


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--g4", default="build-cpu/g4")
    ap.add_argument("--data", default=os.path.join(HERE, "..", "tests", "data"))
    ap.add_argument("--only", default="", help="comma-separated probe names")
    args = ap.parse_args()
    import openai

    scratch = tempfile.mkdtemp(prefix="g4_probe_serve_")
    model_dir = os.path.join(scratch, "tiny")
    fixture.make_model_dir(args.data, model_dir)
    server = fixture.Server(args.g4, model_dir, os.path.join(scratch, "serve.log"))
    raw = Raw(server.base)
    client = openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0, timeout=120)
    context = 4096
    probes, defects = [], []

    def probe(fn):
        probes.append(fn)
        return fn

    def defect(what):
        defects.append(what)
        print(f"  DEFECT {what}")

    def expect(cond, what):
        if not cond:
            defect(what)
        return cond

    def complete(**kw):
        kw.setdefault("model", "tiny")
        kw.setdefault("prompt", "In the beginning God created")
        return client.completions.create(**kw)

    def chat(**kw):
        kw.setdefault("model", "tiny")
        kw.setdefault("messages", [{"role": "user", "content": "Hello"}])
        return client.chat.completions.create(**kw)

    def expect_error(status, param, fn, words="", code=None, label=""):
        """fn() must raise the openai client's error for `status`, with an OpenAI error body naming `param`."""
        try:
            fn()
        except openai.APIStatusError as e:
            body = e.body if isinstance(e.body, dict) else {}
            err = body.get("error", body) if isinstance(body, dict) else {}
            ok = e.status_code == status and err.get("param") == param and words in (err.get("message") or "")
            ok = ok and set(err) >= {"message", "type", "param", "code"} and (code is None or err.get("code") == code)
            expect(ok, f"{label}: expected {status} param={param!r} {words!r} code={code!r}, got {e.status_code} {err}")
            return
        except Exception as e:  # the client failed otherwise (a dropped connection, a hang): a defect too
            defect(f"{label}: expected {status} param={param!r}, got {type(e).__name__}: {e}")
            return
        defect(f"{label}: expected {status} param={param!r}, the request succeeded")

    def raw_error(status, body_or_none, label, param="__any__"):
        ok = body_or_none is not None and isinstance(body_or_none.get("error"), dict)
        err = body_or_none.get("error", {}) if ok else {}
        ok = ok and set(err) >= {"message", "type", "param", "code"}
        if param != "__any__":
            ok = ok and err.get("param") == param
        expect(ok, f"{label}: {status} without an OpenAI error body: {body_or_none}")

    # -- completions and chat, whole and streamed ------------------------------------------------------------

    @probe
    def whole_shapes():
        r = complete(max_tokens=5, temperature=0)
        expect(r.object == "text_completion" and len(r.choices) == 1 and r.choices[0].index == 0, f"completion {r}")
        c = chat(max_tokens=5, temperature=0, messages=[{"role": "system", "content": "Be brief."},
                                                        {"role": "user", "content": "Hello"}])
        expect(c.object == "chat.completion" and c.choices[0].message.role == "assistant", f"chat {c}")
        expect(c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens, f"usage {c.usage}")

    @probe
    def sse_framing():
        for path, body in [("/v1/completions", {"prompt": "In the", "max_tokens": 6, "temperature": 0}),
                           ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6,
                                                     "temperature": 0})]:
            for include_usage in (False, True):
                b = dict(body, stream=True)
                if include_usage:
                    b["stream_options"] = {"include_usage": True}
                status, ctype, events, text = raw.sse(path, b)
                label = f"{path} stream include_usage={include_usage}"
                if not expect(status == 200 and ctype.startswith("text/event-stream"), f"{label}: {status} {ctype}"):
                    continue
                expect(events and events[-1] == "[DONE]" and events.count("[DONE]") == 1, f"{label}: {text[-200:]}")
                chunks = [json.loads(e) for e in events[:-1]]
                finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
                expect(len(finals) == 1, f"{label}: {len(finals)} chunks with a finish_reason")
                if include_usage:
                    expect(all("usage" in c for c in chunks) and all(c["usage"] is None for c in chunks[:-1]),
                           f"{label}: chunks before the last must carry usage null")
                    last = chunks[-1]
                    expect(last["choices"] == [] and last["usage"] and last["usage"]["completion_tokens"] >= 1,
                           f"{label}: last chunk {last}")
                else:
                    expect(all("usage" not in c or c["usage"] is None for c in chunks), f"{label}: usage present")
                ids = {c["id"] for c in chunks}
                expect(len(ids) == 1, f"{label}: chunk ids differ {ids}")

    @probe
    def n_samples_streamed():
        for api in ("completions", "chat"):
            call = complete if api == "completions" else chat
            chunks = list(call(max_tokens=6, n=3, seed=5, temperature=1.0, stream=True,
                               stream_options={"include_usage": True}))
            finals = {}
            for ch in chunks:
                for c in ch.choices:
                    if c.finish_reason:
                        finals[c.index] = finals.get(c.index, 0) + 1
            expect(finals == {0: 1, 1: 1, 2: 1}, f"{api} n=3 stream: finish chunks per index {finals}")
            if api == "chat":
                roles = {}
                for ch in chunks:
                    for c in ch.choices:
                        if c.delta.role:
                            roles[c.index] = roles.get(c.index, 0) + 1
                expect(roles == {0: 1, 1: 1, 2: 1}, f"chat n=3 stream: role chunks per index {roles}")
            whole = call(max_tokens=6, n=3, seed=5, temperature=1.0)
            expect(chunks[-1].usage.completion_tokens == whole.usage.completion_tokens,
                   f"{api} n=3: streamed usage {chunks[-1].usage} whole {whole.usage}")

    # -- lengths -------------------------------------------------------------------------------------------------

    @probe
    def max_tokens_edges():
        expect_error(400, "max_tokens", lambda: complete(max_tokens=0), label="completions max_tokens=0")
        expect_error(400, "max_completion_tokens", lambda: chat(max_completion_tokens=0),
                     label="chat max_completion_tokens=0")
        expect_error(400, "max_tokens", lambda: chat(max_tokens=0), label="chat max_tokens=0")
        r = complete(max_tokens=1, temperature=0, extra_body={"ignore_eos": True})
        expect(r.usage.completion_tokens == 1 and r.choices[0].finish_reason == "length", f"max_tokens=1: {r}")
        expect_error(400, "max_tokens", lambda: complete(max_tokens=context + 1), "4096",
                     code="context_length_exceeded", label="max_tokens past the context")
        expect_error(400, "max_completion_tokens", lambda: chat(max_completion_tokens=context),
                     "4096", code="context_length_exceeded", label="chat max_completion_tokens past the context")
        expect_error(400, "prompt", lambda: complete(prompt=[2] + [40] * context, max_tokens=1), "4096",
                     code="context_length_exceeded", label="prompt past the context")
        expect_error(400, "messages", lambda: chat(messages=[{"role": "user", "content": "a " * 5000}]), "4096",
                     code="context_length_exceeded", label="chat prompt past the context")
        # Exactly filling the context is allowed: the prompt plus max_tokens = context.
        r = complete(prompt=[2] + [40] * (context - 3), max_tokens=2, temperature=0, extra_body={"ignore_eos": True})
        expect(r.usage.completion_tokens == 2, f"prompt + max_tokens = context: {r.usage}")
        expect_error(400, "max_tokens", lambda: complete(max_tokens=2 ** 63 - 1), label="max_tokens 2^63-1")
        expect_error(400, "max_tokens", lambda: complete(max_tokens=2 ** 64), label="max_tokens 2^64")
        expect_error(400, "max_tokens", lambda: complete(max_tokens=-1), label="max_tokens -1")

    # -- messages ------------------------------------------------------------------------------------------------

    @probe
    def messages_edges():
        expect_error(400, "messages", lambda: chat(messages=[]), label="empty messages")
        expect_error(400, "messages", lambda: chat(messages=[{"role": "wizard", "content": "hi"}]), "wizard",
                     label="unknown role")
        expect_error(400, "messages", lambda: chat(messages=[{"role": "user"}, {"role": 5, "content": "x"}]),
                     label="non-string role")
        expect_error(400, "messages", lambda: chat(messages=[{"content": "hi"}]), "role", label="missing role")
        expect_error(400, "messages", lambda: chat(messages=[{"role": "tool", "content": "42", "tool_call_id": "a"}]),
                     "tool", label="tool role")
        expect_error(400, "tools", lambda: chat(tools=[{"type": "function", "function": {"name": "f",
                                                                                          "parameters": {}}}]),
                     label="tools")
        expect_error(400, "messages", lambda: chat(messages=[
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": None,
             "tool_calls": [{"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]),
            "tool", label="assistant tool_calls")
        expect_error(400, "tool_choice", lambda: chat(tool_choice="required"), label="tool_choice required")
        chat(tool_choice="none", max_tokens=1)  # "none" asks for nothing tools would change
        expect_error(400, "response_format", lambda: chat(response_format={"type": "json_object"}),
                     label="response_format json_object")
        for role in ("system", "developer"):
            r = chat(max_tokens=3, temperature=0, messages=[{"role": role, "content": "Be brief."},
                                                            {"role": "user", "content": "Hello"}])
            expect(r.usage.prompt_tokens > 5, f"{role} message: {r.usage}")
        a = chat(max_tokens=3, temperature=0, messages=[{"role": "system", "content": "Be brief."},
                                                        {"role": "user", "content": "Hello"}])
        b = chat(max_tokens=3, temperature=0, messages=[{"role": "developer", "content": "Be brief."},
                                                        {"role": "user", "content": "Hello"}])
        expect(a.usage.prompt_tokens == b.usage.prompt_tokens and a.choices[0].message.content ==
               b.choices[0].message.content, "developer renders unlike system")
        r = chat(max_tokens=3, messages=[{"role": "user", "content": [{"type": "text", "text": "Hel"},
                                                                      {"type": "text", "text": "lo"}]}])
        expect(r.usage.completion_tokens >= 1, "text parts")
        expect_error(400, "messages", lambda: chat(messages=[{"role": "user", "content": [{"type": "file",
                                                                                           "file": {}}]}]),
                     "file", label="file part")

    # -- stops ---------------------------------------------------------------------------------------------------

    @probe
    def stops():
        base = complete(max_tokens=24, temperature=0, extra_body={"ignore_eos": True})
        text = base.choices[0].text
        lp = complete(max_tokens=24, temperature=0, logprobs=0, extra_body={"ignore_eos": True}).choices[0].logprobs
        toks = lp.tokens  # (the fixture's tokenizer has no decoder: a text joins its tokens with spaces, as HF's)
        # A stop string that spans the boundary of two tokens.
        span = None
        for i in range(1, len(toks) - 1):
            if toks[i] and toks[i + 1]:
                span = toks[i][-1] + toks[i + 1][0]
                break
        if span and span in text:
            for stream in (False, True):
                r = complete(max_tokens=24, temperature=0, stop=span, stream=stream, extra_body={"ignore_eos": True})
                got = "".join(ch.choices[0].text for ch in r if ch.choices) if stream else r.choices[0].text
                expect(got == text[:text.index(span)], f"stop spanning tokens {span!r} stream={stream}: {got!r}")
        # A stop string at the first token: the text is empty, finish_reason stop.
        first = toks[0]
        for stream in (False, True):
            r = complete(max_tokens=24, temperature=0, stop=[first[:1], "zzzz"], stream=stream)
            if stream:
                chunks = list(r)
                got = "".join(ch.choices[0].text for ch in chunks if ch.choices)
                fin = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
            else:
                got, fin = r.choices[0].text, [r.choices[0].finish_reason]
            expect(got == "" and fin == ["stop"], f"stop at the first token stream={stream}: {got!r} {fin}")
        # stop_token_ids: the third token's id ends the sample there; the text leaves it out (as vLLM's).
        vocab = json.load(open(os.path.join(model_dir, "tokenizer.json")))["model"]["vocab"]
        gen_ids = [vocab.get(t) for t in toks]
        k = next((i for i in range(2, len(gen_ids)) if gen_ids[i] is not None and gen_ids[i] not in gen_ids[:i]), None)
        if k is not None:
            r = complete(max_tokens=24, temperature=0, extra_body={"ignore_eos": True, "stop_token_ids": [gen_ids[k]]})
            before = complete(max_tokens=k, temperature=0, extra_body={"ignore_eos": True}).choices[0].text
            expect(r.choices[0].finish_reason == "stop" and r.usage.completion_tokens == k + 1 and
                   r.choices[0].text == before, f"stop_token_ids [{gen_ids[k]}]: {r.choices[0]} {r.usage}")
        r = complete(prompt=[2, 40, 41], max_tokens=8, temperature=0, extra_body={"ignore_eos": True})
        expect(r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 8, f"ignore_eos: {r}")
        # Chat's ignore_eos runs past the end of turn too (vLLM's ignores every generation_config eos id).
        for seed in range(6):
            r = chat(max_tokens=40, temperature=1.0, seed=seed, extra_body={"ignore_eos": True})
            expect(r.usage.completion_tokens == 40, f"chat ignore_eos seed {seed}: {r.usage.completion_tokens} tokens")
        expect(complete(max_tokens=24, temperature=0, stop="zz").choices[0].finish_reason in ("length", "stop"),
               "stop that never appears")

    # -- logprobs ------------------------------------------------------------------------------------------------

    @probe
    def logprob_edges():
        for n in (0, 1, 20):
            r = complete(max_tokens=4, temperature=0, logprobs=n)
            lp = r.choices[0].logprobs
            expect(len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) ==
                   r.usage.completion_tokens, f"completions logprobs={n}: lengths")
            expect(all(len(t) == n for t in lp.top_logprobs) or n == 0 and all(not t for t in lp.top_logprobs),
                   f"completions logprobs={n}: top sizes {[len(t) for t in lp.top_logprobs]}")
            c = chat(max_tokens=4, temperature=0, logprobs=True, top_logprobs=n)
            content = c.choices[0].logprobs.content
            expect(len(content) == c.usage.completion_tokens and all(len(t.top_logprobs) == n for t in content),
                   f"chat top_logprobs={n}: sizes")
            for t in content:
                expect(bytes(t.bytes) == t.token.encode(), f"chat bytes {t.bytes} != utf-8 of {t.token!r}")
                for alt in t.top_logprobs:
                    expect(bytes(alt.bytes) == alt.token.encode(), f"top bytes {alt.bytes} != {alt.token!r}")
                if n:
                    expect(abs(t.top_logprobs[0].logprob - t.logprob) < 1e-5, "greedy token is not the top one")
                    lps = [a.logprob for a in t.top_logprobs]
                    expect(lps == sorted(lps, reverse=True), f"top_logprobs not sorted: {lps}")
        whole = complete(max_tokens=6, temperature=0, logprobs=1, extra_body={"ignore_eos": True})
        streamed = list(complete(max_tokens=6, temperature=0, logprobs=1, stream=True, extra_body={"ignore_eos": True}))
        offsets = [o for ch in streamed if ch.choices and ch.choices[0].logprobs
                   for o in (ch.choices[0].logprobs.text_offset or [])]
        expect(offsets == whole.choices[0].logprobs.text_offset,
               f"streamed text_offset {offsets} vs whole {whole.choices[0].logprobs.text_offset}")
        expect_error(400, "logprobs", lambda: complete(logprobs=21), label="logprobs 21")
        expect_error(400, "top_logprobs", lambda: chat(logprobs=True, top_logprobs=21), label="top_logprobs 21")
        expect_error(400, "top_logprobs", lambda: chat(logprobs=True, top_logprobs=-1), label="top_logprobs -1")
        c = chat(max_tokens=2, logprobs=False)
        expect(c.choices[0].logprobs is None, "logprobs false gives log-probs")
        s = list(chat(max_tokens=4, temperature=0, logprobs=True, top_logprobs=2, stream=True))
        n_lp = sum(len(ch.choices[0].logprobs.content) for ch in s if ch.choices and ch.choices[0].logprobs)
        expect(n_lp == 4 or n_lp == sum(1 for ch in s if ch.choices), f"streamed chat log-probs: {n_lp} tokens")

    @probe
    def logprobs_match_forward():
        """The log-probs of a greedy completion are the model's: `g4 forward` of prompt + generated ids."""
        prompt = [2, 40, 41, 42, 43]
        r = complete(prompt=prompt, max_tokens=6, temperature=0, logprobs=5, extra_body={"ignore_eos": True})
        lp = r.choices[0].logprobs
        # The generated ids: each greedy token is its top alternative; map texts to ids through the tokenizer.
        vocab = json.load(open(os.path.join(model_dir, "tokenizer.json")))["model"]["vocab"]
        try:
            gen_ids = [vocab[t] for t in lp.tokens]
        except KeyError as e:
            defect(f"token text {e} is not a vocabulary entry (cannot map back to ids)")
            return
        ids = prompt + gen_ids
        inp, out = os.path.join(scratch, "fw_in.safetensors"), os.path.join(scratch, "fw_out.safetensors")
        write_safetensors(inp, {"input_ids": ("I64", [1, len(ids)], ids)})
        run = subprocess.run([args.g4, "forward", model_dir, "--inputs", inp, "--out", out, "--overwrite"],
                             capture_output=True, text=True)
        if not expect(run.returncode == 0, f"g4 forward failed: {run.stderr[-500:]}"):
            return
        shape, flat = read_safetensors(out, "logits")
        V = shape[-1]
        worst = 0.0
        for k, tok in enumerate(gen_ids):
            pos = len(prompt) - 1 + k
            row = log_softmax(flat[pos * V:(pos + 1) * V])
            worst = max(worst, abs(row[tok] - lp.token_logprobs[k]))
            expect(row[tok] == max(row) or abs(row[tok] - max(row)) < 1e-5, f"token {k} is not the forward's argmax")
            top = sorted(range(V), key=lambda i: -row[i])[:5]
            want = sorted(row[i] for i in top)
            got = sorted(lp.top_logprobs[k].values())
            expect(len(got) == 5 and max(abs(a - b) for a, b in zip(want, got)) < 1e-4,
                   f"token {k}: top-5 log-probs {got} vs forward {want}")
        expect(worst < 1e-4, f"sampled log-probs differ from g4 forward by {worst}")
        print(f"  logprobs vs g4 forward: max |diff| {worst:.2e} over {len(gen_ids)} tokens")

    # -- sampling parameters ---------------------------------------------------------------------------------

    @probe
    def seeds_alone_and_beside_others():
        kw = dict(max_tokens=24, temperature=1.0, seed=1234, top_p=0.9, extra_body={"ignore_eos": True, "top_k": 20})
        alone = complete(**kw).choices[0].text
        out, errors = {}, []

        def one(k):
            try:
                if k == 0:
                    out[k] = complete(**kw).choices[0].text
                else:
                    out[k] = complete(prompt=[2] + list(range(20, 20 + 7 * k)), max_tokens=30, temperature=1.0,
                                      seed=k).choices[0].text
            except Exception as e:
                errors.append(repr(e))
        ts = [threading.Thread(target=one, args=(k,)) for k in range(8)]
        for t in ts[1:]:
            t.start()
        time.sleep(0.05)
        ts[0].start()
        for t in ts:
            t.join(120)
        expect(not errors, f"errors {errors}")
        expect(out.get(0) == alone, f"seed 1234 alone {alone!r} beside others {out.get(0)!r}")
        n3 = complete(n=3, **kw)
        expect(n3.choices[0].text == alone, "sample 0 of n=3 differs from n=1 with the same seed")

    @probe
    def sampling_bounds():
        a = complete(max_tokens=8, temperature=0).choices[0].text
        b = complete(max_tokens=8, temperature=0, seed=99).choices[0].text
        expect(a == b, "temperature 0 depends on the seed")
        expect_error(400, "temperature", lambda: complete(temperature=-0.5), label="temperature -0.5")
        complete(max_tokens=2, temperature=2.5)  # vLLM takes any temperature >= 0; documented: [0, 100]
        expect_error(400, "top_p", lambda: complete(top_p=0), label="top_p 0")
        expect_error(400, "top_p", lambda: complete(top_p=1.5), label="top_p 1.5")
        expect_error(400, "top_p", lambda: complete(top_p=-0.1), label="top_p -0.1")
        for key in ("presence_penalty", "frequency_penalty"):
            expect_error(400, key, lambda: complete(**{key: 0.5}), label=f"{key} 0.5")
            complete(max_tokens=1, **{key: 0})
        expect_error(400, "repetition_penalty", lambda: complete(extra_body={"repetition_penalty": 1.2}),
                     label="repetition_penalty")
        expect_error(400, "logit_bias", lambda: complete(logit_bias={"5": 10}), label="logit_bias")
        expect_error(400, "n", lambda: complete(n=0), label="n 0")
        expect_error(400, "seed", lambda: complete(seed=1.5), label="seed 1.5")
        expect_error(400, "stream", lambda: complete(extra_body={"stream": "yes"}), label="stream 'yes'")
        complete(max_tokens=1, seed=-5)
        # vLLM's extensions that change the output: refused by name unless neutral.
        for key, value in [("min_tokens", 3), ("use_beam_search", True), ("include_stop_str_in_output", True),
                           ("prompt_logprobs", 1), ("guided_json", {}), ("guided_choice", ["a"]),
                           ("allowed_token_ids", [5]), ("bad_words", ["x"]), ("truncate_prompt_tokens", 8),
                           ("structured_outputs", {"regex": "a"}), ("skip_special_tokens", True)]:
            expect_error(400, key, lambda: complete(extra_body={key: value}), label=f"{key}={value}")
        complete(max_tokens=1, extra_body={"min_tokens": 0, "use_beam_search": False, "bad_words": [],
                                           "include_stop_str_in_output": False, "skip_special_tokens": False})
        for key, value in [("continue_final_message", True), ("chat_template", "{{ messages }}"),
                           ("chat_template_kwargs", {"enable_thinking": True}), ("echo", True)]:
            expect_error(400, key, lambda: chat(extra_body={key: value}), label=f"chat {key}={value}")
        chat(max_tokens=1, extra_body={"chat_template_kwargs": {"enable_thinking": False},
                                       "continue_final_message": False})
        complete(max_tokens=1, user="someone", extra_body={"metadata": {"a": "b"}})

    # -- concurrency and the connection ----------------------------------------------------------------------

    @probe
    def sixteen_at_once():
        res = {}

        def one(k):
            kw = dict(prompt=[2] + list(range(30, 30 + k + 1)), max_tokens=10 + k, temperature=0,
                      extra_body={"ignore_eos": True})
            if k % 2:
                ch = list(complete(stream=True, stream_options={"include_usage": True}, **kw))
                res[k] = ("".join(c.choices[0].text for c in ch if c.choices), ch[-1].usage.completion_tokens)
            else:
                r = complete(**kw)
                res[k] = (r.choices[0].text, r.usage.completion_tokens)
        errors = run_concurrently(one, 16, 180)
        expect(not errors, f"errors {errors}")
        expect({k: v[1] for k, v in res.items()} == {k: 10 + k for k in range(16)}, f"token counts {res}")
        # Each answer equals the same request run alone.
        for k in (0, 7, 15):
            alone = complete(prompt=[2] + list(range(30, 30 + k + 1)), max_tokens=10 + k, temperature=0,
                             extra_body={"ignore_eos": True}).choices[0].text
            expect(res.get(k, ("",))[0] == alone, f"request {k}: batched {res.get(k)} alone {alone!r}")
        expect(fixture.pool_whole(server.wait_idle()), "pool not whole after 16 requests")

    @probe
    def preemption_keeps_answers():
        """A pool too small for everything at once: requests are preempted and recomputed, and each seeded answer
        is still the one it gets on the roomy server."""
        small = fixture.Server(args.g4, model_dir, os.path.join(scratch, "serve-small.log"),
                               extra=["--num-pages", "40"])
        try:
            small_client = openai.OpenAI(base_url=small.base + "/v1", api_key="unused", max_retries=0, timeout=300)
            reqs = [dict(model="tiny", prompt=[2] + list(range(40, 40 + 90 + k)), max_tokens=200, temperature=1.0,
                         seed=100 + k, extra_body={"ignore_eos": True}) for k in range(8)]
            got = {}

            def one(k):
                got[k] = small_client.completions.create(**reqs[k]).choices[0].text
            errors = run_concurrently(one, 8, 300)
            expect(not errors, f"errors on the small pool: {errors}")
            h = small.wait_idle()
            expect(h["pool"]["preempted_total"] > 0, f"nothing was preempted: {h}")
            expect(fixture.pool_whole(h), f"pages left on the small pool: {h}")
            for k in range(8):
                expect(got.get(k) == client.completions.create(**reqs[k]).choices[0].text,
                       f"request {k} differs after preemption")
        finally:
            small.proc.kill()
            small.proc.wait()

    @probe
    def disconnect_mid_stream():
        server.wait_idle()
        conn = http.client.HTTPConnection(raw.host, raw.port, timeout=60)
        conn.request("POST", "/v1/chat/completions", body=json.dumps({
            "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3000, "stream": True,
            "ignore_eos": True}), headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        r.read(200)
        conn.sock.close()
        conn.close()
        h = server.wait_idle(timeout=60)
        expect(fixture.pool_whole(h), f"pages leaked: {h}")
        expect(complete(max_tokens=2).usage.completion_tokens >= 1, "no service after a disconnect")

    @probe
    def malformed_bodies():
        for label, body, headers in [
                ("bad JSON", b"{not json", None),
                ("truncated JSON", b'{"prompt": "a"', None),
                ("JSON array", b"[1, 2]", None),
                ("empty body", b"", None),
                ("invalid UTF-8", b'{"prompt": "\xff\xfe"}', None),
                ("lone surrogate", b'{"prompt": "\\ud800"}', None),
                ("form content type", b"prompt=hi", {"Content-Type": "application/x-www-form-urlencoded"}),
                ("deep nesting", b"[" * 100000 + b"]" * 100000, None)]:
            status, body = raw.json("POST", "/v1/completions", body, headers)
            expect(status == 400, f"{label}: status {status}")
            raw_error(status, body, label)
        # JSON sent as text/plain: read as JSON (vLLM's FastAPI does the same for a JSON body).
        status, body = raw.json("POST", "/v1/completions", {"prompt": "In", "max_tokens": 1},
                                {"Content-Type": "text/plain"})
        expect(status == 200, f"text/plain JSON: {status} {body}")
        status, headers, data = raw.request("POST", "/v1/completions", b" " * (65 * 1024 * 1024))
        expect(status == 413, f"a body over 64 MiB: {status}")
        try:
            raw_error(status, json.loads(data), "a body over 64 MiB")
            expect("64 MiB" in json.loads(data)["error"]["message"], f"413 does not name the limit: {data[:200]!r}")
        except ValueError:
            defect(f"a body over 64 MiB: not JSON: {data[:100]!r}")

    @probe
    def routes():
        for method, path, want in [("GET", "/v1/nothing", 404), ("POST", "/v1/embeddings", 404),
                                   ("GET", "/v1/completions", 405), ("GET", "/v1/chat/completions", 405),
                                   ("DELETE", "/v1/models", 405), ("GET", "/v1/models/gpt-4", 404)]:
            status, body = raw.json(method, path)
            expect(status == want, f"{method} {path}: {status}, wanted {want}")
            raw_error(status, body, f"{method} {path}")
        status, headers, _ = raw.request("GET", "/v1/completions")
        expect(headers.get("allow") == "POST", f"405 without Allow: POST: {headers}")
        status, body = raw.json("GET", "/v1/models")
        expect(status == 200 and body["object"] == "list" and body["data"][0]["id"] == "tiny" and
               body["data"][0]["max_model_len"] == context, f"/v1/models {body}")
        m = client.models.retrieve("tiny")
        expect(m.id == "tiny", f"models.retrieve {m}")
        status, body = raw.json("GET", "/health")
        expect(status == 200 and body["status"] == "ok", f"/health {status} {body}")

    only = set(filter(None, args.only.split(",")))
    for fn in probes:
        if only and fn.__name__ not in only:
            continue
        before = len(defects)
        t0 = time.time()
        try:
            fn()
        except Exception:
            defect(f"{fn.__name__} raised:\n{traceback.format_exc()}")
        print(f"{'ok    ' if len(defects) == before else 'DEFECT'} {fn.__name__} ({time.time() - t0:.1f}s)",
              flush=True)
    alive = server.proc.poll() is None
    if not alive:
        defect(f"the server died (exit {server.proc.returncode})")
    else:
        server.proc.kill()
        server.proc.wait()
    print(f"{len(defects)} defect(s)")
    if defects:
        print("server log tail:\n" + open(os.path.join(scratch, "serve.log"), errors="replace").read()[-3000:])
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    return 1 if defects else 0


if __name__ == "__main__":
    sys.exit(main())
