"""The model server: auth matrix, every limit, bad input, concurrency, the card, ONNX backend."""

from __future__ import annotations

import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from nnrecipe.deploy.serve import ServeConfig, create_app
from nnrecipe.errors import UserError

KEY = "s3cret-key-for-the-tests"


@pytest.fixture(scope="session")
def run(trained_digits_run):
    return trained_digits_run


def digit_png(i: int) -> bytes:
    from sklearn.datasets import load_digits

    d = load_digits()
    buf = io.BytesIO()
    Image.fromarray(np.rint(d.images[i] * 255 / 16).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def client(run):
    with TestClient(
        create_app(
            ServeConfig(run_dir=run.dir, api_keys=[KEY, "other"], max_batch=8, max_body_bytes=200_000, precision="fp32")
        )
    ) as c:
        yield c


AUTH = {"Authorization": f"Bearer {KEY}"}


def test_refuses_to_start_without_a_key(run):
    with pytest.raises(UserError, match="refusing to serve without an API key"):
        create_app(ServeConfig(run_dir=run.dir))


def test_a_run_that_cannot_be_served_says_so_before_asking_for_a_key(tmp_path):
    """An RL run asked for an API key first, then, given one, was refused as an RL run."""
    from nnrecipe.runs import Run

    (tmp_path / "recipe.yaml").write_text("task: rl\nenv:\n  id: CartPole-v1\n")
    Run(tmp_path).update_meta(task="rl")
    with pytest.raises(UserError, match="rl: no serving for rl runs"):
        create_app(ServeConfig(run_dir=tmp_path, api_keys=[]))


@pytest.mark.parametrize(
    "text, where, problem, bad",
    [
        ("abc123\n", "line 1", "6 characters long, quickly guessed: use 16 or more", "abc123"),
        ("a-good-long-key-0123456789\n\nclé-de-l-api-très-longue\n", "line 3", "outside printable ASCII", "clé"),
        ("a key with spaces in it, long\n", "line 1", "outside printable ASCII", "spaces"),
    ],
)
def test_a_key_that_is_short_or_not_ascii_is_refused_by_where_it_is(tmp_path, monkeypatch, text, where, problem, bad):
    """A 6-character key was accepted (failed attempts are not rate-limited: it is guessed by trying them
    all), and a non-ASCII one too, which no request could match: an HTTP header is read as Latin-1."""
    from nnrecipe.deploy.serve import read_api_keys

    monkeypatch.delenv("NNRECIPE_API_KEYS", raising=False)
    (tmp_path / "keys.txt").write_text(text, encoding="utf-8")
    with pytest.raises(UserError, match=f"keys.txt, {where}\\) .*{problem}") as e:
        read_api_keys(tmp_path / "keys.txt")
    assert "secrets.token_urlsafe" in str(e.value) and bad not in str(e.value)  # the key is not shown
    monkeypatch.setenv("NNRECIPE_API_KEYS", "a-good-long-key-0123456789, short")
    with pytest.raises(UserError, match="NNRECIPE_API_KEYS, key 2\\) is 5 characters long"):
        read_api_keys(None)
    monkeypatch.setenv("NNRECIPE_API_KEYS", " a-good-long-key-0123456789 ,,")
    assert read_api_keys(None) == ["a-good-long-key-0123456789"]


@pytest.mark.parametrize(
    "path, method", [("/v1/predict", "post"), ("/v1/explain", "post"), ("/v1/model", "get"), ("/metrics", "get")]
)
def test_auth_matrix(client, path, method):
    body = {"json": {"inputs": [b64(digit_png(0))]}} if method == "post" else {}
    assert getattr(client, method)(path, **body).status_code == 401
    assert getattr(client, method)(path, headers={"Authorization": "Bearer wrong"}, **body).status_code == 403
    assert getattr(client, method)(path, headers={"Authorization": "Basic abc"}, **body).status_code == 401
    assert getattr(client, method)(path, headers=AUTH, **body).status_code == 200
    assert getattr(client, method)(path, headers={"Authorization": "Bearer other"}, **body).status_code == 200


def test_explain_answers_heat_maps_within_its_own_lower_input_limit(client):
    res = client.post("/v1/explain", headers=AUTH, json={"inputs": [b64(digit_png(i)) for i in (0, 1)]})
    rows = res.json()["explanations"]
    assert res.status_code == 200 and [r["method"] for r in rows] == ["gradcam", "gradcam"]
    assert [r["input"] for r in rows] == [0, 1] and rows[0]["target"] == rows[0]["predicted"]
    heat = np.asarray(Image.open(io.BytesIO(base64.b64decode(rows[0]["heatmap_png"]))))
    assert heat.shape == (8, 8) and heat.max() == 255  # the training size, scaled to its own maximum
    ig = client.post("/v1/explain", headers=AUTH, json={"inputs": [b64(digit_png(0))], "method": "ig", "target": "3"})
    assert ig.status_code == 200 and ig.json()["explanations"][0]["target"] == "3"
    five = client.post("/v1/explain", headers=AUTH, json={"inputs": [b64(digit_png(0))] * 5})
    assert five.status_code == 422 and "the limit is 4" in five.json()["detail"]  # /v1/predict takes 8
    for body, message in [({"inputs": [b64(digit_png(0))], "method": "lime"}, "--method: one or more of gradcam"),
                          ({"inputs": [b64(digit_png(0))], "target": "cat"}, "'cat' is not one of"),
                          ({"inputs": ["not base64!"]}, "inputs[0]: not valid base64")]:  # fmt: skip
        bad = client.post("/v1/explain", headers=AUTH, json=body)
        assert bad.status_code == 422 and message in bad.json()["detail"], bad.json()


def test_health_endpoints_are_open(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}


def test_predicts_digits_from_base64_and_multipart(client):
    from sklearn.datasets import load_digits

    target = load_digits().target
    idx = [1500, 1501, 1502, 1503, 1504, 1505]  # images from the end of the set
    res = client.post("/v1/predict", headers=AUTH, json={"inputs": [b64(digit_png(i)) for i in idx]})
    preds = res.json()["predictions"]
    assert res.status_code == 200 and len(preds) == 6
    assert sum(p["label"] == str(target[i]) for p, i in zip(preds, idx)) >= 5
    files = [("files", (f"{i}.png", digit_png(i), "image/png")) for i in idx[:2]]
    res = client.post("/v1/predict", headers=AUTH, files=files)
    assert res.status_code == 200 and len(res.json()["predictions"]) == 2


@pytest.mark.parametrize(
    "payload, status, message",
    [
        ({"inputs": []}, 422, "inputs: List should have at least 1 item"),
        ({"inputs": ["x"] * 9}, 422, "9 inputs in one request; the limit is 8"),
        ({"inputs": ["not base64!!"]}, 422, "inputs[0]: not valid base64"),
        ({"inputs": [b64(b"GIF89a garbage")]}, 422, "inputs[0]: not a decodable image"),
        ({"inputs": [b64(digit_png(0)), b64(b"\x00" * 10)]}, 422, "inputs[1]: not a decodable image"),
        ({"inputs": [1, 2]}, 422, "inputs.0: Input should be a valid string; inputs.1: Input should be"),
        ({"wrong": []}, 422, 'inputs: Field required (expected: JSON {\\"inputs\\": [...]}, base64 strings'),
    ],
)
def test_bad_inputs_are_422_naming_the_problem(client, payload, status, message):
    res = client.post("/v1/predict", headers=AUTH, json=payload)
    assert res.status_code == status and message in json.dumps(res.json())


def test_a_text_run_names_what_it_expects_in_a_bad_request(trained_text_run):
    """Every family's bad JSON was answered '1 validation error for PredictRequest' and asked for images."""
    app = create_app(ServeConfig(run_dir=trained_text_run.dir, api_keys=[KEY]))
    with TestClient(app) as text_client:
        res = text_client.post("/v1/predict", headers=AUTH, json={"inputs": ["fine", 7]})
    assert res.status_code == 422
    assert res.json()["detail"] == (
        "inputs.1: Input should be a valid string (expected: JSON {\"inputs\": [...]}, strings in 'inputs')"
    )


def test_malformed_json_and_oversized_bodies(client):
    res = client.post("/v1/predict", headers=AUTH | {"content-type": "application/json"}, content=b"{not json")
    assert res.status_code == 422 and res.json()["detail"].startswith("body: Invalid JSON")
    res = client.post("/v1/predict", headers=AUTH, json={"inputs": ["A" * 300_000]})
    assert res.status_code == 413 and "byte limit" in res.json()["detail"]


def test_concurrent_requests_are_batched_and_all_answered(client):
    def one(i):
        return client.post("/v1/predict", headers=AUTH, json={"inputs": [b64(digit_png(i))]}).status_code

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(one, range(64)))
    assert codes == [200] * 64
    metrics = client.get("/metrics", headers=AUTH).text
    assert 'nnrecipe_requests_total{route="/v1/predict",status="200"}' in metrics
    assert "nnrecipe_model_batch_size_bucket" in metrics and "nnrecipe_model_load_seconds" in metrics


