"""Trains the tokenizer of g4's embedded default model: a Gemma-style BPE on the King James Bible.

Usage: python3 tools/make_default_tokenizer.py [OUTDIR]   (default recipes/data/kjv-tokenizer)
Needs the PyPI `tokenizers` package and the Debian packages bible-kjv-text (the text) and
bible-kjv (the `bible` program, the only reader of that package's compressed format).

The result has the shape of a Gemma tokenizer.json, so g4 reads it with the same code as a real
checkpoint's: normalizer Replace " " -> "▁", no pre-tokenizer, BPE with byte fallback (the 256
`<0xNN>` tokens are ordinary vocabulary entries), decoder Replace/ByteFallback/Fuse, and the
special tokens at Gemma's ids: <pad>=0, <eos>=1, <bos>=2, <unk>=3, then the chat markers.
Training is deterministic: the same text gives the same file.
"""
import json
import os
import re
import subprocess
import sys

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

VOCAB_SIZE = 2048
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
BYTES = [f"<0x{b:02X}>" for b in range(256)]


def kjv_lines():
    """Every verse of the KJV, one line each, with book/chapter headings ("Genesis 1")."""
    text = subprocess.run(["bible", "-l100000", "Genesis 1:1-Revelation 22:21"], check=True,
                          capture_output=True, text=True).stdout
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) < 30000:
        sys.exit(f"`bible` printed only {len(lines)} lines; is bible-kjv-text installed?")
    return lines


def train(lines):
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    # Training only: merges stay inside "▁word" units and never touch digits (Gemma splits
    # digits too). Encoding needs no pre-tokenizer since no learned merge can cross those bounds.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("▁", "merged_with_next"),
        pre_tokenizers.Digits(individual_digits=True),
    ])
    # The byte tokens are passed as "special" only so that they get ids 6..261 and stay in the
    # vocabulary whatever the corpus; they are turned back into plain tokens below.
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIALS + BYTES, show_progress=False)
    tok.train_from_iterator(lines, trainer=trainer)
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B",
                                                       special_tokens=[("<bos>", 2)])
    doc = json.loads(tok.to_str())
    doc["added_tokens"] = [t for t in doc["added_tokens"] if t["content"] in SPECIALS]
    return doc


def write_json(doc, path):
    """JSON with one vocab entry or merge per line: small, and readable in a diff."""
    text = json.dumps(doc, ensure_ascii=False, indent=1)
    string = r'"(?:[^"\\]|\\.)*"'
    text = re.sub(rf"\[\n\s*({string}),\n\s*({string})\n\s*\]", r"[\1, \2]", text)  # merge pairs
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "recipes/data/kjv-tokenizer"
    doc = train(kjv_lines())
    vocab = doc["model"]["vocab"]
    assert [vocab[s] for s in SPECIALS] == list(range(len(SPECIALS))), "special tokens moved"
    assert len(vocab) == VOCAB_SIZE, len(vocab)
    os.makedirs(out, exist_ok=True)
    write_json(doc, os.path.join(out, "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<bos>", "eos_token": "<eos>",
              "pad_token": "<pad>", "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False}
    write_json(config, os.path.join(out, "tokenizer_config.json"))
    # Loading the written file back must give the same encoding as the trained object.
    check = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
    sample = "In the beginning God created the heaven and the earth. ✝ 123"
    print(out, len(vocab), "tokens:", check.encode(sample, add_special_tokens=False).tokens)


if __name__ == "__main__":
    main()
