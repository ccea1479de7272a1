"""trio-batch on Ray Data: the records flow through `map_batches` on a pool of actors, each holding one pipeline
opened from the export's path (an ONNX Runtime session cannot be sent to another process), with ONNX Runtime's
threads set to its CPU share. Answers stream back to the driver as they finish (in completion order), which
writes them."""

from __future__ import annotations

import json
import logging

from ..cluster import threads_for

RECORDS_PER_TASK = 4  # records per Ray Data batch: small, so answers come back (and get written) steadily


class PipelineActor:
    """One actor of the pool: a pipeline, and the records of each batch answered one by one."""

    def __init__(self, source: str, threads: int, open_options: dict):
        from ..runtime.open import open_pipeline

        self.pipeline = open_pipeline(source, threads=threads, **open_options)

    def __call__(self, batch: dict) -> dict:
        from .answer import answer

        return {"line": [json.dumps(answer(self.pipeline, json.loads(record))) for record in batch["record"]]}


def answers_on_ray(source: str, records: list[dict], *, actors: int, cpus_per_actor: float, open_options: dict):
    """Each record's answer dict, as the actors finish them."""
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False  # trio-batch draws its own
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    blocks = max(1, min(len(records), -(-len(records) // RECORDS_PER_TASK)))
    dataset = ray.data.from_items([{"record": json.dumps(r)} for r in records], override_num_blocks=blocks)
    answered = dataset.map_batches(PipelineActor, fn_constructor_kwargs={
        "source": source, "threads": threads_for(cpus_per_actor), "open_options": open_options},
        compute=ActorPoolStrategy(size=actors), batch_size=RECORDS_PER_TASK, num_cpus=cpus_per_actor,
        batch_format="numpy")
    for row in answered.iter_rows():
        yield json.loads(row["line"])
