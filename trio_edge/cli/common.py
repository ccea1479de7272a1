"""Shared CLI plumbing: typed errors become one clear line and exit code 2, never a traceback wall."""

from __future__ import annotations

import argparse
import functools
import math
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


def silence_stdout() -> None:
    """After the reader of stdout went away: send what is left to /dev/null, so the flush at exit raises nothing."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _close_progress_bars() -> None:
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


def cli_entry(func):
    @functools.wraps(func)
    def wrapper(argv=None):
        from ..errors import TrioEdgeError

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        _notices_to_stderr()
        try:
            return func(argv) or 0
        except TrioEdgeError as error:
            _close_progress_bars()  # the error starts its own line, not the end of a bar's
            print(f"error: {_one_line(error)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:  # the reader went away (e.g. `| head`): stop quietly, as SIGPIPE would
            silence_stdout()
            return 141

    return wrapper


class CliParser(argparse.ArgumentParser):
    """argparse with the project's error form: one line `error: ...` that names --help, and exit code 2 (argparse
    would print the whole usage block first)."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def at_least(minimum: int):
    """An argparse type: a whole number >= `minimum`, refused with one line naming the option."""
    def whole_number(text: str) -> int:
        value = int(text)  # ValueError: argparse says "invalid whole_number value: 'x'"
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return whole_number


def positive_number(text: str) -> float:
    """An argparse type: a finite number > 0."""
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def check_output_paths(**paths) -> None:
    """Refuse output files (option name -> path or None) before the work that writes them: a directory in their
    place, a folder that cannot be written, or an extension the writer does not know (--plot: PNG)."""
    from ..files import check_output_file

    for option, path in paths.items():
        if path is not None:
            flag = "--" + option.replace("_", "-")
            check_output_file(path, flag, (".png",) if option == "plot" else ())


def make_parents(*paths) -> None:
    """Create the folders of output files (given or None) right before they are written."""
    from pathlib import Path

    for path in paths:
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)


def command_line(prog: str, argv) -> str:
    """The command as typed, for provenance records in JSON outputs."""
    return " ".join([prog, *(sys.argv[1:] if argv is None else argv)])


# ---- option groups shared by the commands (defined once; defaults from trio_edge.defaults) ------------------
NO_SCHEDULE = "none given = no pruning"


def add_schedule_options(parser, *, title: str = f"selection schedule (pick one; {NO_SCHEDULE})") -> None:
    """--cuts / --keep-ratio / --schedule-file (mutually exclusive), --method, --positions, --threshold,
    --select-precision."""
    from .. import defaults
    from ..trio.methods import REGISTRY
    from ..trio.presets import PRESETS

    # inside an argument group already (trio-run's model-only options): add there; nesting groups is deprecated
    group = parser if isinstance(parser, argparse._ArgumentGroup) else parser.add_argument_group(title)
    group.add_argument("--cuts", help="LAYER:KEEP[,LAYER:KEEP...]: prune after LAYER decoder layers (0 = before "
                                      "any), keeping KEEP image tokens, e.g. 1:92,10:54,15:22; vision-tower methods: "
                                      "vision:KEEP tokens per tile (VisionZip: vision:DOMINANT+CONTEXTUAL, e.g. "
                                      "vision:54+10; TRIO-VE: vision:T then TRIO cuts, e.g. vision:96,16:32)")
    group.add_argument("--keep-ratio", type=float, help="layer-averaged image-token ratio, e.g. 0.111; uses the "
                                                        "family's default cut layers")
    group.add_argument("--schedule-file", help="a schedule JSON written by trio-calibrate")
    group.add_argument("--preset", metavar="NAME",
                       help="an authors' released schedule (scaled to the model's depth and image tokens when it is "
                            "not 32 layers / 576 tokens; the method defaults to the preset's): "
                            + "; ".join(f"{p.name} = {p.method} {_preset_cuts(p)}" for p in PRESETS.values()))
    group.add_argument("--budget", type=int, help="--method sparsevlm: one of the authors' tables 64, 96, 128, 192 "
                                                  "(image tokens kept at cuts 3/7/16, the authors' layers; scaled "
                                                  "on decoders under 17 layers)")
    group.add_argument("--method", metavar="METHOD", help=f"selection rule of every cut (default {defaults.METHOD}, "
                       "or the preset's): " + "; ".join(f"{m.name} ({m.source})" for m in REGISTRY.values()))
    group.add_argument("--positions", choices=["renumber", "original"], help="positions after a cut "
                       f"(default {defaults.POSITIONS}, as released LLaVA code)")
    group.add_argument("--threshold", type=float, help=f"NMS feature-similarity threshold (default "
                                                       f"{defaults.NMS_THRESHOLD})")
    group.add_argument("--select-precision", dest="precision", choices=["fp32", "model"],
                       help="precision of the select stages: fp32 (default; the kept tokens equal the fp32 "
                            "reference exactly) or model (fp16/bf16 models: much less select compute, "
                            "near-tied tokens may differ)")


