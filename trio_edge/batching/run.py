"""batch(): what `trio-batch` does. Read and check every record, check the output, then answer the records not
yet in it, on one local pipeline or on a pool of Ray actors, writing each answer as it arrives."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, require_whole_numbers
from .output import OutputWriter, prepare_output
from .records import read_records

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class BatchSummary:
    records: int  # in the input
    answered: int  # by this run
    failed: int  # by this run: an error line written
    skipped: int  # already in the output (resume)
    seconds: float
    output: Path

    def line(self) -> str:
        rate = (self.answered + self.failed) / self.seconds if self.seconds > 0 else 0.0
        failed = f", {self.failed} failed (their lines carry \"error\")" if self.failed else ""
        skipped = f", {self.skipped} already in the output" if self.skipped else ""
        return (f"trio-batch: {self.records} records: {self.answered} answered{failed}{skipped} in "
                f"{self.seconds:.1f} s ({rate:.1f} records/s); wrote {self.output}")


def batch(source, input, output, *, prompt: str | None = None, engine: str = "local", actors: int = 1,
          address: str | None = None, cpus_per_actor: float = 1.0, resume: bool = False, force: bool = False,
          progress: bool = True, max_new_tokens: int | None = None, temperature: float | None = None,
          top_p: float | None = None, seed: int | None = None, **open_options) -> BatchSummary:
    """Answer every record of `input` (a JSONL file of {"id", "image", "prompt", options} or a folder of images
    with `prompt`) with the pipeline of `source` (an export directory or a model), appending one JSON line per
    record to `output`: {"id", "text", "kept", "prompt_tokens", "completion_tokens", "timings"} or {"id",
    "error"}. `engine`: "local" (one pipeline here) or "ray" (`actors` Ray actors with `cpus_per_actor` CPUs
    each, on a private local cluster or the one at `address`). `resume`: skip the ids `output` already holds;
    `force`: overwrite it. The generation options are the defaults of records that set none; `open_options`:
    what trio_edge.load takes (backend, device, low_memory, ...)."""
    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    require_whole_numbers({"--actors": actors})
    if engine == "local" and (actors != 1 or address is not None):
        raise InputError("--actors and --address apply to --engine ray only")
    records = read_records(input, prompt=prompt, options={"max_new_tokens": max_new_tokens,
                                                          "temperature": temperature, "top_p": top_p, "seed": seed})
    from ..runtime.open import check_open

    check_open(source, **open_options)
    source = str(Path(source).resolve()) if Path(str(source)).exists() else str(source)
    owned = _connect(address, actors, cpus_per_actor) if engine == "ray" else False
    try:
        done = prepare_output(output, input_path=input, resume=resume, force=force)
        todo = [r.to_json() for r in records if r.id not in done]
        started = time.perf_counter()
        counts = _run(source, todo, output, engine=engine, actors=actors, cpus_per_actor=cpus_per_actor,
                      progress=progress, open_options=open_options)
    finally:
        if owned:
            import ray

            ray.shutdown()
    return BatchSummary(len(records), counts["answered"], counts["failed"], len(records) - len(todo),
                        time.perf_counter() - started, Path(output))


def _connect(address, actors: int, cpus_per_actor: float) -> bool:
    from ..cluster import check_cpus, connect, import_ray

    import_ray()
    if isinstance(cpus_per_actor, bool) or not isinstance(cpus_per_actor, (int, float)) or not cpus_per_actor > 0:
        raise InputError(f"--cpus-per-actor must be a positive number, got {cpus_per_actor!r}")
    owned = connect(address)
    try:
        check_cpus(actors, cpus_per_actor, "actors")
    except InputError:
        if owned:
            import ray

            ray.shutdown()
        raise
    return owned


def _run(source: str, todo: list[dict], output, *, engine: str, actors: int, cpus_per_actor: float, progress: bool,
         open_options: dict) -> dict:
    from tqdm.auto import tqdm

    counts = {"answered": 0, "failed": 0}
    if not todo:
        return counts
    with OutputWriter(output) as writer, tqdm(total=len(todo), unit=" records", disable=not progress,
                                              desc="trio-batch", smoothing=0.1) as bar:
        for answer in _answers(source, todo, engine=engine, actors=actors, cpus_per_actor=cpus_per_actor,
                               open_options=open_options):
            writer.write(answer)
            counts["failed" if "error" in answer else "answered"] += 1
            bar.update(1)
            if counts["failed"]:
                bar.set_postfix(failed=counts["failed"], refresh=False)
    return counts


def _answers(source: str, todo: list[dict], *, engine: str, actors: int, cpus_per_actor: float, open_options: dict):
    if engine == "ray":
        from .ray_engine import answers_on_ray

        yield from answers_on_ray(source, todo, actors=actors, cpus_per_actor=cpus_per_actor,
                                  open_options=open_options)
        return
    from ..runtime.open import open_pipeline
    from .answer import answer

    with open_pipeline(source, **open_options) as pipeline:
        for record in todo:
            yield answer(pipeline, record)
