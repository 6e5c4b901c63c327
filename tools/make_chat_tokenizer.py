#!/usr/bin/env python3
"""Writes recipes/data/kjv-chat-tokenizer: the KJV tokenizer (recipes/data/kjv-tokenizer) with its two
unused Gemma 3 turn markers (<start_of_turn>, <end_of_turn>, ids 4 and 5) renamed to Gemma 4's
(<|turn>, <turn|>), so chat data in the Gemma 4 template tokenises with the same 2048 ids. The RL
example trains on chat data with it. Run from the repository root."""
import json
import os
import shutil

SRC, DST = "recipes/data/kjv-tokenizer", "recipes/data/kjv-chat-tokenizer"
RENAME = {"<start_of_turn>": "<|turn>", "<end_of_turn>": "<turn|>"}

tok = json.load(open(os.path.join(SRC, "tokenizer.json"), encoding="utf-8"))
for added in tok["added_tokens"]:
    added["content"] = RENAME.get(added["content"], added["content"])
vocab = tok["model"]["vocab"]
for old, new in RENAME.items():
    if old in vocab:
        vocab[new] = vocab.pop(old)
os.makedirs(DST, exist_ok=True)
with open(os.path.join(DST, "tokenizer.json"), "w", encoding="utf-8") as f:
    json.dump(tok, f, ensure_ascii=False)
shutil.copy(os.path.join(SRC, "tokenizer_config.json"), os.path.join(DST, "tokenizer_config.json"))
print("wrote", DST)