def _preset_cuts(preset) -> str:
    if preset.ratios:  # a ported schedule in fractions (TRIO's Qwen port)
        cuts = ",".join(f"{layer}:int({ratio} x current)" for layer, ratio in zip(preset.layers, preset.ratios[1:]))
        return f"vision:int({preset.ratios[0]} M),{cuts} of {preset.reference_layers} layers ({preset.family})"
    split = f"+{preset.vision[1]}" if preset.vision and preset.vision[1] else ""
    vision = [f"vision:{preset.vision[0]}{split} per tile of 576"] if preset.vision else []
    return ",".join(vision + [f"{a}:{b}" for a, b in zip(preset.layers, preset.keeps)])


def add_visual_options(parser) -> None:
    """--images / --video-frames / --budget-per-image: what one request shows the model (fixed at export)."""
    parser.add_argument("--images", type=at_least(1), default=None,
                        help="images per request (default 1), each at the export's image size, in the order the "
                             "prompt refers to them; pruning counts the image tokens of all of them")
    parser.add_argument("--video-frames", type=at_least(1), default=None, metavar="F",
                        help="Qwen2.5-VL / Qwen3-VL: a request is one video instead of images, F frames sampled "
                             "uniformly from it (a multiple of 2, the vision tower's temporal patch)")
    parser.add_argument("--budget-per-image", action="store_const", const=True, default=None,
                        help="split every cut's KEEP evenly over the images (or frame pairs) instead of one budget "
                             "over all of their tokens (TRIO's rule is per token, so one budget is its natural form)")


def visual_options(args) -> dict:
    """What add_visual_options parsed (None = not given)."""
    return {"images": args.images, "video_frames": args.video_frames, "budget_per_image": args.budget_per_image}


def add_model_only_options(parser, source: str = "MODEL_OR_DIR"):
    """The options of a model source that an export fixed: the schedule options and --grid. Returns the
    argument group, for a command's own model-only options."""
    group = parser.add_argument_group(f"when {source} is a model (PyTorch reference pipeline; an export fixed "
                                      f"these; {NO_SCHEDULE})")
    add_schedule_options(group)
    group.add_argument("--grid", help="fixed image size WIDTHxHEIGHT (see trio-export --help)")
    add_visual_options(group)
    return group


def model_only_options(args) -> dict:
    """What add_model_only_options parsed, as keyword arguments of open_pipeline (None = not given)."""
    return {**schedule_options(args), "method": args.method, "grid": args.grid, **visual_options(args)}


def schedule_options(args) -> dict:
    """The schedule options as keyword arguments (None = not given)."""
    return {"cuts": args.cuts, "keep_ratio": args.keep_ratio, "budget": args.budget,
            "schedule_file": args.schedule_file, "preset": args.preset,
            "positions": args.positions, "threshold": args.threshold, "precision": args.precision}


def add_device_options(parser, *, backends=True) -> None:
    """--device, and with `backends` --backend and --no-cuda-graphs."""
    from .. import defaults

    group = parser.add_argument_group("where it runs")
    if backends:
        group.add_argument("--backend", choices=["onnxruntime", "tensorrt", "torch"],
                           help=f"export directories: default {defaults.EXPORT_BACKEND}; models: "
                                f"{defaults.MODEL_BACKEND} (the PyTorch reference pipeline) only")
    group.add_argument("--device", default=defaults.DEVICE, help=f"cpu or cuda[:N] (default {defaults.DEVICE})")
    if backends:
        group.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_const", const=False, default=None,
                           help="torch backend on CUDA and TensorRT decode: run eagerly, no CUDA-graph replay")
        group.add_argument("--low-memory", action="store_true",
                           help="onnxruntime backend: no CPU arena or memory pattern, about half the peak host "
                                "memory of a request (for memory-bound devices such as Jetson)")


def add_quiet_option(parser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


PROMPT_HELP = ("the question; a prompt that contains the image slot (<image>) is used verbatim, otherwise the "
               "model's chat template is applied if it has one, else the family default "
               "'USER: <image>\\n{prompt} ASSISTANT:'")
