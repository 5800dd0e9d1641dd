"""The HTTP server: FastAPI + uvicorn, API-key auth, input limits, Prometheus metrics, micro-batching.

Endpoints: POST /v1/predict (JSON: base64 images or texts; or multipart files), POST /v1/generate (language
models: a prompt and sampling options), POST /v1/explain (classifiers: attributions for a few inputs, JSON),
GET /v1/model (the card), GET /healthz,
GET /readyz (open), GET /metrics (Prometheus), GET /docs and /openapi.json. Everything but the health
endpoints needs `Authorization: Bearer <key>`: 401 without a key, 403 with a wrong one (the docs are open
with --public-docs).

Under hostile load the server answers instead of falling over: images are refused from their header above a
pixel limit (422), the model's work queue is bounded (503 with Retry-After when full), every request has a
deadline (504), and each key can be held to a request rate (429 with Retry-After).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time
import warnings
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nnrecipe.deploy.card import model_card, sha256
from nnrecipe.deploy.guards import MAKE_KEY, Access, Admission, key_problem, within_deadline
from nnrecipe.engine.config import Seed
from nnrecipe.errors import UserError, existing_file, first_line, read_utf8
from nnrecipe.extras import missing_extra
from nnrecipe.runs import Run, open_run
from nnrecipe.tasks.family import family_of
from nnrecipe.tasks.outputs import Generated
from nnrecipe.tasks.serving import MAX_PIXELS, InputError, Predictor, serving_precision

log = logging.getLogger("nnrecipe.serve")


@dataclass
class ServeConfig:
    run_dir: Path
    api_keys: list[str] = field(default_factory=list)
    insecure_no_auth: bool = False
    onnx: Path | None = None
    max_body_bytes: int = 10 * 1024 * 1024
    max_batch: int = 64  # inputs per request
    batch_max: int = 64  # inputs per model call (micro-batching across requests)
    batch_wait_ms: float = 5.0  # how long a request waits for others to join its model call
    max_text_chars: int = 10_000  # text, NER and language-model runs: longest text (or prompt) accepted
    max_new_tokens: int = 512  # language-model runs: most tokens one /v1/generate request may ask for
    max_explain_inputs: int = 4  # inputs per /v1/explain request: an explanation costs tens of forward passes
    precision: str = "auto"  # eager PyTorch: auto (= fp32, measured faster under load), fp32 or bf16
    max_image_pixels: int = MAX_PIXELS  # image runs: width x height read from the header, refused above (422)
    max_queue: int = 256  # inputs admitted at once (decoding, waiting or in the model); 503 above
    deadline_s: float = 30.0  # a request not answered by then gets 504 (its queued work is dropped)
    rate_limit: float = 0.0  # requests per second per API key (per client address without auth); 0 = none
    rate_burst: int = 0  # requests a key may send at once above the rate (0 = twice the rate, at least 1)
    public_docs: bool = False  # /docs and /openapi.json without a key

    def __post_init__(self) -> None:
        if self.batch_wait_ms / 1000 >= self.deadline_s:  # a lone request would wait out its own deadline
            raise UserError(
                f"--batch-wait-ms {self.batch_wait_ms:g}: must be below the deadline (--deadline-s {self.deadline_s:g})"
            )
        if self.onnx is not None and self.precision == "bf16":  # it was ignored: the graph runs as exported
            raise UserError("--precision bf16: eager PyTorch only; an --onnx model runs in its exported numerics")


def check_listen(host: str, port: int) -> None:
    """One line, before the model loads, when the address cannot be listened on: a host that does not
    resolve or a port in use was uvicorn's ERROR line after start-up, and exit status 3."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise UserError(
            f"--host {host}: no such host or address ({getattr(e, 'strerror', None) or first_line(e)})"
        ) from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as e:
            raise UserError(f"--host {host} --port {port}: cannot listen there ({e.strerror})") from None


