"""The HTTP API: POST /predict (micro-batched), GET /model, GET /health, and the page at GET /.

Fails closed: bodies over the limit get 413 before they are read whole, undecodable or oversized
images 422, malformed multipart 400, and more requests in flight than the cap 503 with
Retry-After. No endpoint takes a path or URL; nothing is unpickled.
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse

from convlens.errors import ConvlensError
from convlens.predict import OnnxRecogniser, Recogniser, load


@dataclass
class Limits:
    """What the server accepts; see the module docstring for what happens past each."""

    max_body: int = 10 * 1024 * 1024  # bytes per request
    max_in_flight: int = 64  # requests being handled at once
    max_batch: int = 64  # images per model call
    batch_wait_ms: float = 2.0  # how long the first request of a batch waits for others


class TooLarge(Exception):
    """The body went past Limits.max_body."""


class BodyLimit:
    """ASGI middleware: 413 as soon as a body (declared or streamed) passes `max_body`."""

    def __init__(self, app, max_body: int) -> None:
        self.app, self.max_body = app, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared and declared.isdigit() and int(declared) > self.max_body:
            return await _send_json(send, 413, {"error": f"body over {self.max_body} bytes"})
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body:
                raise TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except TooLarge:
            await _send_json(send, 413, {"error": f"body over {self.max_body} bytes"})


async def _send_json(send, status: int, body: dict) -> None:
    response = JSONResponse(body, status_code=status)
    await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


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


def create_app(run: str | Path, limits: Limits | None = None, engine: str = "auto") -> FastAPI:
    """The FastAPI app serving RUN (a run folder, weights file or .onnx file).

    engine: `onnx` predicts through an ONNX export of RUN made at start-up (2.7-6.9x faster
    here, BENCHMARKS.md), `torch` through the weights; `auto` is onnx where the model exports.
    Grad-CAM heatmaps always come from the torch model.
    """
    limits = limits or Limits()
    rec = load(run)
    fast = rec if str(run).endswith(".onnx") or engine == "torch" else _onnx_twin(run, engine)
    batcher = Batcher(fast or rec, limits)
    app = FastAPI(title="convlens", docs_url=None, redoc_url=None)
    in_flight = 0
    meta = rec.meta
    info = {
        "model": meta["model"]["name"],
        "task": meta.get("task", "classify"),
        "classes": rec.classes,
        "input": meta["input"],
        "heatmap": not str(run).endswith(".onnx"),
        "engine": "onnxruntime" if isinstance(fast or rec, OnnxRecogniser) else "torch",
    }

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
        nonlocal in_flight
        if in_flight >= limits.max_in_flight:
            return JSONResponse(
                {"error": "too many requests in flight"}, 503, headers={"Retry-After": "1"}
            )
        in_flight += 1
        try:
            return await _predict(request)
        finally:
            in_flight -= 1

    async def _predict(request: Request) -> JSONResponse:
        t0 = time.perf_counter()
        try:
            form = await request.form()
        except TooLarge:
            return JSONResponse({"error": f"body over {limits.max_body} bytes"}, 413)
        except Exception as e:  # python-multipart's parse errors, a wrong content type
            return JSONResponse({"error": f"malformed multipart body: {e}"}, 400)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            return JSONResponse({"error": "multipart field 'file' (an image) is required"}, 400)
        try:
            top_k = int(form.get("top_k") or request.query_params.get("top_k") or 5)
        except ValueError:
            return JSONResponse({"error": "top_k must be an integer"}, 400)
        want_heatmap = str(form.get("heatmap") or request.query_params.get("heatmap") or "")
        data = await upload.read()
        try:
            image = rec.preprocess(data)  # (C, H, W) uint8, the training path
        except ConvlensError as e:
            name = upload.filename or "upload"
            return JSONResponse({"error": f"{name}: {str(e).split(': ', 1)[-1]}"}, 422)
        probs = await batcher.predict(image)
        preds = rec._top(probs, max(1, top_k))
        heat = None
        if want_heatmap.lower() in ("1", "true", "yes", "on") and info["heatmap"]:
            heat = await asyncio.to_thread(_heatmap_png, rec, image)
        return JSONResponse(
            {
                "model": info["model"],
                "task": info["task"],
                "predictions": preds,
                "heatmap_png": heat,
                "time_ms": round(1000 * (time.perf_counter() - t0), 2),
            }
        )

    return BodyLimit(app, limits.max_body)


def _onnx_twin(run: str | Path, engine: str) -> Recogniser | None:
    """RUN exported to a temporary ONNX file and loaded on onnxruntime (None if it fails)."""
    import tempfile

    from convlens.export import export_onnx

    try:
        path = Path(tempfile.mkdtemp(prefix="convlens-serve-")) / "model.onnx"
        return load(export_onnx(run, path)["onnx"])
    except Exception as e:
        if engine == "onnx":
            raise ConvlensError(f"{run}: cannot serve through ONNX ({e})") from None
        return None  # auto: the torch model serves


def _heatmap_png(rec: Recogniser, image: torch.Tensor) -> str | None:
    """Grad-CAM of the predicted class over the image, as base64 PNG (None if no conv map)."""
    from convlens.data.batches import normalize
    from convlens.explain.figures import overlay, png_image
    from convlens.explain.gradcam import grad_cam

    x = normalize(image[None], rec.meta["normalize"]["mean"], rec.meta["normalize"]["std"])
    try:
        heat, _ = grad_cam(rec.model, x)
    except ConvlensError:  # e.g. an MLP has no feature map
        return None
    scale = max(1, 224 // max(image.shape[1:]))
    return base64.b64encode(png_image(overlay(image, heat[0]), scale=scale)).decode()