def test_model_card_and_openapi(client):
    card = client.get("/v1/model", headers=AUTH).json()
    assert card["labels"] == [str(i) for i in range(10)] and card["backend"] == "pytorch (fp32)"
    schema = client.get("/openapi.json", headers=AUTH).json()
    assert {"/v1/predict", "/v1/model", "/healthz", "/readyz", "/metrics"} <= set(schema["paths"])


def test_the_card_describes_the_model_loaded_at_start_not_the_runs_files_now(run, tmp_path):
    import hashlib
    import shutil

    from nnrecipe.runs import open_run

    copy = open_run(shutil.copytree(run.dir, tmp_path / "run"))
    loaded = hashlib.sha256(copy.best_checkpoint.read_bytes()).hexdigest()
    with TestClient(create_app(ServeConfig(run_dir=copy.dir, api_keys=[KEY]))) as c:
        first = c.get("/v1/model", headers=AUTH).json()
        assert first["sha256"]["weights"] == loaded and first["temperature"] is None
        # A `calibrate` and a new best checkpoint while serving: the server still answers with what it loaded,
        # and so must its card (it re-read the run and re-hashed the weights on every request).
        copy.update_meta(temperature=2.0)
        copy.best_checkpoint.write_bytes(copy.best_checkpoint.read_bytes() + b" ")
        assert c.get("/v1/model", headers=AUTH).json() == first