class GenerateRequest(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)  # JSON's Infinity/NaN: a 422 here, as the recipe would refuse

    prompt: str = Field(..., description="Text to continue.")
    max_new_tokens: int | None = Field(None, ge=1, description="Tokens to generate (default: the run's recipe).")
    temperature: float | None = Field(None, ge=0, description="Softmax temperature; 0 = the most likely token.")
    top_k: int | None = Field(None, ge=0, description="Sample among the k most likely tokens; 0 = all.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling mass.")
    seed: Seed | None = Field(None, description="Sampling seed (default: the run's recipe).")
    stream: bool = Field(False, description="Send the text as server-sent events while it is generated.")


class PredictRequest(BaseModel):
    inputs: list[str] = Field(
        ..., description="Image runs: base64-encoded image files. Text and NER runs: texts.", min_length=1
    )


class ExplainRequest(BaseModel):
    inputs: list[str] = Field(
        ..., description="Image runs: base64-encoded image files. Text and NER runs: texts.", min_length=1
    )
    method: str | None = Field(
        None, description="Images: gradcam (default), ig, occlusion, saliency. Text: ig (default), occlusion, saliency."
    )
    target: str | None = Field(None, description="Explain this label (default: the predicted one; not for NER).")


def read_api_keys(key_file: Path | None) -> list[str]:
    """Keys from a file (one per line) and/or NNRECIPE_API_KEYS (comma-separated), each one a key a client can
    send and not quickly guessed (guards.key_problem); a bad one is named by where it is, never shown."""
    given = [
        (f"NNRECIPE_API_KEYS, key {i}", k.strip())
        for i, k in enumerate(os.environ.get("NNRECIPE_API_KEYS", "").split(","), 1)
    ]
    if key_file is not None:
        existing_file(key_file, "--api-key-file: key file")
        given += [(f"{key_file}, line {i}", line.strip()) for i, line in enumerate(read_utf8(key_file).splitlines(), 1)]
    for where, key in given:
        if key and (problem := key_problem(key)):
            raise UserError(f"API key ({where}) {problem}; make one with {MAKE_KEY}")
    return [key for _, key in given if key]


class MicroBatcher:
    """Requests put their decoded inputs in a queue; one worker takes up to `batch_max` inputs (waiting at
    most `batch_wait_ms` for more to arrive) and runs the model once for all of them, in a thread."""

    def __init__(self, predict, batch_max: int, wait_ms: float, batch_hist: Histogram):
        self.predict, self.batch_max, self.wait = predict, batch_max, wait_ms / 1000
        self.queue: asyncio.Queue = asyncio.Queue()
        self.batch_hist = batch_hist
        self.task: asyncio.Task | None = None

    async def submit(self, items: list) -> list:
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((items, fut))
        return await fut

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            size = len(jobs[0][0])
            deadline = loop.time() + self.wait
            while size < self.batch_max:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self.queue.get(), timeout)
                except asyncio.TimeoutError:
                    break
                jobs.append(job)
                size += len(job[0])
            jobs = [job for job in jobs if not job[1].done()]  # requests past their deadline are dropped
            if not jobs:
                continue
            items = [x for batch, _ in jobs for x in batch]
            self.batch_hist.observe(len(items))
            try:
                results = await loop.run_in_executor(None, self.predict, items)
            except Exception as e:  # a model failure fails these requests, never the worker
                for _, fut in jobs:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            start = 0
            for batch, fut in jobs:
                if not fut.done():
                    fut.set_result(results[start : start + len(batch)])
                start += len(batch)


async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422, one line per problem naming its field. FastAPI's own handler echoes each bad value back, and a
    JSON Infinity or NaN cannot be written back: such a request was answered 500."""
    return JSONResponse({"detail": request_problems(exc.errors())}, status_code=422)


def request_problems(errors: list[dict]) -> str:
    """pydantic's errors as `field: problem; ...` (`inputs.1: Input should be a valid string`)."""
    return "; ".join(
        "{}: {}".format(".".join(str(p) for p in e["loc"] if p != "body") or "body", e["msg"]) for e in errors
    )


