"""The OpenAI-compatible HTTP API of a served model, as a Ray Serve application with a FastAPI ingress.

Routes: POST /v1/completions (prompt as text or token ids, one or several; `logprobs`, `echo`, `stop`,
`max_tokens`, `stream`), POST /v1/chat/completions (the model's chat template; `stream` as server-sent events),
GET /v1/models, GET /health. Decoding is greedy. Every choice carries the extension field `drllm`: the operating
point, the path taken and the layers executed.

Requests that arrive together are batched by Ray Serve (`@serve.batch`, serve.max_batch_size and
serve.batch_wait_timeout_s); a batch runs as one `Engine.run` (drllm.serving.engine) in a worker thread, so the
replica keeps answering health checks and taking requests meanwhile. A bad request gets a 4xx whose OpenAI-style
body names the field (`error.param`); anything the server did not expect a 500 with the same body shape.

Ray Serve config files (`serve run` / `serve deploy`) name `drllm.serving.app:build_app` with the settings as
`args` (docs/serving.md)."""
from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from drllm.serving.engine import Engine, Event, Job, RequestError
from drllm.serving.settings import ServeSettings


def _error(status: int, message: str, param: str | None = None, code: str | None = None,
           kind: str = "invalid_request_error"):
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status)


async def _body(request) -> dict:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(f"the request body is not valid JSON ({exc}); expected a JSON object", None,
                           "invalid_json") from None
    if not isinstance(body, dict):
        raise RequestError(f"the request body must be a JSON object, got a {type(body).__name__}", None,
                           "invalid_json")
    return body


def _stream_flag(body: dict) -> bool:
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(f"'stream' must be true or false, got {stream!r}", "stream")
    return stream


_END = object()


