"""Issue 13, the run folder and training: locked run folders, setting ranges, non-finite
validation, drawable class names, file modes. Each test failed on the code before its fix."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import convlens
from convlens.config import TrainConfig, config_types, make_config
from convlens.errors import ConfigError, TrainingError

QUICK = ["--data", "digits", "--model", "mlp", "--batch-size", "64", "--lr", "0.05"]
API = {"data": "digits", "model": "mlp", "batch_size": 64}


def _train(*args: object, cwd: Path | None = None) -> subprocess.Popen:
    """A real `convlens train ARGS` process (this tree's convlens), its output captured."""
    cmd = [sys.executable, "-m", "convlens", "train", *map(str, args)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip


def _finish(procs: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    outs = [p.communicate(timeout=300) for p in procs]
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outs, strict=True)]


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _folder(root: Path, classes: list[str], n: int = 12, size: int = 8) -> None:
    """Grey images whose brightness tells the class, one folder per class, an hour old."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(n):
            pixels = rng.integers(0, 40, (size, size), dtype=np.uint8) + 200 * k
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")
    hour_ago = time.time() - 3600  # older than the cache's racy window: the cache is written
    for path in root.rglob("*.png"):
        os.utime(path, (hour_ago, hour_ago))


# --- Medium 7: one training per run folder -----------------------------------------------------


def test_two_trainings_into_one_run_folder_the_second_is_refused(tmp_path):
    race = tmp_path / "race"
    # Both choose the folder at start-up; the one that holds it trains for seconds more.
    done = _finish([_train(*QUICK, "--epochs", "4", "--seed", s, "--run", race) for s in (1, 2)])
    codes = [code for code, _, _ in done]
    assert sorted(codes) == [0, 1], done
    winner, loser = codes.index(0), codes.index(1)
    line = _one_line(done[loser][2])
    assert str(race) in line and "another training" in line, line
    assert f"results in {race}" in done[winner][1]
    assert yaml.safe_load((race / "config.yaml").read_text())["seed"] == (1, 2)[winner]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["race"]  # no race2, nothing half-made


def test_auto_named_run_folders_never_collide_and_failures_leave_none(tmp_path):
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir(), elsewhere.mkdir()
    procs = [_train(*QUICK, "--epochs", "1", "--seed", s, cwd=here) for s in (1, 2)]
    procs.append(_train("--data", tmp_path / "missing", cwd=elsewhere))
    done = _finish(procs)
    assert [code for code, _, _ in done] == [0, 0, 1], done
    runs = here / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["train", "train2"]
    seeds = {
        yaml.safe_load((runs / n / "config.yaml").read_text())["seed"] for n in ("train", "train2")
    }
    assert seeds == {1, 2}  # each run's outputs in its own folder
    assert "missing" in _one_line(done[2][2])
    assert not any(elsewhere.iterdir())  # the folder it chose (runs/train) went when it failed


def test_resume_takes_the_same_lock_which_dies_with_the_process(tmp_path):
    run = tmp_path / "r"
    proc = _train(*QUICK, "--epochs", "2", "--run", run)
    state = run / "state" / "last.safetensors"
    deadline = time.monotonic() + 200
    while proc.poll() is None and not state.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGSTOP)  # still alive, still holding the folder
    try:
        refused = _finish([_train("--resume", "--run", run), _train(*QUICK, "--run", run)])
        for code, _, err in refused:
            line = _one_line(err)
            assert code == 1 and str(run) in line and "another training" in line, line
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
    ((code, out, err),) = _finish([_train("--resume", "--run", run)])  # the lock went with it
    assert code == 0, err
    assert f"results in {run}" in out
    assert not (tmp_path / "r2").exists()


# --- Low 2: every numeric setting has a range, checked when the config is resolved -------------


@pytest.mark.parametrize(
    "key,value,rule",
    [
        ("step_size", 0, "at least 1"),
        ("threads", -1, "between 0 and"),
        ("image_size", 0, "between 1 and"),
        ("momentum", -1, "at least 0 and below 1"),
        ("lr", float("nan"), "finite and positive"),
        ("lr", "inf", "finite and positive"),
        ("gamma", 0, "positive"),
        ("seed", 2**64, "between 0 and"),
        ("epochs", 10**12, "between 0 and"),
        ("warmup", 1.5, "between 0 and 1"),
        ("val_fraction", 1.0, "between 0 and 1, exclusive"),
        ("target_sensitivity", 0, "above 0 and at most 1"),
    ],
)
def test_out_of_range_settings_name_the_setting_and_its_range(key, value, rule):
    with pytest.raises(ConfigError) as e:
        make_config(None, {key: value})
    assert f"setting {key!r} must be {rule}" in str(e.value), str(e.value)


def test_every_numeric_setting_has_a_range_that_holds_its_default():
    from convlens.config import setting_ranges

    ranges = setting_ranges()
    numeric = {n for n, tp in config_types().items() if {int, float} & set(_types(tp))}
    assert numeric == set(ranges)
    for name, allowed in ranges.items():
        default = getattr(TrainConfig(), name)
        assert default is None or default in allowed, (name, default)


def _types(tp) -> tuple:
    return getattr(tp, "__args__", (tp,))


def test_an_unknown_model_argument_names_the_accepted_ones():
    with pytest.raises(ConfigError, match=r"model_args.*'foo'.*widths, whiten_kernel"):
        make_config(None, {"model": "fastnet", "model_args": {"foo": 1}})
    with pytest.raises(ConfigError, match=r"'mlp'.*'width'.*hidden"):
        make_config(None, {"model": "mlp", "model_args": {"width": 8}})
    assert make_config(None, {"model": "fastnet", "model_args": {"widths": [8, 8, 8]}})


def test_bad_settings_are_one_line_errors_on_the_command_line(tmp_path):
    cases = [
        (["--step-size", "0", "--schedule", "step"], "setting 'step_size' must be at least 1"),
        (["--lr", "nan"], "setting 'lr' must be finite and positive, got nan"),
        (["--model", "fastnet", "--model-arg", "foo=1"], "it accepts widths"),
        (["--translate", "1000"], "setting 'translate' must be below the image side"),
    ]
    procs = [_train(*QUICK, "--epochs", "1", *args, "--run", tmp_path / str(i))
             for i, (args, _) in enumerate(cases)]  # fmt: skip
    for (code, _, err), (_, needle) in zip(_finish(procs), cases, strict=True):
        assert code == 1 and needle in _one_line(err), err
    assert not any(tmp_path.iterdir())  # refused before a run folder was made


# --- Low 3: non-finite validation never becomes best; the stop message says what exists -------


def test_overflow_in_a_one_step_epoch_stops_and_saves_nothing_as_best(tmp_path):
    run = tmp_path / "r"  # 1257 training images in one batch: one step, finite loss, inf weights
    with pytest.raises(TrainingError) as e:
        settings = {**API, "batch_size": 2048, "lr": 1e30, "schedule": "constant"}
        convlens.train(**settings, epochs=1, run=str(run))
    assert str(e.value).startswith("epoch 1: validation loss is nan"), e.value
    assert "no epoch ended with finite scores, so no weights were saved" in str(e.value)
    assert not (run / "weights").exists()


def test_a_nan_loss_before_any_checkpoint_claims_none(tmp_path):
    run = tmp_path / "r"
    with pytest.raises(TrainingError, match="loss is nan") as e:
        convlens.train(**API, epochs=2, lr=1e30, run=str(run))
    assert "epoch 0" not in str(e.value) and "no weights were saved" in str(e.value)
    assert not (run / "weights").exists()


def test_calibration_with_non_finite_logits_is_skipped_with_a_note():
    from convlens.evaluation.calibration import calibrate

    ds = convlens.load_dataset("digits")
    model = convlens.create_model("mlp", in_channels=1, num_classes=10, image_size=(8, 8))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("inf"))
    meta = {"normalize": {"mean": [0.3], "std": [0.3]}, "tta": "none"}
    entry, note = calibrate(model, meta, ds)
    assert entry == {} and "not finite" in note, note


# --- Low 4: class names drawn as plain text ---------------------------------------------------

HOSTILE = ["$\\frac{$", "a$b$c\\", "bell\x07tab\t", "surrogate\udcff"]


def test_figures_draw_any_class_name_as_plain_text(tmp_path):
    from convlens.evaluation import plots
    from convlens.explain import figures

    plots.save_confusion_matrix([[3, 1, 0, 0], [0, 2, 0, 1], [0, 0, 4, 0], [1, 0, 0, 2]],
                                HOSTILE, tmp_path / "cm.png")  # fmt: skip
    labels = np.eye(4)[[0, 1, 2, 3, 0, 1, 2, 3]]
    plots.save_label_rocs(labels, labels * 0.8 + 0.1, HOSTILE, tmp_path / "rocs.png")
    image, heat = torch.zeros(1, 8, 8, dtype=torch.uint8), torch.rand(8, 8)
    figures.save(figures.gradcam_figure(image, heat, heat, f"{HOSTILE[0]} (0.9)", HOSTILE[1]),
                 tmp_path / "cam.png")  # fmt: skip
    for name in ("cm.png", "rocs.png", "cam.png"):
        assert Image.open(tmp_path / name).size[0] > 100


def test_a_run_with_a_math_syntax_class_name_writes_its_report(tmp_path):
    data = tmp_path / "shapes"
    _folder(data, ["$\\frac{$", "plain"])
    run = convlens.train(data=str(data), model="mlp", epochs=1, batch_size=16, lr=0.05,
                         run=str(tmp_path / "run"))  # fmt: skip
    assert (run / "confusion_matrix.png").is_file() and (run / "report.html").is_file()


# --- Low 7: files honour the umask ------------------------------------------------------------


@contextlib.contextmanager
def _umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_run_folder_and_cache_files_honour_the_umask(tmp_path, umask):
    data, run = tmp_path / "shapes", tmp_path / "run"
    _folder(data, ["dark", "light"])
    with _umask(umask):
        convlens.train(data=str(data), model="mlp", epochs=1, batch_size=8, lr=0.05, run=str(run))
    files = [p for p in (*run.rglob("*"), *(data / ".convlens-cache").rglob("*")) if p.is_file()]
    assert {"config.yaml", "results.csv", "best.safetensors", "last.safetensors",
            "report.html", "manifest.json"} <= {p.name for p in files}  # fmt: skip
    modes = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes


def test_downloads_honour_the_umask(tmp_path):
    from convlens.data.download import download

    (tmp_path / "site").mkdir()
    payload = os.urandom(5000)
    (tmp_path / "site" / "blob.bin").write_bytes(payload)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep the test's output clean
            pass

    site = functools.partial(Handler, directory=str(tmp_path / "site"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), site)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/blob.bin"
        digest = hashlib.sha256(payload).hexdigest()
        for mask in (0o022, 0o077):
            with _umask(mask):
                got = download(url, tmp_path / f"blob-{mask:o}.bin", digest, progress=False)
            assert stat.S_IMODE(got.stat().st_mode) == 0o666 & ~mask
    finally:
        server.shutdown()