def test_docs_and_schema_need_the_key_unless_public(run, client):
    assert client.get("/openapi.json").status_code == 401 and client.get("/docs").status_code == 401
    assert client.get("/docs", headers=AUTH).status_code == 200
    with TestClient(create_app(ServeConfig(run_dir=run.dir, api_keys=[KEY], public_docs=True))) as c:
        assert c.get("/openapi.json").status_code == 200 and c.get("/docs").status_code == 200
        assert c.post("/v1/predict", json={"inputs": [b64(digit_png(0))]}).status_code == 401


def png_of_size(width: int, height: int) -> bytes:
    """A few bytes that declare a width x height greyscale PNG (as a decompression bomb's header does)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_images_over_the_pixel_limit_are_refused_from_the_header(run, client, recwarn):
    """Attacks on the default limits: a 15,000^2 PNG trips PIL's decompression-bomb guard and once answered
    500; a 12,000^2 one was decoded in full. Both are 422 naming the input and the limit."""
    import PIL.Image

    for side in (12_000, 15_000):
        res = client.post(
            "/v1/predict", headers=AUTH, json={"inputs": [b64(digit_png(0)), b64(png_of_size(side, side))]}
        )
        assert res.status_code == 422, res.text
        assert "inputs[1]" in res.json()["detail"] and "the limit is 10000000 pixels" in res.json()["detail"]
    recwarn.clear()  # (the shared client was made before this test's warning filters)
    with TestClient(create_app(ServeConfig(run_dir=run.dir, api_keys=[KEY], max_image_pixels=64))) as c:
        assert c.post("/v1/predict", headers=AUTH, json={"inputs": [b64(digit_png(0))]}).status_code == 200
        res = c.post("/v1/predict", headers=AUTH, files=[("files", ("a.png", png_of_size(9, 8), "image/png"))])
        assert res.status_code == 422 and "9x8 pixels; the limit is 64 pixels" in res.json()["detail"]
        big = c.post("/v1/predict", headers=AUTH, json={"inputs": [b64(png_of_size(12_000, 12_000))]})
        assert big.status_code == 422 and "12000x12000 pixels" in big.json()["detail"]
    assert PIL.Image.MAX_IMAGE_PIXELS is not None  # PIL's own guard stays on
    # ... without PIL's warning in the log for each such request (the server's limit was read from the header)
    assert not [w for w in recwarn if issubclass(w.category, PIL.Image.DecompressionBombWarning)]


def test_a_decoder_crash_of_any_kind_is_422(client, monkeypatch):
    import struct

    import PIL.Image

    def broken(*args, **kwargs):
        raise struct.error("unpack requires a buffer of 4 bytes")  # as a truncated TIFF header does

    monkeypatch.setattr(PIL.Image, "open", broken)
    res = client.post("/v1/predict", headers=AUTH, json={"inputs": [b64(digit_png(0))]})
    assert res.status_code == 422 and "inputs[0]: not a decodable image (error)" in res.json()["detail"]


def test_a_full_queue_answers_503_with_retry_after_and_a_late_answer_504(run, monkeypatch):
    import time

    from nnrecipe.tasks.image_classification import ImagePredictor

    calls = []
    real = ImagePredictor.predict

    def slow(self, items):
        calls.append(len(items))
        time.sleep(0.5)
        return real(self, items)

    monkeypatch.setattr(ImagePredictor, "predict", slow)
    one = {"inputs": [b64(digit_png(0))]}
    with pytest.raises(UserError, match="--max-queue 2: below --max-batch 64, so a request of that size could never"):
        create_app(ServeConfig(run_dir=run.dir, api_keys=[KEY], max_queue=2))  # 503 "retry" forever, when idle
    with pytest.raises(UserError, match="--max-queue 2: below --max-explain-inputs 4"):  # /v1/explain's size too
        create_app(ServeConfig(run_dir=run.dir, api_keys=[KEY], max_queue=2, max_batch=2))
    small = dict(max_queue=2, batch_max=1, max_batch=1, max_explain_inputs=1)
    with TestClient(create_app(ServeConfig(run_dir=run.dir, api_keys=[KEY], **small))) as c:
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda _: c.post("/v1/predict", headers=AUTH, json=one), range(6)))
        codes = sorted(r.status_code for r in answers)
        assert codes.count(200) >= 2 and 503 in codes and set(codes) <= {200, 503}, codes
        busy = next(r for r in answers if r.status_code == 503)
        assert busy.headers["retry-after"] == "1" and "queue holds 2" in busy.json()["detail"]
        assert c.post("/v1/predict", headers=AUTH, json=one).status_code == 200  # the queue drains
        # Inputs already decoded and waiting for the model still count: two wait, a third is refused.
        with ThreadPoolExecutor(2) as pool:
            waiting = [pool.submit(c.post, "/v1/predict", headers=AUTH, json=one) for _ in range(2)]
            time.sleep(0.25)  # both decoded (milliseconds), both still waiting for the 0.5 s model calls
            assert c.post("/v1/predict", headers=AUTH, json=one).status_code == 503
            assert [f.result().status_code for f in waiting] == [200, 200]
    calls.clear()
    with TestClient(create_app(ServeConfig(run_dir=run.dir, api_keys=[KEY], deadline_s=0.2, batch_max=1))) as c:
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: c.post("/v1/predict", headers=AUTH, json=one), range(4)))
        late = [r for r in answers if r.status_code == 504]
        assert late and "0.2 s deadline" in late[0].json()["detail"], [r.status_code for r in answers]
        time.sleep(1.5)
    assert len(calls) < 4, calls  # work whose request gave up waiting was dropped, not computed


def test_rate_limit_per_key_answers_429_with_retry_after(run):
    one = {"inputs": [b64(digit_png(0))]}
    cfg = ServeConfig(run_dir=run.dir, api_keys=[KEY, "other"], rate_limit=0.5, rate_burst=2)
    with TestClient(create_app(cfg)) as c:
        codes = [c.post("/v1/predict", headers=AUTH, json=one).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        res = c.post("/v1/predict", headers=AUTH, json=one)
        assert res.status_code == 429 and int(res.headers["retry-after"]) >= 1 and "0.5 requests/s" in res.text
        other = {"Authorization": "Bearer other"}
        assert c.post("/v1/predict", headers=other, json=one).status_code == 200  # each key has its own bucket
        assert c.get("/healthz").status_code == 200


def test_onnx_backend_gives_the_same_predictions(run, client):
    from nnrecipe.deploy.export import export_run

    export_run(run, "onnx")
    payload = {"inputs": [b64(digit_png(i)) for i in range(1500, 1508)]}
    with TestClient(
        create_app(ServeConfig(run_dir=run.dir, api_keys=[KEY], onnx=run.dir / "export" / "model.onnx"))
    ) as c:
        onnx = c.post("/v1/predict", headers=AUTH, json=payload).json()["predictions"]
    torch_preds = client.post("/v1/predict", headers=AUTH, json=payload).json()["predictions"]
    assert [p["label"] for p in onnx] == [p["label"] for p in torch_preds]
    assert np.allclose([p["confidence"] for p in onnx], [p["confidence"] for p in torch_preds], atol=1e-4)


def test_an_onnx_file_that_is_not_this_runs_export_is_refused_at_start(run, trained_text_run, tmp_path):
    """Another run's export loaded and then answered every request 500; a damaged file was ONNX Runtime's
    traceback."""
    import shutil

    from nnrecipe.deploy.export import export_run
    from nnrecipe.engine.checkpoint import load_checkpoint, save_checkpoint
    from nnrecipe.runs import open_run

    text = open_run(shutil.copytree(trained_text_run.dir, tmp_path / "text"))  # the shared run stays as it is
    export_run(text, "onnx")
    with pytest.raises(UserError, match=r"--onnx .*model.onnx: not an export of .*\(one input fails: "):
        create_app(ServeConfig(run_dir=run.dir, api_keys=[KEY], onnx=text.dir / "export" / "model.onnx"))
    other = open_run(shutil.copytree(run.dir, tmp_path / "other"))  # the same shapes, other weights
    tensors, state = load_checkpoint(other.best_checkpoint)
    save_checkpoint(other.best_checkpoint, {k: v + 0.01 for k, v in tensors.items()}, state)
    export_run(other, "onnx")  # every input passes: it served the other run's answers under this run's name
    with pytest.raises(UserError, match=r"--onnx .*model.onnx: exported from other weights than .*'s \(its card: "):
        create_app(ServeConfig(run_dir=run.dir, api_keys=[KEY], onnx=other.dir / "export" / "model.onnx"))
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(UserError, match=r"--onnx .*bad.onnx: ONNX Runtime cannot load it"):
        create_app(ServeConfig(run_dir=run.dir, api_keys=[KEY], onnx=tmp_path / "bad.onnx"))


def test_bf16_serving_gives_the_same_labels_and_says_so_in_the_card(run, client):
    payload = {"inputs": [b64(digit_png(i)) for i in range(1500, 1508)]}
    with TestClient(create_app(ServeConfig(run_dir=run.dir, api_keys=[KEY], precision="bf16"))) as c:
        r = c.post("/v1/predict", headers=AUTH, json=payload)
        assert r.status_code == 200, r.text
        bf16 = r.json()["predictions"]
        assert c.get("/v1/model", headers=AUTH).json()["backend"] == "pytorch (bf16)"
    fp32 = client.post("/v1/predict", headers=AUTH, json=payload).json()["predictions"]
    assert [p["label"] for p in bf16] == [p["label"] for p in fp32]
    assert np.allclose([p["confidence"] for p in bf16], [p["confidence"] for p in fp32], atol=0.05)
    with pytest.raises(UserError, match="--precision: must be auto, fp32 or bf16"):
        create_app(ServeConfig(run_dir=run.dir, api_keys=[KEY], precision="int4"))


def test_several_worker_processes_serve_and_stop_on_sigterm(run, tmp_path):
    """`nnrecipe serve --workers 2`: uvicorn's worker processes each build the app from the environment."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "nnrecipe.cli", "serve", str(run.dir), "--port", str(port), "--workers", "2"],
        env=os.environ | {"NNRECIPE_API_KEYS": KEY},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.time() < deadline, "server did not start"
            time.sleep(0.2)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=AUTH, timeout=30) as c:
            answers = [c.post("/v1/predict", json={"inputs": [b64(digit_png(i))]}) for i in range(8)]
            assert all(r.status_code == 200 for r in answers)
            assert httpx.get(f"http://127.0.0.1:{port}/v1/model").status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert err.count("Started server process") >= 2  # two workers, each with its own model


