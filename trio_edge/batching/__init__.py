"""trio-batch: offline batch inference over a JSONL file of records or a folder of images.

    import trio_edge
    summary = trio_edge.batch("exports/trio-tiny", "requests.jsonl", "answers.jsonl")              # one pipeline
    summary = trio_edge.batch("exports/trio-tiny", "requests.jsonl", "answers.jsonl", engine="ray", actors=2,
                              resume=True)                                                          # Ray Data
    print(summary.line())

A record is {"id", "image" (path or http(s) URL), "prompt", and optionally max_new_tokens, temperature, top_p,
seed}; an answer line is {"id", "text", "kept", "prompt_tokens", "completion_tokens", "timings"} or {"id",
"error"}. Ray comes with the `[ray]` extra and is imported only for engine="ray".
"""

from __future__ import annotations

from .run import BatchSummary, batch

__all__ = ["batch", "BatchSummary"]
