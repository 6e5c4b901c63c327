"""Expected token ids for g4's tokenizer tests, computed by Hugging Face `tokenizers` and `sentencepiece`.

Usage: python3 tools/make_tokenizer_references.py   (from the repository root; needs the PyPI
packages tokenizers and sentencepiece, and recipes/data/kjv-tokenizer from make_default_tokenizer.py)

Writes under tests/data/tokenizers/:
  varied.json  a tokenizer.json that differs from the KJV one wherever Gemma-style files may:
               Prepend + Replace normalizer, Split pre-tokenizer (MergedWithNext), "a b" string
               merges with a "#version" line, ignore_merges, added tokens outside the model vocab
               (special and not, "normalized" true and false), a byte token missing (so emoji
               fall back to <unk>, fused), Strip decoder.
  plain.json   no normalizer, a Sequence of Split pre-tokenizers (the other four behaviours), no
               byte fallback (unknown characters become <unk>, not fused), no decoder.
  ranks.json   hand-written vocab and merges where merge order and tie-breaking decide the result.
  sp.model     a SentencePiece BPE model with Gemma's settings (byte fallback, no dummy prefix,
               split digits, identity normalization, <start_of_turn>/<end_of_turn> user symbols).
  references.json  per tokenizer: ids of every test text (TEXTS, or its own "texts"), the decoded strings (with and without
               special tokens), decodings of hand-picked id lists, and a few lookups.
"""
import io
import json
import os
import random
import re
import sys

import sentencepiece as spm
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_default_tokenizer import BYTES, kjv_lines, write_json  # noqa: E402

OUT = "tests/data/tokenizers"
KJV = "recipes/data/kjv-tokenizer/tokenizer.json"

TEXTS = [
    "In the beginning God created the heaven and the earth.",
    "And God said, Let there be light: and there was light. And God saw the light, that it was good: "
    "and God divided the light from the darkness.",
    "Hello, world! How's it going? (fine; thanks) -- ok... [x] {y} #1 @me 50% a&b <tag/>",
    "multiple   spaces  here",
    "   leading and trailing spaces   ",
    " ",
    "",
    "line one\nline two\n\nline four\n",
    "\r\n windows\r\nline",
    "tab\tseparated\t\tvalues\t",
    "digits 0123456789 and 3.14159, 1,000,000 in 1611",
    "Café naïve résumé Ångström façade ÉÈÊ",
    "中文字符测试，日本語のテキスト、한국어",
    "emoji 😀👍🏽 and ❤️ and 🇫🇷!",
    "mixed😀é",
    "x😀Åy😀😀z",
    "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
    "<bos>text with <eos> inside<pad>",
    "<start_of_turn><end_of_turn><start_of_turn",
    "<0x41> literal byte token text",
    "▁already has the marker ▁▁ x",
    "the Lord God of Israel, Lord God",
    "[[link]] and [[",
    "nul\x00byte and bell\x07",
    "UPPER lower MiXeD",
]


def random_text(n, seed):
    """Seeded jumble of the pieces above: runs of spaces, specials glued to words, bytes, <unk>s."""
    pool = list("abcdeghilnorst ABG  \n\t,.:;'é中😀Å") + ["▁", "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn",
                                                       "Lord God", "[[", "the ", "and ", "God"]
    rng = random.Random(seed)
    return "".join(rng.choice(pool) for _ in range(n))


TEXTS += [random_text(400, seed) for seed in range(3)]


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def train_tokenizer(corpus, vocab_size, specials, model, normalizer, pre_tokenizer):
    """BPE trained on `corpus`. Byte tokens in `specials` become plain vocabulary entries."""
    tok = Tokenizer(model)
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                        show_progress=False))
    doc = json.loads(tok.to_str())
    doc["added_tokens"] = [t for t in doc["added_tokens"] if t["content"] not in BYTES]
    return doc


def make_varied(corpus):
    bytes_kept = [b for b in BYTES if b != "<0xF0>"]  # 4-byte characters (emoji) cannot fall back
    doc = train_tokenizer(
        corpus, 700, ["<unk>"] + bytes_kept, models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True),
        normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]),
        pre_tokenizers.Split("▁", "merged_with_next"))
    tok = Tokenizer.from_str(json.dumps(doc))
    tok.add_special_tokens(["<bos>", "<eos>", "<pad>", "<start_of_turn>", "<end_of_turn>"])
    tok.add_tokens([AddedToken("Lord God", normalized=True), AddedToken("[[", normalized=False)])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    doc = json.loads(tok.to_str())
    doc["model"]["ignore_merges"] = True
    doc["model"]["merges"] = ["#version: 0.2"] + [f"{a} {b}" for a, b in doc["model"]["merges"]]
    return doc


