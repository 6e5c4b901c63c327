#!/usr/bin/env python3
"""`g4 serve` driven by the official `openai` Python client (and `g4 generate --prompts`).

Starts the server on 127.0.0.1 (any free port) on a tiny fixture model given a 256-token tokenizer
made here, then checks completions, chat, streaming, n > 1, logprobs, seeds, stop strings, bad
requests (and what tools/probe_serve.py found), concurrent requests, a client that disconnects
mid-stream (the pool is whole again), chat requests with a PNG data URL and with a video as JPEG
frames (vLLM's video_url) on a second server over tiny-mm-e (a vision and audio tower) and SIGTERM.

Run by CTest (label cpu): openai_client_test.py G4_BINARY TEST_DATA_DIR VENV_DIR. Without the
`openai` package (scripts/python_venv.sh makes VENV_DIR) it skips (exit 77) unless
G4_REQUIRE_OPENAI=1, as scripts/test.sh sets.
"""
import base64
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request

SKIP = 77


def import_openai(venv):
    try:
        import openai  # noqa: F401
        return
    except ImportError:
        pass
    python = os.path.join(venv, "bin", "python")
    # The venv's python is a link to the same interpreter: tell them apart by sys.prefix.
    if os.path.exists(python) and os.path.realpath(sys.prefix) != os.path.realpath(venv) \
            and not os.environ.get("G4_OPENAI_REEXEC"):
        os.environ["G4_OPENAI_REEXEC"] = "1"
        os.execv(python, [python] + sys.argv)
    msg = f"the openai package is not installed (run scripts/python_venv.sh to make {venv})"
    if os.environ.get("G4_REQUIRE_OPENAI") == "1":
        print("FAIL: " + msg)
        sys.exit(1)
    print("SKIP: " + msg)
    sys.exit(SKIP)


def make_model_dir(data, out):
    """tiny-dense-ple (vocab 256, context 4096, sliding window 8) with a tokenizer of exactly 256
    ids: the first 253 of tokenizers/plain.json, "\\n", and the chat template's <|turn> and <turn|>."""
    tok = json.load(open(os.path.join(data, "tokenizers", "plain.json")))
    model = tok["model"]
    specials = ["<|turn>", "<turn|>"]
    vocab = {t: i for t, i in model["vocab"].items() if i < 256 - len(specials) - 1}
    vocab["\n"] = 256 - len(specials) - 1
    for k, s in enumerate(specials):
        vocab[s] = 256 - len(specials) + k
        tok["added_tokens"].append({"id": vocab[s], "content": s, "single_word": False, "lstrip": False,
                                    "rstrip": False, "normalized": False, "special": True})
    model["vocab"] = vocab
    model["merges"] = [m for m in model["merges"] if m[0] in vocab and m[1] in vocab and m[0] + m[1] in vocab]
    os.makedirs(out)
    with open(os.path.join(out, "tokenizer.json"), "w") as f:
        json.dump(tok, f)
    for name in ["config.json", "model.safetensors"]:
        shutil.copy(os.path.join(data, "hf-gemma4", "tiny-dense-ple", name), out)


