"""The HTTP API: POST /predict (micro-batched), POST /verify (face embedding runs), GET /model,
GET /health, and the page at GET /. Anomaly runs answer /predict with a score and a flag (and
a PatchCore or PaDiM run with its anomaly map, "map_png", which the page shows).

Fails closed: bodies over the limit get 413 before they are read whole, bodies slower than the
body timeout 408, undecodable or oversized images 422, malformed multipart 400, and more requests
in flight than the cap 503 with Retry-After. A request is in flight once its body is in: slow
uploads hold no slot (the connection cap and timeouts of convlens.serve.server bound them).
Images decode on worker threads, never on the event loop. No endpoint takes a path or URL;
nothing is unpickled.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.middleware.trustedhost import TrustedHostMiddleware

from convlens.data.batches import normalize
from convlens.data.images import decode_image
from convlens.errors import ConvlensError
from convlens.explain.figures import overlay, png_image
from convlens.explain.gradcam import grad_cam
from convlens.export import export_onnx
from convlens.predict import Recogniser, load
from convlens.predict.engines import OnnxEngine, TorchScriptEngine
from convlens.serve.limits import BodyLimit, BodyRefused, Limits

ENGINE_NAMES = {OnnxEngine: "onnxruntime", TorchScriptEngine: "torchscript"}  # /model's engine


class Batcher:
    """Collects concurrent requests into one model call (micro-batching)."""

    def __init__(self, rec: Recogniser, limits: Limits) -> None:
        self.rec, self.limits = rec, limits
        self.queue: asyncio.Queue | None = None

    async def predict(self, image: torch.Tensor) -> torch.Tensor:
        """Probabilities (K,) for one preprocessed uint8 image (C, H, W)."""
        if self.queue is None:
            self.queue = asyncio.Queue()
            asyncio.get_running_loop().create_task(self._run())
        done = asyncio.get_running_loop().create_future()
        await self.queue.put((image, done))
        return await done

    async def _run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            deadline = time.monotonic() + self.limits.batch_wait_ms / 1000
            while len(batch) < self.limits.max_batch:
                left = deadline - time.monotonic()
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), max(left, 0)))
                except TimeoutError:
                    break
            images = torch.stack([image for image, _ in batch])  # (B, C, H, W)
            try:
                probs = await asyncio.to_thread(self.rec.predict_tensor, images)
            except Exception as e:  # hand the failure to every waiting request
                for _, done in batch:
                    done.set_exception(e)
                continue
            for (_, done), p in zip(batch, probs, strict=True):
                done.set_result(p)


def create_app(
    run: str | Path,
    limits: Limits | None = None,
    engine: str = "auto",
    hosts: list[str] | None = None,
    explainer: Callable[[np.ndarray, str], str] | None = None,
):
    """The ASGI app serving RUN (a run folder, weights file, .onnx or TorchScript .pt file).

    engine: `onnx` predicts through an ONNX export of RUN made at start-up (2.7-6.9x faster
    here, BENCHMARKS.md), `torch` through the weights; `auto` is onnx where the model exports.
    Grad-CAM heatmaps always come from the torch model. hosts: the Host names answered (others
    get 400; None: any), see convlens.serve.server.allowed_hosts. explainer(image, name): the
    interactive explainer page's HTML for an uploaded image (POST /explain), handed down by the
    layer above (convlens.api.interactive.page_maker).
    """
    limits = limits or Limits()
    rec = load(run)
    task, onnx_file = rec.task, str(run).endswith((".onnx", ".pt"))  # an exported graph itself
    plain = onnx_file or engine == "torch" or not task.serves_onnx
    fast = rec if plain else _onnx_twin(run, engine)  # other tasks score in torch
    served = fast or rec
    batcher = Batcher(served, limits)
    decoder = ThreadPoolExecutor(limits.decode_threads, thread_name_prefix="convlens-decode")
    app = FastAPI(title="convlens", docs_url=None, redoc_url=None, openapi_url=None)
    in_flight = 0
    info = {
        "model": rec.meta.model.name,
        "task": task.name,
        "classes": rec.classes,
        "input": rec.meta["input"],
        "heatmap": task.heatmaps and not onnx_file,
        "engine": ENGINE_NAMES.get(type(served.engine), "torch"),
        "verify": task.verification,
        "explain": explainer is not None and task.explains,  # the explainer page (issue 20)
    }
    if (threshold := task.shown_threshold(rec.meta)) is not None:
        info["threshold"] = float(threshold)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/model")
    async def model() -> dict:
        return info

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return resources.files("convlens.serve").joinpath("page.html").read_text()

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        form, error = await _form(request, ("file",))  # the body is in before a slot is taken
        return error or await _capped(_predict, request, form)

    @app.post("/verify")
    async def verify(request: Request) -> JSONResponse:
        if not info["verify"]:
            return JSONResponse({"error": f"{info['task']} runs do not verify faces"}, 404)
        form, error = await _form(request, ("file1", "file2"))
        return error or await _capped(_verify, form)

    # the interactive explainer page of an uploaded image (issue 20)
    @app.post("/explain")
    async def explain(request: Request):
        if not info["explain"]:
            return JSONResponse({"error": f"no explainer page for this {info['task']} model"}, 404)
        form, error = await _form(request, ("file",))
        return error or await _capped(_explain, form)

    async def _explain(form):
        upload = form.get("file")
        name, data = upload.filename or "upload", await upload.read()
        try:
            image = await _decode(rec.preprocess, data)  # (C, H, W) uint8, the training path
        except ConvlensError as e:
            return JSONResponse({"error": f"{name}: {str(e).split(': ', 1)[-1]}"}, 422)
        return HTMLResponse(await asyncio.to_thread(explainer, image.numpy(), name))

    async def _decode(fn, *args):
        """fn(*args) on a decoding thread: the event loop keeps answering meanwhile."""
        return await asyncio.get_running_loop().run_in_executor(decoder, fn, *args)

    async def _capped(handler, *args) -> JSONResponse:
        nonlocal in_flight
        if in_flight >= limits.max_in_flight:
            return JSONResponse(
                {"error": "too many requests in flight"}, 503, headers={"Retry-After": "1"}
            )
        in_flight += 1
        try:
            return await handler(*args)
        finally:
            in_flight -= 1

    async def _form(request: Request, fields: tuple[str, ...]):
        """(form, error response): the multipart form with an image in each of `fields`."""
        try:
            form = await request.form()
        except BodyRefused as e:
            return None, e.response()
        except Exception as e:  # python-multipart's parse errors, a wrong content type
            return None, JSONResponse({"error": f"malformed multipart body: {e}"}, 400)
        for field in fields:
            if form.get(field) is None or isinstance(form.get(field), str):
                error = f"multipart field {field!r} (an image) is required"
                return None, JSONResponse({"error": error}, 400)
        return form, None

    async def _predict(request: Request, form) -> JSONResponse:
        t0 = time.perf_counter()
        upload = form.get("file")
        try:
            top_k = int(form.get("top_k") or request.query_params.get("top_k") or 5)
        except ValueError:
            return JSONResponse({"error": "top_k must be an integer"}, 400)
        if top_k < 1:
            return JSONResponse({"error": f"top_k must be 1 or more, not {top_k}"}, 422)
        want_heatmap = str(form.get("heatmap") or request.query_params.get("heatmap") or "")
        data = await upload.read()
        try:
            image = await _decode(rec.preprocess, data)  # (C, H, W) uint8, the training path
        except ConvlensError as e:
            name = upload.filename or "upload"
            return JSONResponse({"error": f"{name}: {str(e).split(': ', 1)[-1]}"}, 422)
        scores = await batcher.predict(image)
        # the task's answer: top-k predictions (a two-class run's flag at its val threshold,
        # a multi-label run's decisions) or, for an anomaly run, its score and flag
        answer = {"model": info["model"], "task": info["task"], "predictions": []}
        answer.update(rec.answer(scores, top_k))
        heat = None
        if want_heatmap.lower() in ("1", "true", "yes", "on") and info["heatmap"]:
            heat = await asyncio.to_thread(_heatmap_png, rec, image)
        answer["heatmap_png"] = heat
        answer["time_ms"] = round(1000 * (time.perf_counter() - t0), 2)
        return JSONResponse(answer)

    async def _verify(form) -> JSONResponse:
        t0 = time.perf_counter()
        detect = str(form.get("detect") or "true").lower() not in ("0", "false", "no", "off")
        faces = {}
        for field in ("file1", "file2"):
            upload = form.get(field)
            name, data = upload.filename or field, await upload.read()
            try:
                faces[field] = await _decode(_face, rec, data, name, detect)
            except ConvlensError as e:  # undecodable, too large, or no face found
                reason = str(e).split(": ", 1)[-1].replace("--no-detect", "detect=false")
                return JSONResponse({"error": f"{field} ({name}): {reason}"}, 422)
        (x1, face1), (x2, face2) = faces["file1"], faces["file2"]
        emb = await asyncio.to_thread(rec.embed, torch.stack([x1, x2]))  # (2, D) unit vectors
        similarity = float(emb[0] @ emb[1])
        return JSONResponse(
            {
                "verified": similarity >= rec.threshold,
                "similarity": similarity,
                "threshold": rec.threshold,
                "model": info["model"],
                "detection": detect,
                "faces": {"file1": face1, "file2": face2},
                "time_ms": round(1000 * (time.perf_counter() - t0), 2),
            }
        )

    guarded = BodyLimit(app, limits)
    return guarded if hosts is None else TrustedHostMiddleware(guarded, allowed_hosts=hosts)


def _onnx_twin(run: str | Path, engine: str) -> Recogniser | None:
    """RUN exported to ONNX and loaded on onnxruntime (None if it fails). The export's folder is
    removed once the session holds the graph, so no file outlives start-up, failed or not."""
    import tempfile

    try:
        with tempfile.TemporaryDirectory(prefix="convlens-serve-") as folder:
            return load(export_onnx(run, Path(folder) / "model.onnx")["onnx"])
    except Exception as e:
        if engine == "onnx":
            raise ConvlensError(f"{run}: cannot serve through ONNX ({e})") from None
        return None  # auto: the torch model serves


def _face(rec, data: bytes, name: str, detect: bool) -> tuple[torch.Tensor, dict]:
    """The face crop (C, H, W) uint8 of an uploaded photo and its box (detection as asked,
    aligned as the run was trained)."""
    return rec.face(decode_image(data, name=name), name=name, detect=detect)


def _heatmap_png(rec: Recogniser, image: torch.Tensor) -> str | None:
    """Grad-CAM of the predicted class over the image, as base64 PNG (None if no conv map)."""
    x = normalize(image[None], rec.meta.normalize.mean, rec.meta.normalize.std)
    try:
        heat, _ = grad_cam(rec.model, x)
    except ConvlensError:  # e.g. an MLP has no feature map
        return None
    scale = max(1, 224 // max(image.shape[1:]))
    return base64.b64encode(png_image(overlay(image, heat[0]), scale=scale)).decode()
