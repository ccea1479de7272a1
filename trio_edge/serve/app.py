"""The FastAPI app: OpenAI-compatible chat completions over one pipeline, plus /v1/models, /health, /metrics.

A request is checked completely on the event loop (schema, model name, conversation, prompt length, image
size and pixels) before it takes a place in the queue, so a bad request is answered at once with its status
and an OpenAI error body, whatever the pipeline is doing. Then it waits for the one worker thread
(worker.py); its answer comes back as one JSON body or as server-sent events.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..runtime.pipeline import Pipeline
from .api_errors import ApiError, bad_request
from .conversation import PromptChecker, turns_and_visuals
from .images import data_url_bytes, decode_image, remote_image_bytes
from .metrics import ServeMetrics
from .schema import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    ImageTokens,
    ModelCard,
    ModelList,
    Usage,
)
from .settings import REPLICA_HEADER, ServeSettings
from .worker import Answer, GenerationWorker, Job

log = logging.getLogger("uvicorn.error")  # uvicorn's own log: one stream, one format
DISCONNECT_POLL_S = 0.1  # how often a waiting non-streamed request checks that its client is still there
IMAGE_DECODES = 2  # images decoded at once (each can take ~3 bytes a pixel)
HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


class ServerState:
    """What the routes share: settings, metrics and, once loaded, the pipeline with its worker."""

    def __init__(self, settings: ServeSettings, replica: str | None = None):
        self.settings, self.metrics = settings, ServeMetrics(replica)
        self.started = int(time.time())
        self.pipeline: Pipeline | None = None
        self.worker: GenerationWorker | None = None
        self.checker: PromptChecker | None = None
        self.remote = None  # httpx.AsyncClient when remote images are allowed
        self.owns_pipeline = False
        self.load_error: BaseException | None = None
        self.image_decodes = asyncio.Semaphore(IMAGE_DECODES)

    def start(self, pipeline: Pipeline, *, owned: bool) -> None:
        self.checker = PromptChecker(pipeline)
        self.worker = GenerationWorker(pipeline, self.metrics, self.settings.max_queue)
        if self.settings.allow_remote_images:
            import httpx

            self.remote = httpx.AsyncClient(follow_redirects=True, max_redirects=3)
        self.pipeline, self.owns_pipeline = pipeline, owned

    async def stop(self) -> None:
        if self.worker is not None:
            self.worker.close()
        if self.remote is not None:
            await self.remote.aclose()
        if self.owns_pipeline and self.pipeline is not None:
            self.pipeline.close()

    def running_worker(self) -> GenerationWorker:
        """The worker, or 503 while the pipeline is still loading."""
        if self.worker is None:
            raise ApiError(503, "model_loading", "the model is still loading; retry shortly (GET /health says when "
                                                 "it is ready)", headers={"Retry-After": "1"})
        return self.worker

    def error_response(self, error: ApiError) -> JSONResponse:
        self.metrics.errors.labels(kind=error.code).inc()
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def create_app(pipeline, settings: ServeSettings, *, on_load_error=None, replica: str | None = None) -> FastAPI:
    """The server's ASGI app. `pipeline`: an opened Pipeline (it stays the caller's to close), or a function
    that opens one: it is called once the server listens (/health answers 503 "loading" until it returns)
    and its pipeline is closed at shutdown; if it raises, `on_load_error(error)` is called. `replica`: the id
    of one replica among several (Ray Serve): every response carries it in the header `x-trio-replica`, and
    every /metrics sample in the label `replica`."""
    state = ServerState(settings, replica)

    @asynccontextmanager
    async def lifespan(app):
        loader = asyncio.create_task(_load(state, pipeline, on_load_error))
        yield
        loader.cancel()
        await state.stop()

    app = FastAPI(title="trio-serve", summary="OpenAI-compatible chat completions on a trio-edge pipeline",
                  lifespan=lifespan)
    app.state.serve = state
    app.add_middleware(RequestGate, state=state)
    if replica is not None:
        app.add_middleware(ReplicaHeader, replica=replica)
    _add_error_handlers(app, state)

    @app.get("/health")
    async def health():
        if state.worker is None:
            return JSONResponse({"status": "loading", "model": settings.model_name}, status_code=503)
        return {"status": "ok", "model": settings.model_name}

    @app.get("/metrics")
    async def metrics():
        return Response(state.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models", response_model=ModelList)
    async def list_models():
        return ModelList(data=[_model_card(state)])

    @app.get("/v1/models/{model_id:path}", response_model=ModelCard)
    async def get_model(model_id: str):
        _check_model(model_id, settings)
        return _model_card(state)

    @app.post("/v1/chat/completions", response_model=ChatCompletion, max_body_size=settings.max_body_bytes)
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        received = time.perf_counter()
        worker = state.running_worker()
        _check_model(body.model, settings)
        job = await _job_for(body, state, received)
        if not worker.submit(job):
            raise _queue_full(worker, settings)
        deadline = received + settings.timeout
        if body.stream:
            return EventStream(_events(job, body, state, deadline))
        answer = await _answer(job, request, state, deadline)
        if answer is None:  # the client left; nobody reads this
            return Response(status_code=499)
        completion = ChatCompletion(id=_completion_id(), created=int(time.time()), model=settings.model_name,
                                    choices=[Choice(message=AssistantMessage(content=answer.text),
                                                    finish_reason=answer.finish_reason)],
                                    usage=_usage(answer, state))
        return Response(completion.model_dump_json(), media_type="application/json")

    return app


async def _load(state: ServerState, pipeline, on_load_error) -> None:
    try:
        if isinstance(pipeline, Pipeline):
            state.start(pipeline, owned=False)
        else:
            state.start(await asyncio.to_thread(pipeline), owned=True)
    except Exception as error:  # noqa: BLE001 - reported to the caller, who stops the server
        state.load_error = error
        if on_load_error is not None:
            on_load_error(error)
        return
    plan = state.pipeline.plan
    log.info("trio-serve: %s ready (%s; at most %d text and %d new tokens)", state.settings.model_name,
             plan.schedule.describe(plan.num_layers, plan.full_image_tokens), plan.max_text_tokens, plan.max_new_tokens)


# ---- checks before queueing --------------------------------------------------------------------------------
def _check_model(name: str, settings: ServeSettings) -> None:
    if name != settings.model_name:
        raise ApiError(404, "model_not_found", f"the model {name!r} is not served here; this server serves "
                                               f"{settings.model_name!r} (GET /v1/models)", param="model")


async def _job_for(body: ChatCompletionRequest, state: ServerState, received: float) -> Job:
    plan = state.pipeline.plan
    turns, image_urls, video_urls = turns_and_visuals(body.messages)
    _check_visual_counts(plan, len(image_urls), len(video_urls))
    options = _generation_options(body, plan.max_new_tokens)
    if plan.video_frames:  # decoded first: some families write its frames' times into the prompt
        worker = state.running_worker()
        if not worker.has_room():  # decoding a clip can take seconds: not for a request that cannot wait
            raise _queue_full(worker, state.settings)
        data = await _image_bytes(video_urls[0], state, "video")
        async with state.image_decodes:
            video = await asyncio.to_thread(_decode_video, data, state)
        prompt = state.checker.prompt(turns, video)
        return Job(None, prompt, options, body.stop_sequences, body.stream, received, asyncio.get_running_loop(),
                   video=video)
    prompt = state.checker.prompt(turns)
    images = []
    for url in image_urls:
        data = await _image_bytes(url, state)
        async with state.image_decodes:
            images.append(await asyncio.to_thread(decode_image, data, state.settings.max_image_pixels))
    return Job(images if plan.images > 1 else images[0], prompt, options, body.stop_sequences, body.stream, received,
               asyncio.get_running_loop())


def _check_visual_counts(plan, images: int, videos: int) -> None:
    """The request's image_url / video_url parts against what the export takes: its image count, or one video."""
    if plan.video_frames:
        if videos != 1 or images:
            raise bad_request("wrong_visual_input", f"the messages have {images} image(s) and {videos} video(s); "
                              f"this export takes exactly one video per request (a video_url part, e.g. "
                              f"data:video/mp4;base64,...), {plan.video_frames} frames sampled from it", "messages")
        return
    if videos:
        raise bad_request("video_not_supported", "this export takes images, not a video (a video export is made with "
                          "trio-export --video-frames); send image_url parts", "messages")
    if not images:
        raise bad_request("no_image", "the messages have no image; add an image_url part "
                          "(data:image/png;base64,...) to the user message", "messages")
    if images != plan.images:
        code = "too_many_images" if images > plan.images else "too_few_images"
        raise bad_request(code, f"the messages have {images} images; this export takes {plan.images} image"
                          f"{'s' if plan.images > 1 else ''} per request", "messages")