def make_plain(corpus):
    return train_tokenizer(
        corpus, 300, ["<pad>", "<eos>", "<bos>", "<unk>"], models.BPE(unk_token="<unk>", fuse_unk=False),
        None,
        pre_tokenizers.Sequence([
            pre_tokenizers.Split("\t", "removed"),
            pre_tokenizers.Split("\n", "contiguous"),
            pre_tokenizers.Split(",", "isolated"),
            pre_tokenizers.Split(" ", "merged_with_previous"),
        ]))


# Hand-written merges where the order matters: (b c) outranks (a b), so "abc" is a|bc then abc;
# "aaaa" merges leftmost first (aa|a|a, then aa|aa, since (a a) outranks (aa a)).
RANK_TEXTS = ["abc", "aaaa", "aaa", "abab", "cabc", "bcab", "aabcc", "dab", "ddab", "a b"]


def make_ranks():
    vocab = {t: i for i, t in enumerate(["<unk>", "a", "b", "c", "aa", "ab", "bc", "abc", "aaa", "cab"])}
    merges = [("b", "c"), ("a", "a"), ("a", "b"), ("a", "bc"), ("aa", "a"), ("c", "ab")]
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", fuse_unk=True))
    return json.loads(tok.to_str())


def make_sentencepiece(corpus):
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=model, vocab_size=600, model_type="bpe",
        byte_fallback=True, add_dummy_prefix=False, remove_extra_whitespaces=False,
        normalization_rule_name="identity", split_digits=True, character_coverage=0.9995,
        user_defined_symbols=["<start_of_turn>", "<end_of_turn>"],
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
        unk_piece="<unk>", num_threads=1, minloglevel=2)
    return model.getvalue()


def sample_ids(n):
    """Every 7th id and the last 8 (where added tokens are)."""
    return sorted(set(range(0, n, 7)) | set(range(max(0, n - 8), n)))


def hf_reference(path, decode_cases, texts=TEXTS):
    tok = Tokenizer.from_file(path)
    encoded = [tok.encode(t, add_special_tokens=False).ids for t in texts]
    return {
        "encode": encoded,
        "decode": [tok.decode(ids, skip_special_tokens=False) for ids in encoded],
        "decode_skip_special": [tok.decode(ids, skip_special_tokens=True) for ids in encoded],
        "decode_cases": [{"ids": ids, "text": tok.decode(ids, skip_special_tokens=False),
                          "text_skip_special": tok.decode(ids, skip_special_tokens=True)} for ids in decode_cases(tok)],
        "vocab_size": max(tok.get_vocab(with_added_tokens=True).values()) + 1,
        "token_to_id": {t: tok.token_to_id(t) for t in ["<bos>", "<eos>", "<pad>", "<unk>", "<start_of_turn>",
                                                         "<0x41>", "e", "Lord God", "▁Lord▁God", "not-a-token"]},
        "id_to_token": {i: tok.id_to_token(i) for i in sample_ids(tok.get_vocab_size())},
    }


class SentencePieceWithControls:
    """sentencepiece plus g4's rule for control symbols (see src/io/sentencepiece_tokenizer.h):
    their strings in the text become their ids, and decode writes them unless skipped."""

    def __init__(self, model_bytes):
        self.sp = spm.SentencePieceProcessor(model_proto=model_bytes)
        self.controls = sorted(((self.sp.id_to_piece(i), i) for i in range(self.sp.get_piece_size())
                                if self.sp.is_control(i)), key=lambda c: -len(c[0]))

    def encode(self, text):
        ids, start, pos = [], 0, 0
        while pos < len(text):
            hit = next((c for c in self.controls if text.startswith(c[0], pos)), None)
            if hit is None:
                pos += 1
                continue
            ids += self.sp.encode(text[start:pos]) + [hit[1]]
            pos = start = pos + len(hit[0])
        return ids + self.sp.encode(text[start:])

    def decode(self, ids, skip_special):
        text, run = "", []
        for i in ids:
            if not self.sp.is_control(i):
                run.append(i)
            elif not skip_special:
                text += self.sp.decode(run) + self.sp.id_to_piece(i)
                run = []
        return text + self.sp.decode(run)


