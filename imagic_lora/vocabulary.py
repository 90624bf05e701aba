"""Word-level CLIP tokenizers the project writes itself, and the unknown-word check.

A CLIP tokenizer is byte-level BPE: every word of a real CLIP vocabulary is reachable through
merges. For the small models the project builds (tests, the bundled shapes model) we write a
``vocab.json``/``merges.txt`` pair in which each known word merges into one token; the files
are stock CLIP format, loaded by ``CLIPTokenizer.from_pretrained``.

A byte-level tokenizer never drops a word: an unknown word silently falls apart into single
characters, which a model trained on a closed vocabulary has never seen, and the edit would be
meaningless. Such models therefore ship their vocabulary as ``vocabulary.json`` in the
tokenizer folder, and :func:`unknown_words` checks a prompt against it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from transformers import CLIPTokenizer

VOCABULARY_FILE = "vocabulary.json"


def _byte_alphabet() -> list[str]:
    """The 256 printable characters GPT-2/CLIP byte-level BPE uses for the 256 byte values."""
    visible = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars, extra = visible[:], 0
    for b in range(256):
        if b not in visible:
            visible.append(b)
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


def build_word_bpe(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges of a CLIP BPE in which each of ``words`` is a single token.

    Merges are added word by word, left to right; a merge learnt for one word can fire inside
    another and leave it split, so each word is re-tokenised with the merges so far and any
    leftover pieces are merged until the word is one token.
    """
    alphabet = _byte_alphabet()
    vocab_tokens = alphabet + [c + "</w>" for c in alphabet]
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}

    def bpe(word: str) -> list[str]:
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        while len(symbols) > 1:
            pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(symbols, symbols[1:]))]
            rank, i = min(pairs)
            if rank == 1 << 30:
                break
            symbols = symbols[:i] + [symbols[i] + symbols[i + 1]] + symbols[i + 2:]
        return symbols

    for word in sorted(set(w.lower() for w in words)):
        if not re.fullmatch(r"[a-z]+", word):
            raise ValueError(f"vocabulary words must be ASCII letters, got {word!r}")
        pieces = bpe(word)
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            vocab_tokens.append(pair[0] + pair[1])
            pieces = bpe(word)
    specials = ["<|startoftext|>", "<|endoftext|>"]
    ordered = list(dict.fromkeys(vocab_tokens + specials))
    return {token: i for i, token in enumerate(ordered)}, merges


def write_word_tokenizer(folder: str | Path, words: list[str], model_max_length: int = 77) -> CLIPTokenizer:
    """Write a CLIP tokenizer for ``words`` (plus ``vocabulary.json``) to ``folder``; return it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_word_bpe(words)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tokenizer = CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"),
                              model_max_length=model_max_length)
    tokenizer.save_pretrained(folder)
    (folder / VOCABULARY_FILE).write_text(json.dumps(sorted(set(w.lower() for w in words)), indent=0))
    for word in words:
        ids = tokenizer(word, add_special_tokens=False).input_ids
        if len(ids) != 1:  # the construction above guarantees this; a tokenizer change would not
            raise RuntimeError(f"word {word!r} tokenises into {len(ids)} tokens")
    return tokenizer


def read_vocabulary(tokenizer_folder: str | Path) -> set[str] | None:
    """The closed vocabulary shipped beside a tokenizer, or None for an open (real CLIP) one."""
    path = Path(tokenizer_folder) / VOCABULARY_FILE
    if not path.is_file():
        return None
    return set(json.loads(path.read_text()))


def unknown_words(tokenizer, text: str, vocabulary: set[str] | None = None) -> list[str]:
    """Words of ``text`` the model cannot know, in order of appearance.

    A word is unknown when the tokenizer maps part of it to the unknown token, or when a closed
    ``vocabulary`` is given and the word is not in it.
    """
    unknown = []
    unk_id = tokenizer.unk_token_id
    for word in re.findall(r"\w+|[^\w\s]+", text.lower()):
        ids = tokenizer(word, add_special_tokens=False).input_ids
        if (unk_id is not None and unk_id in ids) or (vocabulary is not None and word not in vocabulary):
            if word not in unknown:
                unknown.append(word)
    return unknown