def _decode_video(data: bytes, state: ServerState):
    """The video's frames as the export samples them, within the server's limits; 400 for a bad or long clip."""
    from ..errors import InputError
    from ..models.video import MAX_FRAME_PIXELS

    settings = state.settings
    try:
        plan = state.pipeline.plan
        return state.checker.io.load_video(data, plan.video_frames, plan.grid, max_seconds=settings.max_video_seconds,
                                           max_pixels=min(settings.max_image_pixels, MAX_FRAME_PIXELS))
    except InputError as error:
        raise bad_request("invalid_video", str(error), "messages") from None


def _generation_options(body: ChatCompletionRequest, limit: int) -> dict:
    param, asked = next(((name, getattr(body, name)) for name in ("max_completion_tokens", "max_tokens")
                         if getattr(body, name) is not None), ("max_tokens", None))
    if asked is not None and asked > limit:
        raise bad_request("max_tokens_too_large", f"{param}={asked} is over this export's maximum of {limit} new "
                          "tokens (re-export with a larger --max-new-tokens)", param)
    return {"max_new_tokens": limit if asked is None else asked,
            "temperature": 0.0 if body.temperature is None else body.temperature,
            "top_p": 1.0 if body.top_p is None else body.top_p,
            "seed": None if body.seed is None else body.seed % 2**63}  # any 64-bit seed, as OpenAI takes it