def sp_reference(model_bytes):
    sp = SentencePieceWithControls(model_bytes)
    encoded = [sp.encode(t) for t in TEXTS]
    byte = sp.sp.piece_to_id
    cases = [[byte("<0xF0>"), byte("<0x9F>"), byte("<0x98>")],            # a cut-off emoji
             [2, byte("<0xC3>"), byte("<0xA9>"), 1, 0, byte("<0xC3>")],    # bytes around controls
             [3, 3, byte("<start_of_turn>"), 2]]
    return {
        "encode": encoded,
        "decode": [sp.decode(ids, False) for ids in encoded],
        "decode_skip_special": [sp.decode(ids, True) for ids in encoded],
        "decode_cases": [{"ids": ids, "text": sp.decode(ids, False), "text_skip_special": sp.decode(ids, True)}
                         for ids in cases],
        "vocab_size": sp.sp.get_piece_size(),
        "token_to_id": {t: (sp.sp.piece_to_id(t) if sp.sp.piece_to_id(t) != sp.sp.unk_id() or t == "<unk>" else None)
                        for t in ["<bos>", "<eos>", "<pad>", "<unk>", "<start_of_turn>", "<0x41>", "e", "not-a-token"]},
        "id_to_token": {i: sp.sp.id_to_piece(i) for i in sample_ids(sp.sp.get_piece_size())},
    }


def decode_cases(tok):
    """Id lists that encoding never gives but generation can: cut-off and stray byte tokens,
    specials in odd places, tokens that start with "▁" first."""
    def ids(*tokens):
        return [tok.token_to_id(t) for t in tokens if tok.token_to_id(t) is not None]
    some = sorted(tok.get_vocab().values())[-5:]  # the last merges learned
    return [
        ids("<0xF0>", "<0x9F>", "<0x98>"),
        ids("<0xF0>", "<0x9F>", "<0x98>", "<0x80>", "e"),
        ids("<0xC3>", "e", "<0xA9>"),
        ids("<bos>", "▁", "e", "<start_of_turn>", "<0xC3>", "<0xA9>", "<end_of_turn>", "<eos>"),
        ids("▁", "▁", "e", " ", "▁"),
        ids("<unk>", "<unk>", "e"),
        some,
    ]


def main():
    # Not the test texts: their CJK and emoji must stay out of the vocabularies (byte fallback, <unk>).
    corpus = kjv_lines()[:6000] + ["Ça va? Très bien, naïve café!"] * 20
    os.makedirs(OUT, exist_ok=True)
    write_json(make_varied(corpus), f"{OUT}/varied.json")
    write_json(make_plain(corpus), f"{OUT}/plain.json")
    write_json(make_ranks(), f"{OUT}/ranks.json")
    sp_model = make_sentencepiece(corpus)
    with open(f"{OUT}/sp.model", "wb") as f:
        f.write(sp_model)

    refs = {"texts": TEXTS, "tokenizers": {}}
    for name, path in [("kjv", KJV), ("varied", f"{OUT}/varied.json"), ("plain", f"{OUT}/plain.json")]:
        refs["tokenizers"][name] = {"file": path, **hf_reference(path, decode_cases)}
    refs["tokenizers"]["ranks"] = {"file": f"{OUT}/ranks.json", "texts": RANK_TEXTS,
                                   **hf_reference(f"{OUT}/ranks.json", lambda tok: [], RANK_TEXTS)}
    refs["tokenizers"]["sentencepiece"] = {"file": f"{OUT}/sp.model", **sp_reference(sp_model)}
    text = json.dumps(refs, ensure_ascii=False, indent=1)
    text = re.sub(r"\[(?:\s*-?\d+,?)+\s*\]", lambda m: json.dumps(json.loads(m.group(0))), text)  # id lists
    with open(f"{OUT}/references.json", "w", encoding="utf-8") as f:
        f.write(text + "\n")
    for name, r in refs["tokenizers"].items():
        print(f"{name}: {sum(map(len, r['encode']))} ids over {len(r['encode'])} texts, vocab {r['vocab_size']}")


if __name__ == "__main__":
    main()