@dataclass
class Metrics:
    """The server's Prometheus metrics, in a registry of its own (several apps in one process never clash)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter("nnrecipe_requests_total", "HTTP requests", ["route", "status"], registry=r)
        self.latency = Histogram("nnrecipe_request_seconds", "Request latency", ["route"], registry=r)
        self.batch = Histogram("nnrecipe_model_batch_size", "Inputs per model call", registry=r,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))  # fmt: skip
        self.load = Gauge("nnrecipe_model_load_seconds", "Time to load the model", registry=r)


def create_app(cfg: ServeConfig) -> FastAPI:
    started = time.perf_counter()
    run = open_run(cfg.run_dir)  # a run that cannot be served says so first: an RL run asked for a key, then
    family = family_of(run).require("serve")  # refused once given one
    if not cfg.api_keys and not cfg.insecure_no_auth:
        raise UserError(
            "refusing to serve without an API key: give --api-key-file or NNRECIPE_API_KEYS, "
            "or --insecure-no-auth to serve without authentication"
        )
    if cfg.insecure_no_auth:
        log.warning(
            "serving WITHOUT authentication (--insecure-no-auth): anyone who can reach the port can use the model"
        )
    # The server's own --max-image-pixels is read from each header; PIL's warning above its 89-megapixel
    # guard logged a line (a traceback's worth) for every oversized request an attacker sent.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    check_queue(cfg, family)
    predictor = load_predictor(run, cfg.onnx, cfg.precision)
    predictor.max_pixels = cfg.max_image_pixels
    admission = Admission(cfg.max_queue)
    access = Access(cfg.api_keys, cfg.insecure_no_auth, cfg.rate_limit, cfg.rate_burst)
    metrics = Metrics()
    metrics.load.set(time.perf_counter() - started)
    batcher = MicroBatcher(predictor.predict, cfg.batch_max, cfg.batch_wait_ms, metrics.batch)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        batcher.task = asyncio.create_task(batcher.run())
        yield
        batcher.task.cancel()  # uvicorn drains in-flight requests on SIGTERM before this runs

    docs = {} if cfg.public_docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(
        title="nnrecipe model server", version="1", description=f"Serving {cfg.run_dir}", lifespan=lifespan, **docs
    )
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.middleware("http")(limits_logs_metrics(cfg.max_body_bytes, metrics))
    add_service_routes(app, cfg, run, family, predictor, batcher, metrics, access)
    add_predict_route(app, cfg, family, predictor, batcher, admission, access)
    if family.offers("explain"):
        add_explain_route(app, cfg, run, family, predictor, admission, access)
    if family.offers("generate"):
        add_generate_route(app, cfg, predictor, admission, access)
    return app


def check_queue(cfg: ServeConfig, family) -> None:
    """Every request size the server accepts fits its work queue: such a request was 503 "busy; retry" on an
    idle server, forever. The explain limit counts only where the family serves /v1/explain (it refused
    --max-queue 1 for a language model, which has no /v1/explain)."""
    sizes = [("--max-batch", cfg.max_batch)]
    if family.offers("explain"):
        sizes.append(("--max-explain-inputs", cfg.max_explain_inputs))
    for flag, most in sizes:
        if most > cfg.max_queue:
            raise UserError(f"--max-queue {cfg.max_queue}: below {flag} {most}, so a request of that size could "
                            f"never be admitted: raise --max-queue or lower {flag}")  # fmt: skip


def limits_logs_metrics(max_body_bytes: int, metrics: Metrics):
    """The HTTP middleware: a body over the limit is refused from its Content-Length (413); whatever a
    handler raises is a 500 that leaves the worker running; every request is counted, timed and logged."""

    async def middleware(request: Request, call_next):
        t0 = time.perf_counter()
        route = request.url.path
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body_bytes:
            response: Response = JSONResponse(
                {"detail": f"request body over the {max_body_bytes} byte limit"}, status_code=413
            )
        else:
            try:
                response = await call_next(request)
            except Exception:  # nothing a client sends may take the worker down
                log.exception("unhandled error")
                response = JSONResponse({"detail": "internal error"}, status_code=500)
        seconds = time.perf_counter() - t0
        metrics.requests.labels(route, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(seconds)
        log.info(json.dumps({"method": request.method, "path": route, "status": response.status_code,
                             "ms": round(seconds * 1000, 2)}))  # fmt: skip
        return response

    return middleware


def add_service_routes(app: FastAPI, cfg: ServeConfig, run: Run, family, predictor: Predictor,
                       batcher: MicroBatcher, metrics: Metrics, access: Access) -> None:  # fmt: skip
    """Everything but the model's work: health (open), readiness (open), the card, metrics and the docs."""
    if not cfg.public_docs:

        @app.get("/openapi.json", dependencies=[Depends(access.authorize)], include_in_schema=False)
        def openapi() -> JSONResponse:
            return JSONResponse(app.openapi())

        @app.get("/docs", dependencies=[Depends(access.authorize)], include_in_schema=False)
        def swagger() -> HTMLResponse:
            return get_swagger_ui_html(openapi_url="/openapi.json", title="nnrecipe model server")

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> dict:
        if batcher.task is None or batcher.task.done():
            raise HTTPException(503, "model worker not running")
        return {"status": "ready"}

    # Built once, beside the model it describes: built per request, it hashed the whole weights file each
    # time (a card request cost as much as reading the checkpoint), and described the run's files as they
    # are now (a later `calibrate` or a resumed training), not the model this server had loaded.
    served = model_card(
        run, family, predictor.labels, predictor.model_name, predictor.facts(), backend=predictor.backend
    )

    @app.get("/v1/model", dependencies=[Depends(access.authorize)])
    def card() -> dict[str, Any]:
        return served

    @app.get("/metrics", dependencies=[Depends(access.authorize)])
    def metrics_text() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


