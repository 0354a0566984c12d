"""convlens: convolutional neural networks for image recognition, trained, explained, served.

The Python API mirrors the command line, a function per command with the command's defaults:
train, evaluate, predict, explain, report, export, serve, tune, datasets, models, scenes,
shards, and the face commands verify, enroll, identify, lfw; and load, create_model,
list_models, load_dataset. Heavy modules are imported on first use, so `import convlens` stays
fast. (tests/test_api_twins.py holds each command to its twin.)
"""

from __future__ import annotations

import inspect
import sys
import types
from pathlib import Path
from typing import Any

from convlens.version import __version__ as __version__

__all__ = [
    "create_model", "datasets", "enroll", "evaluate", "explain", "export", "identify", "lfw",
    "list_models", "load", "load_dataset", "models", "predict", "report", "scenes", "serve",
    "shards", "train", "tune", "verify",
]  # fmt: skip


def train(
    config: str | None = None,
    *,
    nproc: int = 1,
    nnodes: int = 1,
    node_rank: int = 0,
    master_addr: str = "127.0.0.1",
    master_port: int | None = None,
    **settings: Any,
) -> Path | None:
    """Train as `convlens train` does: settings as keyword arguments; returns the run folder.
    nproc > 1 or nnodes > 1 trains under torch.distributed.run (returns the `run` asked for)."""
    from convlens.api.train import train as _train
    from convlens.config import make_config

    if nproc > 1 or nnodes > 1:
        from convlens.api.launch import launch_training

        launch_training(config, settings, nproc=nproc, nnodes=nnodes, node_rank=node_rank,
                        master_addr=master_addr, master_port=master_port)  # fmt: skip
        return Path(settings["run"]) if settings.get("run") else None
    return _train(make_config(config, settings))


def load(run: str, device: str = "cpu", engine: str = "torch"):
    """A trained model ready to predict: `convlens.load("runs/train").predict("shoe.png")`."""
    from convlens.predict import load as _load

    return _load(run, device=device, engine=engine)


def evaluate(
    run: str,
    data: str | None = None,
    split: str = "test",
    target_sensitivity: float | None = None,
    device: str = "cpu",
) -> dict:
    """Metrics of a run on a split, as `convlens evaluate RUN --json` prints them."""
    from convlens.api.evaluate import evaluate_run
    from convlens.device import resolve_device

    return evaluate_run(run, data=data, split=split, target_sensitivity=target_sensitivity,
                        device=str(resolve_device(device)))  # fmt: skip


def predict(
    run: str,
    inputs: str | list[str],
    top_k: int = 5,
    engine: str = "torch",
    maps_dir: str | None = None,
) -> list:
    """One row per image (files, folders or globs), as `convlens predict --json` prints them;
    an anomaly-map run's maps stay in the rows (base64 "map_png") unless `maps_dir` is given,
    where they are written as PNG files that the rows name ("map")."""
    from convlens.predict import expand_inputs
    from convlens.predict import load as _load

    paths = expand_inputs([inputs] if isinstance(inputs, str | Path) else list(inputs))
    rows = _load(run, engine=engine).predict_files(paths, top_k=top_k)
    if maps_dir is not None:
        from convlens.predict.maps import save_maps

        save_maps(rows, maps_dir)
    return rows


def explain(
    run: str,
    images: tuple[str, ...] = (),
    out: str | None = None,
    layer: str | None = None,
    invariance: bool = False,
    baseline: str | None = None,
    data: str | None = None,
    max_shift: int = 4,
    n_images: int = 2000,
    interactive: bool = False,
    image: str | None = None,
) -> dict:
    """Every explanation figure of RUN into `out` (default RUN/explain); the summary.json.

    interactive: write one clickable page of `image` (or the one of `images`) instead (`out`:
    the page's file); then {"page": its path}."""
    from convlens.api.explain import explain_run

    if interactive:
        from convlens.api.interactive import explain_page
        from convlens.errors import ConvlensError

        if len(images) > 1 or (images and image):
            raise ConvlensError("interactive: the page shows one image: give images or image")
        return {"page": str(explain_page(run, image or (images[0] if images else None), out))}
    return explain_run(run, images, out=out, layer=layer, invariance=invariance,
                       baseline=baseline, data=data, max_shift=max_shift,
                       n_images=n_images)  # fmt: skip


def report(run: str, data: str | None = None) -> Path:
    """Rewrite RUN/report.html (and metrics.json, figures); returns the page's path."""
    from convlens.api.evaluate import report_run

    return report_run(run, data=data)


def export(run: str, format: str = "onnx", out: str | None = None) -> dict:
    """Export RUN as ONNX or TorchScript (`format`) and check it against torch; the result."""
    from convlens.api.export import export_run

    return export_run(run, format, out)


def serve(
    run: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_in_flight: int = 64,
    max_connections: int = 256,
    header_timeout: float = 10.0,
    body_timeout: float = 60.0,
    allowed_hosts: tuple[str, ...] = (),
    engine: str = "auto",
    start: bool = False,
):
    """The ASGI app serving RUN (for uvicorn or a test client); start=True serves it on
    host:port as `convlens serve` does, until interrupted."""
    from convlens.api.serve import serve as _serve

    return _serve(run, host=host, port=port, max_in_flight=max_in_flight,
                  max_connections=max_connections, header_timeout=header_timeout,
                  body_timeout=body_timeout, allowed_hosts=allowed_hosts, engine=engine,
                  start=start)  # fmt: skip


