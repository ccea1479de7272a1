"""One worker thread runs the pipeline; requests wait for it in a bounded FIFO queue.

The pipeline is not thread-safe (one set of KV buffers, one backend), so exactly one generation runs at a
time. The event loop submits a Job and reads its events (text pieces, then the answer or an error) from an
asyncio queue that the worker fills thread-safely. Cancelling a job (client gone, timeout) frees its place
in the queue at once, or stops its generation after the current step.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError
from .api_errors import ApiError, bad_request

log = logging.getLogger("trio_edge.serve")


@dataclass
class Answer:
    text: str
    finish_reason: str  # "stop" (end of sequence or a stop string) or "length" (max_tokens reached)
    prompt_tokens: int
    completion_tokens: int
    kept: list[list[int]]  # per cut, the kept image-token indices


@dataclass(eq=False)
class Job:
    image: Any  # decoded RGB PIL image, a list of them (an export taking several), or None (a video)
    prompt: str  # with the image slots in place (used verbatim by the pipeline)
    options: dict  # max_new_tokens, temperature, top_p, seed
    stops: list[str]
    streaming: bool  # send the answer's text as it grows (else only the finished answer)
    received: float  # time.perf_counter() at arrival
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    video: Any = None  # the request's decoded video (models.video.SampledVideo), for an export with --video-frames

    def emit(self, kind: str, value) -> None:
        """("text", str) pieces when streaming, then ("done", Answer) or ("error", ApiError); from the worker
        thread."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass


class StopMatcher:
    """OpenAI's `stop`: the answer ends before the first stop string; text that could still become one is
    held back while streaming."""

    def __init__(self, stops: list[str]):
        self.stops = stops

    def visible(self, text: str) -> tuple[str, bool]:
        """(the part of `text` that may be shown now, whether a stop string ended the answer)."""
        found = [index for index in (text.find(stop) for stop in self.stops) if index >= 0]
        if found:
            return text[:min(found)], True
        held = max((k for stop in self.stops for k in range(1, len(stop)) if text.endswith(stop[:k])), default=0)
        return text[:len(text) - held], False


class GenerationWorker:
    def __init__(self, pipeline, metrics, max_queue: int):
        self.pipeline, self.metrics, self.max_queue = pipeline, metrics, max_queue
        plan = pipeline.plan
        self.kept_ratio = plan.schedule.budget_ratio(plan.num_layers, plan.full_image_tokens)
        self._waiting: deque[Job] = deque()
        self._running: Job | None = None
        self._condition = threading.Condition()
        self._closing = False
        self._service_seconds = 1.0  # running mean of one generation's time, for Retry-After
        self._thread = threading.Thread(target=self._serve_forever, name="trio-serve-pipeline", daemon=True)
        self._thread.start()

    # ---- event-loop side ------------------------------------------------------------------------------------
    def _has_room(self) -> bool:
        return len(self._waiting) < self.max_queue or (self._running is None and not self._waiting)

    def has_room(self) -> bool:
        """Whether a job submitted now would be taken (a later submit may still find the queue full)."""
        with self._condition:
            return not self._closing and self._has_room()

    def submit(self, job: Job) -> bool:
        """Queue `job`; False when the queue is full (or the worker is closing)."""
        with self._condition:
            if self._closing or not self._has_room():
                return False
            self._waiting.append(job)
            self.metrics.queue_depth.set(len(self._waiting))
            self._condition.notify()
        return True

    def cancel(self, job: Job) -> None:
        """Drop a waiting job, or stop a running one after its current step."""
        job.cancelled.set()
        with self._condition:
            if job in self._waiting:
                self._waiting.remove(job)
                self.metrics.queue_depth.set(len(self._waiting))

    def retry_after(self) -> int:
        """Seconds until a place in the queue is likely free: one generation per waiting request."""
        return max(1, math.ceil(self._service_seconds * (len(self._waiting) + 1)))

    def close(self, timeout: float = 10.0) -> None:
        with self._condition:
            self._closing = True
            for job in [*self._waiting, *([self._running] if self._running else [])]:
                job.cancelled.set()
            self._waiting.clear()
            self._condition.notify()
        self._thread.join(timeout)

    # ---- worker thread --------------------------------------------------------------------------------------
    def _serve_forever(self) -> None:
        while True:
            with self._condition:
                while not self._waiting and not self._closing:
                    self._condition.wait()
                if self._closing:
                    return
                job = self._running = self._waiting.popleft()
                self.metrics.queue_depth.set(len(self._waiting))
            self.metrics.running.set(1)
            start = time.perf_counter()
            try:
                self._generate(job)
            except InputError as error:  # the request was checked before queueing; this is the pipeline's word
                job.emit("error", bad_request("invalid_request", str(error), "messages"))
            except Exception as error:  # noqa: BLE001 - one request's failure must not stop the server
                log.exception("generation failed")
                job.emit("error", ApiError(500, "internal_error", f"generation failed: {type(error).__name__}: "
                                                                  f"{error}"))
            finally:
                self._service_seconds = 0.8 * self._service_seconds + 0.2 * (time.perf_counter() - start)
                self.metrics.running.set(0)
                with self._condition:
                    self._running = None

    def _generate(self, job: Job) -> None:
        stream = self.pipeline.generate(job.image, job.prompt, video=job.video, stream=True, **job.options)
        matcher = StopMatcher(job.stops)
        shown = visible = ""
        stopped, last = False, None
        try:
            for _ in stream:
                now = time.perf_counter()
                if last is None:
                    self.metrics.ttft.observe(now - job.received)
                else:
                    self.metrics.token_latency.observe(now - last)
                last = now
                visible, stopped = matcher.visible(stream.result.text)
                if len(visible) > len(shown) and job.streaming:
                    job.emit("text", visible[len(shown):])
                    shown = visible
                if stopped or job.cancelled.is_set():
                    break
        finally:
            stream.close()  # stops the generation if we left early
        result = stream.result
        self.metrics.prompt_tokens.inc(result.prompt_tokens)
        self.metrics.completion_tokens.inc(len(result.token_ids))
        if job.cancelled.is_set():
            return
        text = visible if stopped else result.text
        if len(text) > len(shown) and job.streaming:  # what was held back for a stop string that never came
            job.emit("text", text[len(shown):])
        ended = bool(result.token_ids) and result.token_ids[-1] in self.pipeline.stop_token_ids
        finish_reason = "stop" if stopped or ended else "length"
        self.metrics.completions.labels(finish_reason=finish_reason).inc()
        self.metrics.duration.observe(time.perf_counter() - job.received)
        self.metrics.kept_ratio.observe(self.kept_ratio)
        job.emit("done", Answer(text, finish_reason, result.prompt_tokens, len(result.token_ids), result.kept))