# /v1/predict reads its body itself (JSON or multipart files), so its schema is declared here for the docs.
PREDICT_BODY = {
    "requestBody": {
        "content": {
            "application/json": {"schema": PredictRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                }
            },
        }
    }
}


def add_predict_route(app: FastAPI, cfg: ServeConfig, family, predictor: Predictor, batcher: MicroBatcher,
                      admission: Admission, access: Access) -> None:  # fmt: skip
    """POST /v1/predict: inputs decoded beside the event loop, then micro-batched into the model, within the
    work queue's bound and the deadline."""
    expected = 'JSON {"inputs": [...]}, ' + predictor.facts().get("input", {}).get("json", "one string per input")

    @app.post("/v1/predict", dependencies=[Depends(access.authorize_and_limit)],
              response_model=family.output.response, openapi_extra=PREDICT_BODY)  # fmt: skip
    async def predict(request: Request) -> dict:
        body = await request.body()
        if len(body) > cfg.max_body_bytes:  # chunked uploads carry no Content-Length
            raise HTTPException(413, f"request body over the {cfg.max_body_bytes} byte limit")
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            form = await request.form()
            files = [f for f in form.getlist("files") if hasattr(f, "read")]
            raw = [await f.read() for f in files]
            _check_batch(len(raw), cfg.max_batch)
            decode = predictor.decode
        else:
            try:
                raw = PredictRequest.model_validate_json(body).inputs
            except ValidationError as e:  # it said "1 validation error" and asked every family for images
                raise HTTPException(422, f"{request_problems(e.errors())} (expected: {expected})") from None
            _check_batch(len(raw), cfg.max_batch)
            decode = predictor.decode_text

        def decode_all() -> list:
            items = [decode(data, i) for i, data in enumerate(raw)]
            for i, item in enumerate(items):
                if isinstance(item, str) and len(item) > cfg.max_text_chars:
                    raise InputError(f"inputs[{i}]: {len(item)} characters; the limit is {cfg.max_text_chars}")
            return items

        admission.take(len(raw))  # before decoding: a flood is refused before it costs anything
        # Decoding runs beside the event loop, which keeps answering other requests meanwhile.
        decoding = asyncio.get_running_loop().run_in_executor(None, decode_all)

        async def work() -> list:
            try:
                items = await asyncio.shield(decoding)
            except InputError as e:
                raise HTTPException(422, str(e)) from None
            return await batcher.submit(items)

        job = asyncio.ensure_future(work())
        # The inputs stay counted until the model answered them, or until the request gave up and its
        # decoding (a thread, which cannot be stopped) ended too.
        admission.give_when_done(len(raw), asyncio.gather(job, decoding, return_exceptions=True))
        return {"predictions": await within_deadline(job, cfg.deadline_s)}