def tune(
    space: str,
    *,
    trials: int = 20,
    out: str = "runs/tune",
    storage: str | None = None,
    study_name: str = "convlens",
    pruner: Any = "median",
    startup_trials: int = 5,
    warmup_epochs: int = 0,
    config: str | None = None,
    **settings: Any,
) -> dict:
    """Sweep settings with Optuna as `convlens tune` does (needs the tune extra): `space` is the
    YAML space file, `settings` fix the rest; `pruner` is median, none or an Optuna pruner.
    Returns {"best": {"number", "value", "params", "run", "config"}, "trials": [...], ...}."""
    from convlens.api.tune import tune as _tune

    return _tune(space, trials=trials, out=out, storage=storage, study_name=study_name,
                 pruner=pruner, startup_trials=startup_trials, warmup_epochs=warmup_epochs,
                 config=config, **settings)  # fmt: skip


def datasets(data_dir: str | None = None) -> list[dict]:
    """The named datasets: name, description, found (a path or None), obtain."""
    from convlens.data import list_datasets

    return list_datasets(data_dir)


def models(channels: int = 1, image_size: int = 28, classes: int = 10) -> list[dict]:
    """Each registered model's name, parameter count and FLOPs for one image of that shape."""
    from convlens.models import list_models as _names
    from convlens.models import model_info

    size = (image_size, image_size)
    return [model_info(name, in_channels=channels, num_classes=classes, image_size=size)
            for name in _names()]  # fmt: skip


def scenes(
    out: str,
    seed: int = 0,
    per_class: tuple[int, int, int] | None = None,
    workers: int | None = None,
    data_dir: str | None = None,
    item_scale: tuple[float, float] | None = None,
) -> dict:
    """Write a fashion-scenes tree to new folder `out`; returns its manifest. `item_scale`: the
    item's side as a share of the image's shorter side (low, high) [default: (0.45, 0.9)]."""
    from convlens.data.named import fashion_items
    from convlens.data.scenes import ITEM_SCALE, PER_CLASS, generate

    items = fashion_items(data_dir)
    per_class = per_class or PER_CLASS
    item_scale = item_scale or ITEM_SCALE
    return generate(out, items, seed=seed, per_class=per_class, workers=workers,
                    item_scale=item_scale)  # fmt: skip


def shards(
    folder: str, out: str, maxcount: int = 1000, seed: int = 0, strict: bool = False
) -> dict:
    """Write FOLDER as WebDataset shards and dataset.json in new folder `out`; the index."""
    from convlens.data.shards import write_shards

    return write_shards(folder, out, maxcount=maxcount, seed=seed, strict=strict)


def verify(
    run: str,
    image1: str,
    image2: str,
    detect: bool = True,
    confirm: str | None = None,
    device: str = "cpu",
) -> dict:
    """Whether two photos show the same person (an embed run): verified, similarity, ..."""
    from convlens.faces.verify import verify as _verify

    return _verify(_faces(run, detect, confirm, device), image1, image2)


def enroll(
    run: str,
    gallery_dir: str,
    out: str = "gallery.npz",
    detect: bool = True,
    confirm: str | None = None,
    device: str = "cpu",
) -> dict:
    """Embed gallery_dir/<person>/<images> into the gallery file `out` for identify."""
    from convlens.faces.gallery import enroll as _enroll

    return _enroll(_faces(run, detect, confirm, device), gallery_dir, out)


def identify(
    run: str,
    gallery: str,
    image: str,
    top_k: int = 5,
    detect: bool = True,
    confirm: str | None = None,
    device: str = "cpu",
) -> dict:
    """Who `image` shows among the gallery's people (from enroll), or "unknown"."""
    from convlens.faces.gallery import identify as _identify

    return _identify(_faces(run, detect, confirm, device), gallery, image, top_k)


def lfw(
    run: str,
    lfw_dir: str,
    pairs: str | None = None,
    detect: bool = True,
    confirm: str | None = None,
    device: str = "cpu",
) -> dict:
    """The LFW verification protocol on lfw_dir/Name/*.jpg: 10-fold accuracy, AUC, EER, TAR."""
    from convlens.faces.lfw import find_pairs, run_protocol

    return run_protocol(_faces(run, detect, confirm, device), find_pairs(lfw_dir, pairs), lfw_dir)


def _faces(run: str, detect: bool, confirm: str | None, device: str):
    from convlens.faces.recogniser import FaceRecogniser

    return FaceRecogniser(run, device=device, detect=detect, confirm=confirm)


def create_model(name: str, **kwargs: Any):
    """A registered model by name (see `convlens models`)."""
    from convlens.models import create_model as _create

    return _create(name, **kwargs)


def list_models() -> list[str]:
    """Names of the registered models."""
    from convlens.models import list_models as _list

    return _list()


def load_dataset(spec: str, **kwargs: Any):
    """A dataset by name, folder, .npz or IDX prefix, held in memory."""
    from convlens.data import load_dataset as _load

    return _load(spec, **kwargs)


# Six of these functions share their names with subpackages (convlens.export holds export_onnx,
# convlens.serve create_app, ...). Importing such a subpackage binds its name on this package to
# the module, hiding the function; so the module is made callable as the function it hides:
# convlens.export(run) works before and after anything imports convlens.export.onnx.
_SHADOWED = {f.__name__: f for f in (explain, export, models, predict, report, serve)}


class _CallableModule(types.ModuleType):
    """A subpackage that is also the API function of its name."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__twin__(*args, **kwargs)


class _Package(types.ModuleType):
    """convlens itself: a subpackage bound over an API function keeps the function's call."""

    def __setattr__(self, name: str, value: Any) -> None:
        twin = _SHADOWED.get(name)
        if twin is not None and isinstance(value, types.ModuleType):
            value.__class__ = _CallableModule
            value.__twin__, value.__signature__ = twin, inspect.signature(twin)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