def test_explain_without_captum_names_the_extra(run, monkeypatch):
    def no_captum(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'captum'", name="captum")

    monkeypatch.setattr("nnrecipe.trust.explain.explain_decoded", no_captum)
    with TestClient(create_app(ServeConfig(run_dir=run.dir, api_keys=[KEY]))) as c:
        res = c.post("/v1/explain", headers=AUTH, json={"inputs": [b64(digit_png(0))]})
    assert res.status_code == 501 and "pip install 'nnrecipe[trust]'" in res.json()["detail"], res.json()


def test_a_port_out_of_range_is_a_usage_error_not_a_traceback(trained_digits_run):
    """`serve RUN --port 99999` reached uvicorn and ended in socket's OverflowError."""
    from typer.testing import CliRunner

    from nnrecipe.cli import app

    res = CliRunner().invoke(app, ["serve", str(trained_digits_run.dir), "--insecure-no-auth", "--port", "99999"])
    assert res.exit_code == 2 and "--port" in res.output, res.output


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--max-body-mb", "nan"], "--max-body-mb"),  # int(nan): a traceback
        (["--max-body-mb", "-1"], "--max-body-mb"),  # a server that answered every request 413
        (["--rate-limit", "inf"], "--rate-limit: a finite number (got inf)"),  # int(inf): a traceback
        (["--batch-wait-ms", "inf"], "--batch-wait-ms: a finite number (got inf)"),  # never answered
        (["--deadline-s", "inf"], "--deadline-s: a finite number (got inf)"),
        (["--batch-wait-ms", "40000"], "--batch-wait-ms 40000: must be below the deadline (--deadline-s 30)"),
        (["--rate-burst", "5"], "--rate-burst: only with --rate-limit"),  # was ignored: no limit at all
    ],
)
def test_serve_numbers_that_cannot_work_are_refused_before_the_server_starts(trained_digits_run, flags, message):
    from typer.testing import CliRunner

    from nnrecipe.cli import app

    res = CliRunner().invoke(app, ["serve", str(trained_digits_run.dir), "--insecure-no-auth", *flags])
    if isinstance(res.exception, UserError):  # main() prints these as one line
        assert message in str(res.exception)
    else:
        assert res.exit_code == 2 and message in res.output, res.output


def test_an_address_the_server_cannot_listen_on_is_one_line_before_the_model_loads(trained_digits_run):
    """A host that does not resolve or a port in use was uvicorn's ERROR line after start-up (exit 3)."""
    import socket

    from nnrecipe.deploy.serve import check_listen

    with pytest.raises(UserError, match=r"--host 999.1.1.1: no such host or address \("):
        check_listen("999.1.1.1", 8080)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match=rf"--host 127.0.0.1 --port {port}: cannot listen there \(Address already"):
            check_listen("127.0.0.1", port)
    check_listen("127.0.0.1", port)  # free again
    onnx = trained_digits_run.dir / "missing.onnx"  # refused before the file is looked at: bf16 was ignored
    with pytest.raises(UserError, match="--precision bf16: eager PyTorch only; an --onnx model runs in its exported"):
        ServeConfig(run_dir=trained_digits_run.dir, insecure_no_auth=True, onnx=onnx, precision="bf16")