def add_generate_route(app: FastAPI, cfg: ServeConfig, predictor: Predictor, admission: Admission,
                       access: Access) -> None:  # fmt: skip
    """POST /v1/generate (language models): a prompt and sampling options within the server's limits; the
    text at once (with the deadline), or streamed as server-sent events."""
    predictor.limit = cfg.max_new_tokens  # /v1/predict's continuations too

    @app.post("/v1/generate", dependencies=[Depends(access.authorize_and_limit)], response_model=Generated)
    async def generate(request: GenerateRequest) -> dict:
        if len(request.prompt) > cfg.max_text_chars:
            raise HTTPException(422, f"prompt: {len(request.prompt)} characters; the limit is {cfg.max_text_chars}")
        if (request.max_new_tokens or 0) > cfg.max_new_tokens:
            raise HTTPException(422, f"max_new_tokens: {request.max_new_tokens}; the limit is {cfg.max_new_tokens}")
        options = request.model_dump(exclude={"prompt", "stream"})
        loop = asyncio.get_running_loop()
        try:
            predictor.check(request.prompt, "prompt")  # e.g. characters a char-level model never saw
        except UserError as e:
            raise HTTPException(422, str(e)) from None
        if request.stream:  # no deadline: the client sees the text as it comes and can hang up
            admission.take(1)
            return StreamingResponse(
                stream_generation(predictor, request.prompt, options, loop, admission),
                media_type="text/event-stream",
            )
        admission.take(1)
        given_up = threading.Event()
        job = loop.run_in_executor(
            None,
            lambda: predictor.generate(request.prompt, stop_when=given_up.is_set, **options),
        )
        admission.give_when_done(1, job)
        try:
            return await within_deadline(asyncio.shield(job), cfg.deadline_s)
        finally:  # after a 504 the generation stops at its next token: it ran on to the limit for no one
            given_up.set()


def add_explain_route(app: FastAPI, cfg: ServeConfig, run: Run, family, predictor: Predictor, admission: Admission,
                      access: Access) -> None:  # fmt: skip
    """POST /v1/explain: the inputs of /v1/predict (JSON), at most `max_explain_inputs` of them, explained by
    the run's eager model (a copy of its own: attribution hooks never touch the model that predicts), one
    request at a time; its inputs count against the work queue and it has the same deadline."""
    from nnrecipe.trust.explain import explain_decoded

    subject = family.explain_subject(run)
    one_at_a_time = threading.Lock()

    def explain_all(raw: list[str], method: str | None, target: str | None) -> list[dict[str, Any]]:
        items = [predictor.decode_text(data, i) for i, data in enumerate(raw)]
        for i, item in enumerate(items):
            if isinstance(item, str) and len(item) > cfg.max_text_chars:
                raise InputError(f"inputs[{i}]: {len(item)} characters; the limit is {cfg.max_text_chars}")
        with one_at_a_time:
            return explain_decoded(subject, items, method, target)

    @app.post("/v1/explain", dependencies=[Depends(access.authorize_and_limit)])
    async def explain(request: ExplainRequest) -> dict:
        if len(request.inputs) > cfg.max_explain_inputs:
            raise HTTPException(
                422, f"{len(request.inputs)} inputs in one explain request; the limit is {cfg.max_explain_inputs}"
            )
        admission.take(len(request.inputs))
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(None, explain_all, request.inputs, request.method, request.target)
        admission.give_when_done(len(request.inputs), job)
        try:
            return {"explanations": await within_deadline(asyncio.shield(job), cfg.deadline_s)}
        except (InputError, UserError) as e:  # a bad input, method or target: this request's 422
            raise HTTPException(422, str(e)) from None
        except ModuleNotFoundError as e:  # captum not installed: the server says which extra, not a 500
            missing = missing_extra(e)
            if missing is None:
                raise
            raise HTTPException(501, str(missing)) from None


