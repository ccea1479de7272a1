"""One data protocol for evaluation, calibration and validation: a records folder (jsonl) or synthetic."""

from __future__ import annotations

import re

from ..errors import InputError, require_whole_numbers

SYNTHETIC = "synthetic"
HELD_OUT_SEED = 90_001  # far from the training script's seeds


def load_records(data: str, *, n: int | None, seed: int = HELD_OUT_SEED, images: int = 1) -> list[dict]:
    """Records with `image` (path or PIL image; with `images` > 1 a list of them), `question`, `answer`; the first
    `n` (all if None). Synthetic records with several images ask about one of them (make_multi_split)."""
    from ..data.synthetic_vqa import make_multi_split, make_split, read_records

    if n is not None:
        require_whole_numbers({"the number of samples (--n)": n})
    if data == SYNTHETIC:
        count = 200 if n is None else n
        return make_split(count, seed) if images == 1 else make_multi_split(count, seed, images)
    if images != 1:
        raise InputError("--images applies to the synthetic data (several images per question); a records folder "
                         "holds one image per record")
    records = read_records(data)
    if not records:
        raise InputError(f"{data} holds no records")
    return records if n is None else records[:n]


def normalize_answer(text: str) -> str:
    """First word, lower case, without punctuation: 'Red.' -> 'red'."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    return words[0] if words else ""