class LocalBatcher:
    """Ray Serve's streaming `@serve.batch` contract outside a Serve replica (which `serve.batch` requires): a call
    with one item returns an async iterator of that item's results; items arriving within `wait_s` of the first
    (up to `max_batch_size`) go to `handler` as one list, and each list it yields holds one result per item
    (StopIteration once an item is done). In-process serving (`serve_in_process`: tests, one machine without Ray)."""

    def __init__(self, handler, max_batch_size: int, wait_s: float):
        self.handler, self.max_batch_size, self.wait_s = handler, max_batch_size, wait_s
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None

    async def __call__(self, item) -> AsyncIterator:
        if self.queue is None:
            self.queue = asyncio.Queue()
            self.task = asyncio.create_task(self._batches())
        results: asyncio.Queue = asyncio.Queue()
        await self.queue.put((item, results))
        while True:
            value = await results.get()
            if value is _END:
                return
            if isinstance(value, BaseException):
                raise value
            yield value

    async def _batches(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.wait_s
            while len(batch) < self.max_batch_size and (left := deadline - loop.time()) > 0:
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except asyncio.TimeoutError:
                    break
            try:
                async for values in self.handler([item for item, _ in batch]):
                    for (_, results), value in zip(batch, values):
                        if value is not StopIteration:
                            results.put_nowait(value)
            except Exception as exc:  # noqa: BLE001 - every caller of the batch gets the error
                for _, results in batch:
                    results.put_nowait(exc)
            for _, results in batch:
                results.put_nowait(_END)


class ModelServer:
    """One replica: the engine, the request batcher and the routes (`make_app`). In a Ray Serve replica requests
    are batched by `@serve.batch`; with in_process=True by `LocalBatcher` (the same contract, no Ray)."""

    def __init__(self, settings: dict | ServeSettings, in_process: bool = False):
        self.settings = settings if isinstance(settings, ServeSettings) else ServeSettings.from_dict(settings)
        self.engine = Engine(self.settings)
        self.created = int(time.time())
        self.batches = 0  # batches run by this replica (GET /health)

        async def generate(jobs: list[Job]) -> AsyncIterator[list]:
            self.batches += 1
            steps = self.engine.run(jobs)
            done = [False] * len(jobs)
            while True:
                events = await asyncio.to_thread(next, steps, None)
                if events is None:
                    return
                out = []
                for index, event in enumerate(events):
                    out.append(StopIteration if done[index] else event)
                    if event is not None and event.finished:
                        done[index] = True
                yield out

        if in_process:
            self._generate = LocalBatcher(generate, self.settings.max_batch_size, self.settings.batch_wait_timeout_s)
        else:
            from ray import serve

            self._generate = serve.batch(max_batch_size=self.settings.max_batch_size,
                                         batch_wait_timeout_s=self.settings.batch_wait_timeout_s)(generate)

    async def events(self, job: Job) -> AsyncIterator[Event]:
        """The events of one job, as its batch produces them."""
        async for event in self._generate(job):
            if event is not None:
                yield event

    async def finished(self, job: Job) -> tuple[str, Event]:
        """(the whole text, the final event) of one job."""
        text, final = [], None
        async for event in self.events(job):  # to the stream's end, so the batcher's last future is read
            text.append(event.text)
            if event.finished:
                final = event
        if final is None:
            raise RuntimeError("the batch ended before the job finished")
        return "".join(text), final

    def extension(self, job: Job, event: Event) -> dict:
        path = event.path
        return {"operating_point": job.point, "path": str(path), "layers": list(path.layers),
                "layers_executed": len(path), "num_layers": path.num_layers,
                "layer_applications": len(path) * (1 + max(0, event.completion_tokens - 1)),
                "read_blocks": self.engine.points[job.point].read_cost(event.prompt_tokens)}

    # -- routes -----------------------------------------------------------------------------------------------

    async def completions(self, body: dict):
        stream = _stream_flag(body)
        jobs = self.engine.completion_jobs(body)
        model, rid = body["model"], f"cmpl-{uuid.uuid4().hex}"
        if stream:
            if any(job.echo or job.logprobs is not None for job in jobs):
                raise RequestError("'stream' cannot be combined with 'echo' or 'logprobs' on this server",
                                   "stream")
            return StreamingResponse(self._stream_completions(jobs, model, rid), media_type="text/event-stream")
        results = await asyncio.gather(*(self.finished(job) for job in jobs))
        choices = []
        for index, (job, (text, event)) in enumerate(zip(jobs, results)):
            if job.echo:
                text = self.engine.request_tokenizer.decode(job.prompt_ids, skip_special_tokens=False) + text
            choices.append({"index": index, "text": text, "logprobs": event.logprobs,
                            "finish_reason": event.finish_reason, "drllm": self.extension(job, event)})
        return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
                "choices": choices, "usage": _usage(event for _, event in results)}

    async def _stream_completions(self, jobs: list[Job], model: str, rid: str):
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(index: int, job: Job):
            try:
                async for event in self.events(job):
                    await queue.put((index, job, event))
            except Exception as exc:  # noqa: BLE001 - reported to the client as an error event
                await queue.put((index, job, exc))

        tasks = [asyncio.create_task(pump(i, job)) for i, job in enumerate(jobs)]
        remaining = len(jobs)
        try:
            while remaining:
                index, job, event = await queue.get()
                if isinstance(event, Exception):
                    remaining -= 1
                    yield _sse({"error": {"message": f"{type(event).__name__}: {event}", "type": "server_error",
                                          "param": None, "code": None}})
                    continue
                choice = {"index": index, "text": event.text, "logprobs": None,
                          "finish_reason": event.finish_reason}
                if event.finished:
                    remaining -= 1
                    choice["drllm"] = self.extension(job, event)
                yield _sse({"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
                            "choices": [choice]})
            yield "data: [DONE]\n\n"
        finally:
            for task in tasks:
                task.cancel()

    async def chat(self, body: dict):
        stream = _stream_flag(body)
        job = self.engine.chat_job(body)
        model, rid = body["model"], f"chatcmpl-{uuid.uuid4().hex}"
        if stream:
            return StreamingResponse(self._stream_chat(job, model, rid), media_type="text/event-stream")
        text, event = await self.finished(job)
        extension = self.extension(job, event)
        return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "logprobs": None, "finish_reason": event.finish_reason, "drllm": extension}],
                "usage": _usage([event]), "drllm": extension}

    async def _stream_chat(self, job: Job, model: str, rid: str):
        created = int(time.time())

        def chunk(delta: dict, finish: str | None = None, **extra) -> str:
            return _sse({"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                         "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
                         **extra})

        yield chunk({"role": "assistant", "content": ""})
        try:
            async for event in self.events(job):
                if event.finished:
                    if event.text:
                        yield chunk({"content": event.text})
                    yield chunk({}, event.finish_reason, usage=_usage([event]), drllm=self.extension(job, event))
                elif event.text:
                    yield chunk({"content": event.text})
        except Exception as exc:  # noqa: BLE001 - the stream has started: the error goes in it
            yield _sse({"error": {"message": f"{type(exc).__name__}: {exc}", "type": "server_error",
                                  "param": None, "code": None}})
        yield "data: [DONE]\n\n"

    def models(self) -> dict:
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": self.created,
                                            "owned_by": "drllm"} for model_id in self.engine.model_ids()]}

    def health(self) -> dict:
        return {"status": "ok", "model": self.engine.name, "operating_points": {
            name: point.describe() for name, point in self.engine.points.items()},
            "batching": self.settings.batching, "replica_pid": os.getpid(), "batches": self.batches}


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _usage(events) -> dict:
    events = list(events)
    prompt = sum(event.prompt_tokens for event in events)
    completion = sum(event.completion_tokens for event in events)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def make_app(server: ModelServer):
    """The FastAPI app answering for `server`."""
    app = FastAPI(title="drllm", description="Dr.LLM routed model, OpenAI-compatible")

    @app.exception_handler(RequestError)
    async def bad_request(request: Request, exc: RequestError):
        return _error(exc.status, exc.message, exc.param, exc.code)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return _error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", None, code)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):
        return _error(500, f"{type(exc).__name__}: {exc}", None, None, "server_error")

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await server.completions(await _body(request))

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await server.chat(await _body(request))

    @app.get("/v1/models")
    async def models():
        return server.models()

    @app.get("/health")
    async def health():
        return server.health()

    return app