async def _image_bytes(url: str, state: ServerState, kind: str = "image") -> bytes:
    """The encoded bytes of an image (or a video: `kind`) URL, within the server's size limit."""
    limit = state.settings.max_video_bytes if kind == "video" else state.settings.max_image_bytes
    if url.startswith("data:"):
        return data_url_bytes(url, limit, kind)
    if url.lower().startswith(("http://", "https://")):
        if state.remote is None:
            raise bad_request("remote_images_disabled", f"remote {kind} URLs are refused by this server; send the "
                              f"{kind} as a data URL (or start trio-serve with --allow-remote-images)", "messages")
        return await remote_image_bytes(url, state.remote, limit, kind)
    example = "data:video/mp4;base64,..." if kind == "video" else "data:image/png;base64,..."
    raise bad_request(f"invalid_{kind}", f"the {kind} URL must be a data: URL ({example})", "messages")


def _queue_full(worker: GenerationWorker, settings: ServeSettings) -> ApiError:
    seconds = worker.retry_after()
    return ApiError(429, "queue_full", f"the server is busy: {settings.max_queue} requests are already waiting; "
                                       f"retry in {seconds} s", headers={"Retry-After": str(seconds)})


# ---- answers -----------------------------------------------------------------------------------------------
async def _next_event(job: Job, state: ServerState, deadline: float, request: Request | None = None):
    """The job's next (kind, value) event; None once `request`'s client has gone (checked every
    DISCONNECT_POLL_S); ApiError 504 at the deadline."""
    while True:
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            state.worker.cancel(job)
            raise ApiError(504, "timeout", f"no answer within this server's {state.settings.timeout:g} s request "
                                           "timeout (queue wait included); retry later or ask for fewer tokens")
        try:
            return await asyncio.wait_for(job.events.get(), remaining if request is None else
                                          min(remaining, DISCONNECT_POLL_S))
        except TimeoutError:
            if request is not None and await request.is_disconnected():
                return None


async def _answer(job: Job, request: Request, state: ServerState, deadline: float) -> Answer | None:
    done = False
    try:
        while True:
            event = await _next_event(job, state, deadline, request)
            if event is None:
                state.metrics.errors.labels(kind="client_disconnected").inc()
                return None
            kind, value = event  # "done" or "error": a job that is not streamed gets no text events
            if kind == "error":
                raise value
            done = True
            return value
    finally:
        if not done:
            state.worker.cancel(job)