async def stream_generation(predictor, prompt: str, options: dict, loop, admission: Admission):
    """Server-sent events: `data: {"text": ...}` per new piece of text, then `data: {"done": true, ...}`
    with the counts (or `event: error`). The model runs in a thread and hands pieces over as they come; a
    client that hangs up stops it at the next token (it went on to the token limit for no one, holding its
    place in the work queue), and the place is given back when the generation ends."""
    queue: asyncio.Queue = asyncio.Queue()
    hung_up = threading.Event()

    def put(item) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, item)

    def work() -> None:
        try:
            pieces = dict(on_piece=lambda text: put(("text", text)), stop_when=hung_up.is_set)
            put(("done", predictor.generate(prompt, **pieces, **options)))
        except Exception as e:  # a failure ends this stream, never the worker
            log.exception("generation failed")
            put(("error", str(e)))

    job = loop.run_in_executor(None, work)
    admission.give_when_done(1, job)
    try:
        while True:
            kind, value = await queue.get()
            if kind == "text":
                yield f"data: {json.dumps({'text': value})}\n\n"
            elif kind == "done":
                counts = {k: value[k] for k in ("new_tokens", "tokens_per_s")}
                yield f"data: {json.dumps({'done': True, **counts})}\n\n"
                break
            else:
                yield f"event: error\ndata: {json.dumps({'detail': value})}\n\n"
                break
    finally:  # the response is closed or cancelled when the client disconnects
        hung_up.set()
    await job


def load_predictor(run: Run, onnx_path: Path | None = None, precision: str = "auto") -> Predictor:
    """The run's family's predictor, or one line saying that this family is not served."""
    family = family_of(run).require("serve")
    predictor = family.predictor(run, onnx_path, serving_precision(precision))
    sample = predictor.sample_file() if onnx_path is not None else None
    if sample is not None:  # another run's export loaded, then failed every request with a 500
        try:
            predictor.predict([predictor.decode(sample, 0)])
        except Exception as e:  # noqa: BLE001 - whatever the mismatch makes ONNX Runtime or the head raise
            first = first_line(e)
            raise UserError(
                f"--onnx {onnx_path}: not an export of {run.dir} (one input fails: {first[:300]})"
            ) from None
    if onnx_path is not None:
        check_card(Path(onnx_path), run)
    return predictor


def check_card(onnx_path: Path, run: Run) -> None:
    """An export of another run of the same shapes (another seed, an earlier training) served its answers
    under this run's name: its card's hash of the weights it came from must be this run's."""
    path = onnx_path.with_name(onnx_path.name + ".card.json")
    try:
        card = json.loads(path.read_text())
        exported_from = card["sha256"]["weights"]
    except (OSError, ValueError, KeyError, TypeError):  # no card, or not ours: the input check above stands
        return
    if exported_from and run.best_checkpoint.is_file() and exported_from != sha256(run.best_checkpoint):
        source = card.get("source_run", "?")
        raise UserError(f"--onnx {onnx_path}: exported from other weights than {run.dir}'s (its card: {source}); "
                        f"export this run, or serve {source}")  # fmt: skip
    now = run.meta().get("temperature")
    if "temperature" in card and card["temperature"] != now:  # calibrated (again) after the export
        raise UserError(f"--onnx {onnx_path}: exported under temperature {card['temperature']}, the run's is now "
                        f"{now} (`nnrecipe calibrate` since): export it again")  # fmt: skip


def _check_batch(n: int, limit: int) -> None:
    if n == 0:
        raise HTTPException(422, "no inputs")
    if n > limit:
        raise HTTPException(422, f"{n} inputs in one request; the limit is {limit}")


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory` with several workers: the configuration travels as JSON."""
    raw = json.loads(os.environ["NNRECIPE_SERVE_CONFIG"])
    raw["run_dir"] = Path(raw["run_dir"])
    raw["onnx"] = Path(raw["onnx"]) if raw.get("onnx") else None
    return create_app(ServeConfig(**raw))
