"""Shared CLI plumbing: typed errors become one clear line and exit code 2, never a traceback wall."""

from __future__ import annotations

import functools
import os
import sys


def _notices_to_stderr() -> None:
    """The library's one-line notices (logger 'trio_edge', e.g. leftovers of an interrupted export) go to
    stderr as bare lines, unless the host program configured logging itself."""
    import logging

    class StderrLines(logging.Handler):
        def emit(self, record):
            print(record.getMessage(), file=sys.stderr)  # sys.stderr at the time of the record

    logger = logging.getLogger("trio_edge")
    if not logging.getLogger().handlers and not any(type(h).__name__ == "StderrLines" for h in logger.handlers):
        logger.addHandler(StderrLines(logging.INFO))


def _one_line(error) -> str:
    """The error's message on one line, printable whatever the terminal's encoding."""
    text = " ".join(str(error).split("\n"))
    encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
    return text.encode(encoding, "backslashreplace").decode(encoding, "replace")


def cli_entry(func):
    @functools.wraps(func)
    def wrapper(argv=None):
        from ..errors import TrioEdgeError

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        _notices_to_stderr()
        try:
            return func(argv) or 0
        except TrioEdgeError as error:
            print(f"error: {_one_line(error)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper


def add_schedule_options(parser) -> None:
    import argparse

    # inside an argument group already (trio-run's model-only options): add there; nesting groups is deprecated
    group = (parser if isinstance(parser, argparse._ArgumentGroup)
             else parser.add_argument_group("TRIO schedule (pick one; none = no pruning)"))
    group.add_argument("--cuts", help="LAYER:KEEP[,LAYER:KEEP...]: prune after LAYER decoder layers (0 = before "
                                      "any), keeping KEEP image tokens, e.g. 1:92,10:54,15:22")
    group.add_argument("--keep-ratio", type=float, help="layer-averaged image-token ratio, e.g. 0.111; uses the "
                                                        "family's default cut layers")
    group.add_argument("--schedule-file", help="a schedule JSON written by trio-calibrate")
    parser.add_argument("--positions", choices=["renumber", "original"], help="positions after a cut "
                        "(default renumber, as released LLaVA code)")
    parser.add_argument("--threshold", type=float, help="NMS feature-similarity threshold (default 0.8)")
    parser.add_argument("--select-precision", dest="precision", choices=["fp32", "model"],
                        help="precision of the select stages: fp32 (default; the kept tokens equal the fp32 "
                             "reference exactly) or model (fp16/bf16 models: much less select compute, "
                             "near-tied tokens may differ)")


def schedule_options(args) -> dict:
    return {"cuts": args.cuts, "keep_ratio": args.keep_ratio, "schedule_file": args.schedule_file,
            "positions": args.positions, "threshold": args.threshold, "precision": args.precision}


PROMPT_HELP = ("the question; a prompt that contains the image slot (<image>) is used verbatim, otherwise the "
               "model's chat template is applied if it has one, else the family default "
               "'USER: <image>\\n{prompt} ASSISTANT:'")
