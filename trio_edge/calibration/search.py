"""calibrate(): choose cut layers, keep counts and the NMS threshold for a token (and latency) budget.

Objective: output invariance against the unpruned model on calibration prompts, scored lexicographically:
greedy answer exact match, then first-token agreement, then (lower) mean KL(full || pruned) of the
first next-token distribution. Candidates whose layer-averaged image tokens exceed the target's (budget x M,
within half a token, as --keep-ratio rounds keeps to whole tokens) are never considered; with --latency-ms,
candidates slower than it on this device are dropped. The family's default schedule is always a candidate, so
the result is at least as good as it on the calibration set.
"""

from __future__ import annotations

import datetime as dt
import itertools
import statistics
from dataclasses import dataclass, field, replace

import torch

from ..errors import ScheduleError, require_whole_numbers
from ..runtime.open import open_pipeline
from ..trio.schedule import Schedule, schedule_for_ratio
from .data import load_records

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
                    try:  # as the model's family runs TRIO (adapter.constrain: positions, where cuts may go)
                        schedules.append(adapter.constrain(schedule_for_ratio(budget, (first, *rest), weights,
                                                                              layers, m), "trio"))
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
    pipeline = open_pipeline(loaded, schedule=Schedule(), max_new_tokens=max_new_tokens)
    answers, probs = [], []
    for record in records:
        result = pipeline.generate(record["image"], record["question"], max_new_tokens=max_new_tokens)
        answers.append(result.token_ids)
        probs.append(torch.softmax(result.first_logits[0].float(), dim=-1))
    return Reference(answers, probs)


def score(loaded, candidate: Candidate, records, reference: Reference, max_new_tokens: int) -> Candidate:
    pipeline = open_pipeline(loaded, schedule=candidate.schedule, max_new_tokens=max_new_tokens)
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


def latency_ms(loaded, schedule: Schedule, records, device: str) -> float:
    """Median time to first token of `schedule` on `device` (PyTorch pipeline, first calibration record)."""
    from ..runtime.bench import measure

    pipeline = open_pipeline(loaded, schedule=schedule, max_new_tokens=1, device=device)
    return measure(pipeline, records[0]["image"], records[0]["question"], warmup=1, iters=3, new_tokens=1,
                   progress=False)["ttft_ms"]


@dataclass
class Calibration:
    """The outcome of calibrate(): `schedule` carries its provenance and is what a schedule file holds."""

    chosen: Candidate
    default: Candidate  # the family's default schedule at the budget (always a candidate)
    candidates: list[Candidate] = field(default_factory=list)
    schedule: Schedule = field(default_factory=Schedule)
    num_layers: int = 0
    num_image_tokens: int = 0

    def table(self) -> str:
        lines = [f"{'schedule':<30}{'budget':>8}{'TTFT ms':>9}{'exact':>8}{'first':>8}{'KL':>9}"]
        for c in pareto(self.candidates):
            latency = f"{c.latency_ms:>9.1f}" if c.latency_ms is not None else f"{'-':>9}"
            mark = " <- chosen" if c is self.chosen else (" (default)" if c is self.default else "")
            lines.append(f"{c.label:<30}{100 * c.budget:>7.1f}%{latency}{100 * c.exact_match:>7.1f}%"
                         f"{100 * c.first_token:>7.1f}%{c.mean_kl:>9.4f}{mark}")
        return "\n".join(lines)

    def describe(self) -> str:
        return f"{self.chosen.label} ({self.schedule.describe(self.num_layers, self.num_image_tokens)})"


def calibrate(model, *, budget: float, latency_limit_ms: float | None = None, device: str = "cpu",
              data: str = "synthetic", n: int = 32, seed: int = 70_001, max_new_tokens: int = 4, top: int = 3,
              progress: bool = True, command: str | None = None) -> Calibration:
    """The whole search (see the module docstring): candidates at `budget`, each scored against the unpruned
    model on `n` calibration records, the `top` ones refined over NMS thresholds, those slower than
    `latency_limit_ms` on `device` dropped; the best by invariance is chosen. `model` is a name or a loaded
    model."""
    from ..models.registry import load

    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget <= 1:
        raise ScheduleError(f"--budget must be a layer-averaged image-token ratio within (0, 1], e.g. 0.111; got "
                            f"{budget!r}")
    require_whole_numbers({"--n": n, "--max-new-tokens": max_new_tokens, "--top": top}, error=ScheduleError)
    loaded = load(model) if isinstance(model, str) else model
    adapter, grid = loaded.adapter, loaded.adapter.default_grid()
    layers, m = adapter.num_layers, adapter.image_token_count(grid)
    candidates = [Candidate(s, s.budget_ratio(layers, m)) for s in candidate_schedules(adapter, grid, budget)]
    if not candidates:
        raise ScheduleError(f"no schedule keeps as few as {budget} of the {m} image tokens on average over "
                            f"{layers} layers ({budget * m:.1f} tokens; at least one must survive each cut): "
                            "raise --budget")
    records = load_records(data, n=n, seed=seed)
    reference = reference_outputs(loaded, records, max_new_tokens)
    for candidate in _bar(candidates, "candidates", progress):
        score(loaded, candidate, records, reference, max_new_tokens)
    best = sorted(candidates, key=lambda c: c.score, reverse=True)[:top]
    refined = [Candidate(with_threshold(c.schedule, t), c.budget)
               for c in best for t in THRESHOLDS if t != c.schedule.threshold]
    for candidate in _bar(refined, "thresholds", progress):
        score(loaded, candidate, records, reference, max_new_tokens)
    candidates += refined
    default = candidates[0]
    if latency_limit_ms is not None:
        for candidate in candidates:
            candidate.latency_ms = latency_ms(loaded, candidate.schedule, records, device)
        candidates = [c for c in candidates if c.latency_ms <= latency_limit_ms]
        if not candidates:
            raise ScheduleError(f"no schedule at budget {budget} reaches TTFT <= {latency_limit_ms} ms on "
                                f"{device}; raise --latency-ms or lower --budget")
    chosen = max(candidates, key=lambda c: c.score)
    provenance = {
        "tool": "trio-calibrate", "command": command,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "model": loaded.source,
        "budget": budget, "latency_ms": latency_limit_ms, "data": data, "n": len(records),
        "candidates": len(candidates), "metrics": {"exact_match": chosen.exact_match, "first_token": chosen.first_token,
                                                   "mean_kl": chosen.mean_kl, "latency_ms": chosen.latency_ms},
        "default_schedule": {"label": default.label, "exact_match": default.exact_match,
                             "first_token": default.first_token, "mean_kl": default.mean_kl},
    }
    return Calibration(chosen, default, candidates, replace(chosen.schedule, provenance=provenance), layers, m)


def _bar(items, desc: str, enabled: bool):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, leave=False)