def deployment(settings: ServeSettings):
    """The Ray Serve deployment of `settings`: replicas (fixed or autoscaled), CPUs, ongoing requests. The Serve
    controller health-checks every replica and starts a new one in place of one whose process died."""
    from ray import serve

    @serve.ingress()
    class DrLLMServer(ModelServer):
        def __serve_build_asgi_app__(self):
            return make_app(self)

    options: dict[str, Any] = {"name": "DrLLMServer", "max_ongoing_requests": settings.max_ongoing_requests,
                               "ray_actor_options": {"num_cpus": settings.replica_cpus}}
    if settings.autoscaling is not None:
        options["autoscaling_config"] = dict(settings.autoscaling)
    else:
        options["num_replicas"] = settings.num_replicas
    return serve.deployment(DrLLMServer, **options)


def build_app(args: dict | None = None):
    """Ray Serve's application builder (`import_path: drllm.serving.app:build_app` in a serve config; `args`:
    the settings)."""
    settings = ServeSettings.from_dict(args)
    return deployment(settings).bind(settings.to_dict())


def serve_in_process(settings: ServeSettings):
    """The same app without Ray (one process, one engine, LocalBatcher) on settings.host:port, in a daemon
    thread; returns the uvicorn server (`.should_exit = True` stops it). For tests and a quick local try."""
    import threading

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(make_app(ModelServer(settings, in_process=True)), host=settings.host,
                                           port=settings.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True, name="drllm-serve")
    thread.start()
    deadline = time.monotonic() + 600
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the in-process server did not start on {settings.host}:{settings.port}")
        time.sleep(0.05)
    return server