class EventStream(StreamingResponse):
    """text/event-stream that always closes its event generator, also when the client leaves mid-stream
    (then the generator's cleanup cancels the job and so stops the generation)."""

    def __init__(self, events):
        super().__init__(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()


async def _events(job: Job, body: ChatCompletionRequest, state: ServerState, deadline: float):
    """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`."""
    ident, created, model = _completion_id(), int(time.time()), state.settings.model_name

    def chunk(delta: Delta, finish_reason=None, usage=None) -> str:
        choices = [] if usage is not None else [ChunkChoice(delta=delta, finish_reason=finish_reason)]
        event = ChatCompletionChunk(id=ident, created=created, model=model, choices=choices, usage=usage)
        data = event.model_dump(exclude_none=True)  # deltas carry only what they set, as OpenAI's do
        for choice in data["choices"]:
            choice.update(logprobs=None, finish_reason=finish_reason)
        return f"data: {json.dumps(data)}\n\n"

    finished = False
    try:
        yield chunk(Delta(role="assistant", content=""))
        while True:
            kind, value = await _next_event(job, state, deadline)
            if kind == "text":
                yield chunk(Delta(content=value))
            elif kind == "done":
                yield chunk(Delta(), value.finish_reason)
                if body.include_usage:
                    yield chunk(Delta(), usage=_usage(value, state))
                finished = True
                yield "data: [DONE]\n\n"
                return
            else:
                raise value
    except ApiError as error:  # the status line is already sent: the error travels as an event
        finished = True
        state.metrics.errors.labels(kind=error.code).inc()
        yield f"data: {json.dumps(error.body())}\n\n"
    finally:
        if not finished:
            state.worker.cancel(job)
            state.metrics.errors.labels(kind="client_disconnected").inc()


def _usage(answer: Answer, state: ServerState) -> Usage:
    plan = state.pipeline.plan
    kept = [len(k) for k in answer.kept]
    after = kept[-1] if kept else plan.num_image_tokens  # a vision stage already pruned the decoder's count
    return Usage(prompt_tokens=answer.prompt_tokens, completion_tokens=answer.completion_tokens,
                 total_tokens=answer.prompt_tokens + answer.completion_tokens,
                 image_tokens=ImageTokens(before_pruning=plan.full_image_tokens, after_pruning=after,
                                          kept_per_cut=kept))


def _completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def _model_card(state: ServerState) -> ModelCard:
    plan = state.running_worker().pipeline.plan
    return ModelCard(id=state.settings.model_name, created=state.started, max_text_tokens=plan.max_text_tokens,
                     max_new_tokens=plan.max_new_tokens, image_tokens=plan.num_image_tokens,
                     schedule=plan.schedule.describe(plan.num_layers, plan.full_image_tokens))


# ---- errors in OpenAI's shape ------------------------------------------------------------------------------
class RequestGate:
    """Counts /v1 requests; refuses, before their body is read, those without the API key and those whose
    declared Content-Length is over the body limit (a body without one is cut off by the route's own
    limit while it is read; Starlette would answer a declared one in plain text, not OpenAI's shape)."""

    def __init__(self, app, state: ServerState):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            self.state.metrics.count_request(scope["path"])
            error = self._refusal(dict(scope["headers"]))
            if error is not None:
                return await self.state.error_response(error)(scope, receive, send)
        await self.app(scope, receive, send)

    def _refusal(self, headers: dict) -> ApiError | None:
        key = self.state.settings.api_key
        if key is not None and not hmac.compare_digest(headers.get(b"authorization", b""), f"Bearer {key}".encode()):
            return ApiError(401, "invalid_api_key", "missing or incorrect API key; send the header "
                            "'Authorization: Bearer KEY' with the key trio-serve was started with",
                            headers={"WWW-Authenticate": "Bearer"})
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.state.settings.max_body_bytes:
            return _body_too_large(self.state.settings)
        return None


class ReplicaHeader:
    """Names the replica that answered in every response's headers (`x-trio-replica`)."""

    def __init__(self, app, replica: str):
        self.app, self.header = app, (REPLICA_HEADER.encode(), replica.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_named(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, send_named)


def _body_too_large(settings: ServeSettings) -> ApiError:
    return ApiError(413, "request_too_large", f"the request body is over this server's limit of "
                                              f"{settings.max_body_bytes} bytes; send a smaller image")


def _add_error_handlers(app: FastAPI, state: ServerState) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request, error: ApiError):
        return state.error_response(error)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request, error: RequestValidationError):
        return state.error_response(_validation_error(error.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, error: StarletteHTTPException):
        if error.status_code == 413:  # a body without Content-Length, cut off while it was read
            return state.error_response(_body_too_large(state.settings))
        code = HTTP_CODES.get(error.status_code, "http_error")
        message = f"{request.method} {request.url.path}: {error.detail}"
        return state.error_response(ApiError(error.status_code, code, message, headers=error.headers))

    @app.exception_handler(Exception)
    async def unexpected(request, error: Exception):
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        return state.error_response(ApiError(500, "internal_error", f"internal error: {type(error).__name__}"))


def _validation_error(errors) -> ApiError:
    """The first problem of a request body that is not JSON or does not fit the schema, as one 400."""
    first = errors[0]
    if first["type"] == "json_invalid":
        reason = first.get("ctx", {}).get("error", "invalid JSON")
        return bad_request("invalid_json", f"the request body is not valid JSON ({reason} at character "
                           f"{first['loc'][-1]})")
    where = [str(part) for part in first["loc"] if part != "body"]
    param = ".".join(where) or first.get("ctx", {}).get("param")  # a whole-request check names its field in ctx
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    if first["type"] == "missing" and not param:
        message = "the request body is missing"
    elif first["type"] in ("model_attributes_type", "dict_type") and not where:
        message = ("the request body is not a JSON object; send one with the header Content-Type: "
                   "application/json")
    else:
        message = first["msg"]
    prefix = ".".join(where) + ": " if where else ""  # a whole-request check's message names its field itself
    return bad_request("invalid_request", f"{prefix}{message}{more}", param)
