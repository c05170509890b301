"""Write the small CLIP BPE tokenizer files that sd_ovopt ships (no download needed).

The vocabulary has CLIP's 512 byte-level symbols, CLIP's two special tokens, and whole-word merges for
a short list of words used by our prompts, so those words become single tokens. Any other text still
tokenizes (byte by byte). Run from the repository root:

    python scripts/make_tokenizer.py
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "sd_ovopt" / "testing" / "data" / "tokenizer"

WORDS = [
    "a",
    "an",
    "the",
    "of",
    "on",
    "in",
    "at",
    "with",
    "and",
    "photo",
    "picture",
    "drawing",
    "painting",
    "image",
    "red",
    "green",
    "blue",
    "yellow",
    "orange",
    "purple",
    "pink",
    "white",
    "black",
    "gray",
    "grey",
    "brown",
    "cyan",
    "magenta",
    "circle",
    "square",
    "triangle",
    "star",
    "ring",
    "cross",
    "heart",
    "diamond",
    "hexagon",
    "small",
    "medium",
    "large",
    "big",
    "tiny",
    "top",
    "bottom",
    "left",
    "right",
    "center",
    "middle",
    "corner",
    "background",
    "foreground",
    "cat",
    "dog",
    "astronaut",
    "horse",
    "mountain",
    "mountains",
    "lake",
    "sky",
    "sunset",
    "city",
    "house",
    "tree",
    "forest",
    "sea",
    "beach",
    "riding",
    "portrait",
    "landscape",
    "detailed",
    "realistic",
    "high",
    "quality",
]


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte → printable-character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """The pieces byte-pair encoding with ``ranks`` splits ``word`` into (CLIP's algorithm)."""
    parts = [*word[:-1], word[-1] + "</w>"]
    while len(parts) > 1:
        pairs = [(ranks.get((a, b), len(ranks)), i) for i, (a, b) in enumerate(itertools.pairwise(parts))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        parts = [*parts[:i], parts[i] + parts[i + 1], *parts[i + 2 :]]
    return parts


def main() -> None:
    symbols = list(bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols]
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in WORDS:
        # Merge whatever the earlier merges leave of this word, left to right, so that it becomes one
        # token; new merges rank after every earlier one, so earlier words still encode whole.
        parts = _bpe(word, ranks)
        left = parts[0]
        for right in parts[1:]:
            ranks[(left, right)] = len(merges)
            merges.append((left, right))
            left = left + right
            if left not in vocab_list:
                vocab_list.append(left)
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}

    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (OUT / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
    }
    (OUT / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, **special}
    (OUT / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"wrote {len(vocab)} tokens and {len(merges)} merges to {OUT}")


if __name__ == "__main__":
    main()