def make_mm_model_dir(data, out):
    """tiny-mm-e (vocab 320, image 304 between 300 and 301, video 306, vision patch 6) with the plain
    test tokenizer plus its media tokens, and a processor config for its patch size (videos: two
    frames sampled)."""
    tok = json.load(open(os.path.join(data, "tokenizers", "plain.json")))
    for i, s in [(300, "<|image>"), (301, "<image|>"), (302, "<|audio>"), (303, "<audio|>"), (304, "<|image|>"),
                 (305, "<|audio|>"), (306, "<|video|>")]:
        tok["added_tokens"].append({"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                                    "normalized": False, "special": True})
    os.makedirs(out)
    with open(os.path.join(out, "tokenizer.json"), "w") as f:
        json.dump(tok, f)
    with open(os.path.join(out, "processor_config.json"), "w") as f:
        json.dump({"image_processor": {"patch_size": 6, "pooling_kernel_size": 3, "max_soft_tokens": 70},
                   "video_processor": {"patch_size": 6, "pooling_kernel_size": 3, "max_soft_tokens": 70,
                                       "num_frames": 2}}, f)
    for name in ["config.json", "model.safetensors"]:
        shutil.copy(os.path.join(data, "hf-gemma4-mm", "tiny-mm-e", name), out)


class Server:
    def __init__(self, g4, model_dir, log_path, extra=()):
        self.log = open(log_path, "w")
        # Non-streamed replies go chunked after 1 s (the default is 5 s), so that the whole-reply
        # checks below need not run long; refusals and bad requests answer at once with their codes.
        self.proc = subprocess.Popen([g4, "serve", model_dir, "--port", "0", "--served-model-name", "tiny",
                                      "--max-running", "16", "--whole-reply-patience-ms", "1000", *extra],
                                     stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline()  # "g4 serve: tiny on http://127.0.0.1:PORT"
        if "http://" not in line:
            self.proc.kill()
            raise RuntimeError(f"g4 serve did not start: {line!r}; log: {open(log_path).read()}")
        self.base = line.strip().split(" on ")[1]

    def get(self, path):
        with urllib.request.urlopen(self.base + path, timeout=30) as r:
            return r.status, json.loads(r.read())

    def post_raw(self, path, body):
        req = urllib.request.Request(self.base + path, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def wait_idle(self, timeout=30):
        """Waits until no request is in flight; returns /health."""
        deadline = time.time() + timeout
        while True:
            _, h = self.get("/health")
            if h["requests"] == 0 and h["pool"]["running"] == 0 and h["pool"]["waiting"] == 0:
                return h
            if time.time() > deadline:
                raise AssertionError(f"still busy after {timeout}s: {h}")
            time.sleep(0.05)


def pool_whole(h):
    p = h["pool"]
    return p["full_free"] == p["full_pages"] and p["sliding_free"] == p["sliding_pages"]


def main():
    if len(sys.argv) != 4:
        print(__doc__)
        return 2
    g4, data, venv = sys.argv[1:4]
    # As the C++ tests (tests/support/test_paths.h): a relocated tree names its copies.
    g4 = os.environ.get("G4_BINARY") or g4
    data = os.environ.get("G4_TEST_DATA") or data
    import_openai(venv)
    import openai

    scratch = tempfile.mkdtemp(prefix="g4_openai_client_")
    model_dir = os.path.join(scratch, "tiny")
    make_model_dir(data, model_dir)
    server = Server(g4, model_dir, os.path.join(scratch, "serve.log"))
    client = openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0, timeout=60)
    checks, failures = [], []

    def check(fn):
        checks.append(fn)
        return fn

    prompt = "In the beginning God created"

    def complete(**kw):
        kw.setdefault("model", "tiny")
        kw.setdefault("prompt", prompt)
        return client.completions.create(**kw)

    def chat(**kw):
        kw.setdefault("model", "tiny")
        kw.setdefault("messages", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}])
        return client.chat.completions.create(**kw)

    @check
    def health_and_models():
        status, h = server.get("/health")
        assert status == 200 and h["status"] == "ok" and h["model"] == "tiny", h
        assert pool_whole(h), h
        models = client.models.list()
        assert [m.id for m in models.data] == ["tiny"], models

    @check
    def completion_text_and_ids():
        r = complete(max_tokens=8, temperature=0)
        assert r.object == "text_completion" and r.model == "tiny" and r.id.startswith("cmpl-"), r
        c = r.choices[0]
        assert c.index == 0 and isinstance(c.text, str) and c.finish_reason in ("stop", "length"), c
        assert r.usage.prompt_tokens > 1 and 1 <= r.usage.completion_tokens <= 8, r.usage
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
        again = complete(max_tokens=8, temperature=0)
        assert again.choices[0].text == c.text, "greedy output changed between two requests"
        ids = complete(prompt=[2, 40, 41, 42], max_tokens=4, temperature=0)
        assert ids.usage.prompt_tokens == 4, ids.usage
        one = complete(prompt=["In the"], max_tokens=2)  # a batch of one prompt is that prompt
        assert len(one.choices) == 1

    @check
    def chat_completion():
        r = chat(max_tokens=6, temperature=0)
        assert r.object == "chat.completion" and r.id.startswith("chatcmpl-"), r
        m = r.choices[0].message
        assert m.role == "assistant" and isinstance(m.content, str), m
        assert 1 <= r.usage.completion_tokens <= 6
        r2 = chat(max_completion_tokens=3, temperature=0)
        assert r2.usage.completion_tokens <= 3

    @check
    def streaming_completion_matches_whole():
        whole = complete(max_tokens=12, temperature=0, seed=1)
        chunks = list(complete(max_tokens=12, temperature=0, seed=1, stream=True,
                               stream_options={"include_usage": True}))
        text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
        assert text == whole.choices[0].text, (text, whole.choices[0].text)
        finals = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
        assert finals == [whole.choices[0].finish_reason], finals
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens

    @check
    def streaming_chat_matches_whole():
        whole = chat(max_tokens=10, temperature=0)
        chunks = list(chat(max_tokens=10, temperature=0, stream=True))
        assert chunks[0].choices[0].delta.role == "assistant", chunks[0]
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks)
        assert text == whole.choices[0].message.content, (text, whole.choices[0].message.content)
        assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
        assert all(ch.object == "chat.completion.chunk" for ch in chunks)

    @check
    def n_samples():
        r = complete(max_tokens=10, temperature=1.0, seed=3, n=3)
        assert sorted(c.index for c in r.choices) == [0, 1, 2], r.choices
        assert len({c.text for c in r.choices}) > 1, "three seeded samples came out identical"
        assert r.usage.prompt_tokens == complete(max_tokens=1).usage.prompt_tokens
        streamed = list(chat(max_tokens=5, n=2, seed=4, stream=True))
        assert {ch.choices[0].index for ch in streamed if ch.choices} == {0, 1}

    @check
    def seeds_reproduce():
        a = complete(max_tokens=16, temperature=1.0, seed=7).choices[0].text
        b = complete(max_tokens=16, temperature=1.0, seed=7).choices[0].text
        c = complete(max_tokens=16, temperature=1.0, seed=8).choices[0].text
        assert a == b, (a, b)
        assert a != c, "seeds 7 and 8 gave the same 16 tokens"

    @check
    def logprobs():
        r = complete(max_tokens=6, temperature=0, logprobs=3)
        lp = r.choices[0].logprobs
        assert len(lp.tokens) == len(lp.token_logprobs) == r.usage.completion_tokens
        for tok_lp, top in zip(lp.token_logprobs, lp.top_logprobs):
            assert tok_lp <= 0 and 1 <= len(top) <= 3, top
            assert abs(max(top.values()) - tok_lp) < 1e-5, "greedy token is not the most likely"
        c = chat(max_tokens=4, temperature=0, logprobs=True, top_logprobs=2)
        content = c.choices[0].logprobs.content
        assert len(content) == c.usage.completion_tokens and all(len(t.top_logprobs) == 2 for t in content)
        assert complete(max_tokens=2).choices[0].logprobs is None

    @check
    def stop_strings():
        base = complete(max_tokens=24, temperature=0).choices[0].text
        assert len(base) >= 6, base
        stop = base[3:6]
        first = base.index(stop)
        r = complete(max_tokens=24, temperature=0, stop=[stop, "never-appears"])
        assert r.choices[0].finish_reason == "stop" and r.choices[0].text == base[:first], (r.choices[0], stop, base)
        s = complete(max_tokens=24, temperature=0, stop=stop, stream=True)
        assert "".join(ch.choices[0].text for ch in s) == base[:first]

    @check
    def bad_requests():
        def expect(cls, param, fn, words=""):
            try:
                fn()
            except cls as e:
                err = e.body if isinstance(e.body, dict) and "message" in e.body else e.response.json()["error"]
                assert err.get("param") == param, (param, err)
                assert err["message"] and words in err["message"], err
                return
            raise AssertionError(f"expected {cls.__name__} for {param}")

        bad = openai.BadRequestError
        expect(bad, "temperature", lambda: complete(temperature="hot"), "temperature")
        expect(bad, "temperature", lambda: complete(temperature=-1))
        expect(bad, "n", lambda: complete(n=0))
        expect(bad, "top_p", lambda: complete(top_p=0))
        expect(bad, "max_tokens", lambda: complete(max_tokens=0))
        expect(bad, "max_tokens", lambda: complete(max_tokens=5000), "context")
        expect(bad, "prompt", lambda: complete(prompt=[5] * 4096), "context")
        expect(bad, "prompt", lambda: complete(prompt=["one", "two"]), "batch")
        expect(bad, "prompt", lambda: complete(prompt=[7, 300]), "vocabulary")
        expect(bad, "logprobs", lambda: complete(logprobs=50))
        expect(bad, "messages", lambda: chat(messages=[{"role": "wizard", "content": "hi"}]), "role")
        expect(bad, "messages", lambda: chat(messages=[]))
        expect(bad, "top_logprobs", lambda: chat(top_logprobs=2))
        expect(bad, "stop", lambda: complete(stop=[""]))
        expect(openai.NotFoundError, "model", lambda: complete(model="gpt-4"), "gpt-4")
        # Refused by the engine (n above --max-running): still a 400, also for a stream.
        expect(bad, None, lambda: complete(n=20), "max_running")
        expect(bad, None, lambda: list(complete(n=20, stream=True)), "max_running")
        status, body = server.post_raw("/v1/completions", b"{not json")
        assert status == 400 and body["error"]["type"] == "invalid_request_error", body
        status, body = server.post_raw("/v1/embeddings", b"{}")
        assert status == 404 and "error" in body, body
        assert server.get("/health")[1]["status"] == "ok"

    @check
    def probed_edges():
        """Regressions of what tools/probe_serve.py found: vLLM's extensions and tool fields that change the
        answer are refused by name (they were ignored), return_tokens_as_token_ids names the ids, and a route
        asked with another method is a 405 with Allow."""
        for key, value in [("min_tokens", 3), ("include_stop_str_in_output", True), ("guided_json", {})]:
            try:
                complete(max_tokens=2, extra_body={key: value})
                raise AssertionError(f"{key} was accepted")
            except openai.BadRequestError as e:
                assert e.body["param"] == key and "not supported" in e.body["message"], e.body
        for key, value in [("tool_choice", "required"), ("chat_template_kwargs", {"enable_thinking": True}),
                           ("continue_final_message", True)]:
            try:
                chat(max_tokens=2, extra_body={key: value})
                raise AssertionError(f"chat {key} was accepted")
            except openai.BadRequestError as e:
                assert e.body["param"] == key and "not supported" in e.body["message"], e.body
        chat(max_tokens=1, tool_choice="none", extra_body={"chat_template_kwargs": {"enable_thinking": False}})
        r = chat(max_tokens=3, temperature=0, logprobs=True, top_logprobs=1,
                 extra_body={"return_tokens_as_token_ids": True})
        plain = chat(max_tokens=3, temperature=0, logprobs=True, top_logprobs=1)
        assert r.choices[0].message.content == plain.choices[0].message.content
        ids = [t.token for t in r.choices[0].logprobs.content]
        assert ids and all(t.startswith("token_id:") and t[9:].isdigit() for t in ids), ids
        host, port = server.base.split("//")[1].split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("GET", "/v1/chat/completions")
        resp = conn.getresponse()
        body = json.loads(resp.read())
        conn.close()
        assert resp.status == 405 and resp.getheader("Allow") == "POST" and "takes POST" in body["error"]["message"], \
            (resp.status, resp.getheaders(), body)

    @check
    def concurrent_requests():
        """Requests of different lengths, streamed and whole, at once: each gets its own answer."""
        results, errors = {}, []

        def one(k):
            try:
                kw = dict(prompt=[2] + list(range(10, 10 + 3 * k)), max_tokens=4 + k, temperature=0,
                          extra_body={"ignore_eos": True})
                if k % 2:
                    chunks = list(complete(stream=True, stream_options={"include_usage": True}, **kw))
                    results[k] = chunks[-1].usage.completion_tokens
                else:
                    results[k] = complete(**kw).usage.completion_tokens
            except Exception as e:  # reported below, with the request it belongs to
                errors.append((k, repr(e)))

        threads = [threading.Thread(target=one, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors
        assert results == {k: 4 + k for k in range(8)}, results
        assert pool_whole(server.wait_idle())

    @check
    def disconnect_mid_stream():
        server.wait_idle()
        steps_before = server.get("/health")[1]["steps"]
        stream = complete(max_tokens=3000, temperature=1.0, seed=9, stream=True, extra_body={"ignore_eos": True})
        got = 0
        for chunk in stream:
            got += 1
            if got == 3:
                break
        busy = server.get("/health")[1]
        assert busy["requests"] == 1 and not pool_whole(busy), f"the stream holds no pages: {busy}"
        stream.close()  # the client goes away mid-stream
        h = server.wait_idle(timeout=60)
        assert pool_whole(h), f"pages leaked after the disconnect: {h}"
        assert h["steps"] - steps_before < 2500, f"the request ran on after the disconnect: {h}"
        r = complete(max_tokens=4, temperature=0)  # and the server still serves
        assert r.usage.completion_tokens >= 1
        log = open(os.path.join(scratch, "serve.log")).read()
        assert "client disconnected" in log, log[-2000:]

    @check
    def disconnect_whole_reply():
        # A non-streamed request whose client leaves once the reply has started (the status line
        # and keep-alive spaces): the request is cancelled and the pool is whole again.
        server.wait_idle()
        host, port = server.base.split("//")[1].split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        body = json.dumps({"model": "tiny", "prompt": prompt, "max_tokens": 4000, "temperature": 1.0, "seed": 3,
                           "ignore_eos": True})
        conn.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
        r = conn.getresponse()  # after the patience: 200, chunked
        assert r.status == 200 and r.getheader("Transfer-Encoding") == "chunked", (r.status, r.getheaders())
        assert r.read(1) == b" "
        busy = server.get("/health")[1]
        assert busy["requests"] == 1 and not pool_whole(busy), f"the request holds no pages: {busy}"
        conn.close()
        h = server.wait_idle(timeout=60)
        assert pool_whole(h), f"pages leaked after the disconnect: {h}"
        log = open(os.path.join(scratch, "serve.log")).read()
        assert "client disconnected before the whole reply" in log, log[-2000:]

    @check
    def slow_whole_reply_is_still_json():
        # A reply that outlives the patience (2000 tokens take about 3 s on CI's CPU) is chunked and
        # still parses as a completion: its leading spaces are JSON whitespace.
        host, port = server.base.split("//")[1].split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        body = json.dumps({"model": "tiny", "prompt": prompt, "max_tokens": 2000, "temperature": 0,
                           "ignore_eos": True})
        conn.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        assert r.status == 200, r.status
        raw = r.read()
        conn.close()
        reply = json.loads(raw)
        assert reply["object"] == "text_completion" and reply["usage"]["completion_tokens"] == 2000, reply["usage"]
        assert reply["choices"][0]["text"] == complete(max_tokens=2000, temperature=0,
                                                       extra_body={"ignore_eos": True}).choices[0].text
        assert pool_whole(server.wait_idle())

    @check
    def generate_prompts_file():
        src = os.path.join(scratch, "prompts.jsonl")
        out = os.path.join(scratch, "out.jsonl")
        with open(src, "w") as f:
            f.write(json.dumps({"prompt": prompt, "max_tokens": 5}) + "\n")
            f.write(json.dumps({"prompt_ids": [2, 50, 60], "max_tokens": 3, "logprobs": 2}) + "\n\n")
            f.write(json.dumps({"prompt": "And", "n": 2, "temperature": 1.0, "seed": 5, "stop": ["zz"]}) + "\n")
        run = subprocess.run([g4, "generate", model_dir, "--prompts", src, "--out", out, "--max-new-tokens", "4"],
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        lines = [json.loads(x) for x in open(out)]
        assert [(x["index"], x.get("sample")) for x in lines] == [(0, None), (1, None), (2, 0), (2, 1)], lines
        assert lines[0]["text"] == complete(max_tokens=5, temperature=0).choices[0].text, "generate and serve differ"
        assert len(lines[1]["token_ids"]) <= 3 and len(lines[1]["top_logprobs"][0]) == 2 and lines[0]["logprobs"] is None
        assert all(x["prompt_tokens"] > 0 and "total_s" in x["timings"] and x["finish_reason"] for x in lines)
        chat_src = os.path.join(scratch, "chat.jsonl")
        with open(chat_src, "w") as f:
            f.write(json.dumps({"messages": [{"role": "user", "content": "Hello"}]}) + "\n")
        run = subprocess.run([g4, "generate", model_dir, "--prompts", chat_src, "--out", out, "--chat"],
                             capture_output=True, text=True, timeout=300)
        assert run.returncode != 0 and "--overwrite" in run.stderr, run.stderr
        run = subprocess.run([g4, "generate", model_dir, "--prompts", chat_src, "--out", out, "--chat", "--overwrite"],
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        assert len(open(out).readlines()) == 1
        with open(src, "a") as f:
            f.write(json.dumps({"prompt": "x", "top_k": "five"}) + "\n")
        run = subprocess.run([g4, "generate", model_dir, "--prompts", src, "--out", out + "2"],
                             capture_output=True, text=True, timeout=300)
        assert run.returncode != 0 and f"{src}:5:" in run.stderr and "top_k" in run.stderr, run.stderr
        assert not os.path.exists(out + "2")

    @check
    def image_and_video_chat_on_a_multimodal_model():
        mm_dir = os.path.join(scratch, "tiny-mm")
        make_mm_model_dir(data, mm_dir)
        mm = Server(g4, mm_dir, os.path.join(scratch, "serve-mm.log"))
        try:
            mm_client = openai.OpenAI(base_url=mm.base + "/v1", api_key="unused", max_retries=0, timeout=60)
            png = open(os.path.join(data, "hf-gemma4-mm", "processor", "rgba_97x150.png"), "rb").read()
            url = "data:image/png;base64," + base64.b64encode(png).decode()

            def ask(image_url):
                return mm_client.chat.completions.create(
                    model="tiny", max_tokens=4, temperature=0,
                    messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}},
                                                           {"type": "text", "text": "What is this?"}]}])
            r = ask(url)
            assert r.usage.prompt_tokens > 60, r.usage  # the image's 60 soft tokens and the text
            assert 1 <= r.usage.completion_tokens <= 4 and isinstance(r.choices[0].message.content, str), r
            assert ask(url).choices[0].message.content == r.choices[0].message.content, "greedy output changed"
            try:
                ask("https://example.com/cat.png")
                raise AssertionError("an http URL was accepted")
            except openai.BadRequestError as e:
                assert "only data URLs" in str(e) and e.body["param"] == "messages", e.body

            # A video as its frames, vLLM's video_url form (the client passes the part through as
            # a dict; "fps" is g4's): the fixture JPEG three times at 1 fps, two frames sampled, 68
            # soft tokens each.
            jpeg = base64.b64encode(open(os.path.join(data, "hf-gemma4-mm", "processor", "scene_1200x280.jpg"),
                                         "rb").read()).decode()

            def ask_video(video_url):
                return mm_client.chat.completions.create(
                    model="tiny", max_tokens=4, temperature=0,
                    messages=[{"role": "user", "content": [{"type": "video_url", "video_url": video_url},
                                                           {"type": "text", "text": "What happens?"}]}])
            v = ask_video({"url": "data:video/jpeg;base64," + ",".join([jpeg] * 3), "fps": 1})
            assert v.usage.prompt_tokens > 2 * 68, v.usage
            assert 1 <= v.usage.completion_tokens <= 4 and isinstance(v.choices[0].message.content, str), v
            again = ask_video({"url": "data:video/jpeg;base64," + ",".join([jpeg] * 3), "fps": 1})
            assert again.choices[0].message.content == v.choices[0].message.content, "greedy output changed"
            for url, words in [("data:video/mp4;base64,AAAAIGZ0eXBpc29t", "encoded video ('video/mp4') is not decoded"),
                               ("data:video/jpeg;base64," + jpeg + ",bm90IGFuIGltYWdl," + jpeg,
                                "video_url.url frame 1 is neither a JPEG nor a PNG")]:
                try:
                    ask_video({"url": url})
                    raise AssertionError(f"a bad video was accepted: {words}")
                except openai.BadRequestError as e:
                    assert words in str(e) and e.body["param"] == "messages", e.body
            assert pool_whole(mm.wait_idle()), "pages left in the pool"
        finally:
            mm.proc.kill()
            mm.proc.wait()

    @check
    def sigterm_stops_cleanly():
        def long_stream():
            try:
                for _ in complete(max_tokens=3000, stream=True, extra_body={"ignore_eos": True}):
                    pass
            except Exception:
                pass
        t = threading.Thread(target=long_stream)
        t.start()
        time.sleep(0.5)
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(timeout=30)
        t.join(timeout=30)
        assert code == 0, f"g4 serve exited with {code}"
        assert "shutting down" in open(os.path.join(scratch, "serve.log")).read()

    for fn in checks:
        t0 = time.time()
        try:
            fn()
            print(f"ok   {fn.__name__} ({time.time() - t0:.1f}s)")
        except Exception:
            failures.append(fn.__name__)
            print(f"FAIL {fn.__name__}\n{traceback.format_exc()}")
    if server.proc.poll() is None:
        server.proc.kill()
        server.proc.wait()
    print(f"{len(checks) - len(failures)} of {len(checks)} checks passed")
    if failures:
        print("server log:\n" + open(os.path.join(scratch, "serve.log")).read()[-4000:])
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
