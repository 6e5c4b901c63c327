"""Reference renderings of Gemma 4's chat template, for tests/data_pipeline/chat_template_cases.json.

Usage:  python3 tools/render_chat_reference.py CHAT_TEMPLATE.jinja SOURCE > tests/data_pipeline/chat_template_cases.json

CHAT_TEMPLATE.jinja is a Gemma 4 chat template as published with the checkpoints (chat_template.jinja of
google/gemma-4-*-it on the Hugging Face Hub, or a faithful copy); SOURCE says where it came from and is
stored with the template's SHA-256. The stored file was made from llama.cpp's copy,
models/templates/gemma4.jinja, which has the 26B-A4B/31B generation prompt.

The template is rendered as transformers' apply_chat_template renders it (a jinja2 sandbox with
trim_blocks, lstrip_blocks and loopcontrols; bos_token "<bos>"), so the stored strings are what Hugging
Face produces, byte for byte. Needs only jinja2 (pip install jinja2).

The conversations cover what g4's render_chat supports: system, user and assistant text messages, a
leading system (or developer) message, trimming of surrounding whitespace (ASCII and Unicode), thought
channels stripped from assistant replies, non-ASCII text, and the generation prompt.
"""
import hashlib
import json
import sys

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

CASES = [
    ("single_user", [{"role": "user", "content": "Hello."}]),
    ("user_assistant", [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."}]),
    ("system_multi_turn", [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke."},
        {"role": "assistant", "content": "Why did the chicken cross the road?\nTo get to the other side."},
    ]),
    ("whitespace_trimmed", [
        {"role": "system", "content": "\n  Be brief.\t\n"},
        {"role": "user", "content": "  spaced  question \r\n"},
        {"role": "assistant", "content": "\n\nanswer with trailing newlines\n\n"},
    ]),
    ("unicode_whitespace_trimmed", [
        {"role": "user", "content": "\u00a0\u3000wide\u2003spaces\u2028"},
        {"role": "assistant", "content": "\u200bzero width is not whitespace\u200b\u0085"},
    ]),
    ("thinking_stripped", [
        {"role": "user", "content": "Add 3 and 4."},
        {"role": "assistant", "content": "<|channel>thought\nthree plus four<channel|>  7"},
        {"role": "user", "content": "Double it."},
        {"role": "assistant", "content": "A<|channel>x<channel|>B<channel|>C <|channel>unclosed"},
    ]),
    ("non_ascii", [
        {"role": "user", "content": "Grüße aus Köln — 你好 🌍"},
        {"role": "assistant", "content": "こんにちは! ✓"},
    ]),
    ("system_only", [{"role": "system", "content": "Only a system prompt."}]),
    ("developer_first", [{"role": "developer", "content": "Dev rules."}, {"role": "user", "content": "Go."}]),
    ("system_not_first", [
        {"role": "user", "content": "First."},
        {"role": "system", "content": "Late system note."},
        {"role": "assistant", "content": "Noted."},
    ]),
    ("empty_contents", [{"role": "user", "content": ""}, {"role": "assistant", "content": "   "}]),
    ("literal_markup_in_content", [
        {"role": "user", "content": "Say <turn|> and {{ braces }} and {% raw %}"},
        {"role": "assistant", "content": "<|turn>user\nnot a real turn"},
    ]),
]


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    template_text = open(sys.argv[1], encoding="utf-8").read()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.globals["raise_exception"] = raise_exception
    template = env.from_string(template_text)
    out = []
    for name, messages in CASES:
        for gen in (False, True):
            text = template.render(messages=messages, add_generation_prompt=gen, bos_token="<bos>", eos_token="<eos>")
            out.append({"name": name, "add_generation_prompt": gen, "messages": messages, "expected": text})
    doc = {"template_source": sys.argv[2],
           "template_sha256": hashlib.sha256(template_text.encode("utf-8")).hexdigest(),
           "cases": out}
    json.dump(doc, sys.stdout, ensure_ascii=False, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
