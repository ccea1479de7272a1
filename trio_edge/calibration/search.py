"""trio-calibrate: choose cut layers, keep counts and the NMS threshold for a token (and latency) budget.

Objective: output invariance against the unpruned model on calibration prompts, scored lexicographically:
greedy answer exact match, then first-token agreement, then (lower) mean KL(full || pruned) of the
first next-token distribution. Candidates whose layer-averaged budget exceeds the target are never
considered; with --latency-ms, candidates slower than it on this device are dropped. The family's
default schedule is always a candidate, so the result is at least as good as it on the calibration set.
"""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass, replace

import torch

from ..errors import ScheduleError
from ..trio.schedule import Schedule, schedule_for_ratio

DECAYS = (1.0, 0.6, 0.35)  # keep_i proportional to decay**i
THRESHOLDS = (0.7, 0.8, 0.9)


@dataclass
class Candidate:
    schedule: Schedule
    budget: float
    exact_match: float = 0.0
    first_token: float = 0.0
    mean_kl: float = float("inf")
    latency_ms: float | None = None

    @property
    def score(self) -> tuple:
        return (self.exact_match, self.first_token, -self.mean_kl)

    @property
    def label(self) -> str:
        return ",".join(f"{c.layer}:{c.keep}" for c in self.schedule.cuts) + f" t={self.schedule.threshold}"


def candidate_schedules(adapter, grid, budget: float, max_cuts: int = 3) -> list[Schedule]:
    """Cut-layer subsets x keep decays at threshold 0.8 (thresholds are refined later), plus the default."""
    layers, m = adapter.num_layers, adapter.image_token_count(grid)
    schedules = [adapter.schedule(grid, keep_ratio=budget)]
    first_cuts = [c for c in range(layers) if c * m / layers <= budget * m]  # layers before it see all M
    for count in range(1, max_cuts + 1):
        for first in first_cuts:
            for rest in itertools.combinations(range(first + 1, layers), count - 1):
                for decay in DECAYS[: 1 if count == 1 else None]:
                    weights = [decay ** i for i in range(count)]
                    try:
                        schedules.append(schedule_for_ratio(budget, (first, *rest), weights, layers, m))
                    except ScheduleError:
                        continue
    unique = {tuple(s.cuts): s for s in schedules if not _has_noop_cut(s, m)}
    return [s for s in unique.values() if s.layer_averaged_tokens(layers, m) <= budget * m + 0.5]


def _has_noop_cut(schedule: Schedule, num_image_tokens: int) -> bool:
    """A cut that keeps every token entering it only costs a select graph."""
    entering = [num_image_tokens] + [c.keep for c in schedule.cuts[:-1]]
    return any(c.keep == n for c, n in zip(schedule.cuts, entering))


@dataclass
class Reference:
    answers: list[list[int]]
    first_probs: list[torch.Tensor]


def reference_outputs(loaded, records, max_new_tokens: int) -> Reference:
    from ..runtime.reference import torch_pipeline

    pipeline = torch_pipeline(loaded, Schedule(), max_new_tokens=max_new_tokens)
    answers, probs = [], []
    for record in records:
        result = pipeline.generate(record["image"], record["question"], max_new_tokens=max_new_tokens)
        answers.append(result.token_ids)
        probs.append(torch.softmax(result.first_logits[0].float(), dim=-1))
    return Reference(answers, probs)


def score(loaded, candidate: Candidate, records, reference: Reference, max_new_tokens: int) -> Candidate:
    from ..runtime.reference import torch_pipeline

    pipeline = torch_pipeline(loaded, candidate.schedule, max_new_tokens=max_new_tokens)
    exact, first, kls = 0, 0, []
    for record, answer, p in zip(records, reference.answers, reference.first_probs):
        result = pipeline.generate(record["image"], record["question"], max_new_tokens=max_new_tokens)
        exact += result.token_ids == answer
        first += result.token_ids[:1] == answer[:1]
        q = torch.log_softmax(result.first_logits[0].float(), dim=-1)
        kls.append(float((p * (torch.log(p.clamp_min(1e-30)) - q)).sum()))
    n = max(len(records), 1)
    candidate.exact_match, candidate.first_token, candidate.mean_kl = exact / n, first / n, statistics.fmean(kls)
    return candidate


def pareto(candidates: list[Candidate]) -> list[Candidate]:
    """Candidates no other candidate beats on budget, latency and invariance at once."""
    def key(c):
        return (c.budget, c.latency_ms if c.latency_ms is not None else 0.0, tuple(-x for x in c.score))

    front = []
    for c in candidates:
        dominated = any(all(a <= b for a, b in zip(_flat(key(o)), _flat(key(c)))) and key(o) != key(c)
                        for o in candidates)
        if not dominated:
            front.append(c)
    return sorted(front, key=lambda c: (c.budget, c.score))


def _flat(key):
    budget, latency, score = key
    return (budget, latency, *score)


def with_threshold(schedule: Schedule, threshold: float) -> Schedule:
    return replace(schedule, threshold=threshold, provenance={})
