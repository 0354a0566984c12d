"""One entry point, `convlens MODE ...`: parses arguments and dispatches; no logic of its own."""

from __future__ import annotations

import csv
import json
import sys
import types
import typing

import click

from convlens.errors import ConvlensError

SPLITS = ["train", "val", "test"]
_CLICK_TYPES = {int: click.INT, float: click.FLOAT, str: click.STRING}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="convlens")
def cli() -> None:
    """convlens: train, evaluate, explain and serve CNN image recognisers.

    Add --debug anywhere to see a traceback instead of a one-line error.
    """


def _train_options(fn):
    """One --option per TrainConfig setting, typed and documented from the dataclass."""
    from convlens.config import TrainConfig, config_types, setting_help, setting_ranges

    helps, defaults, ranges = setting_help(), TrainConfig(), setting_ranges()
    for name, tp in reversed(list(config_types().items())):
        flag = "--" + name.replace("_", "-")
        text = helps.get(name, "")
        if name == "model_args":
            opt = click.option(
                "--model-arg", "model_args", multiple=True, metavar="KEY=VALUE",
                help="extra model argument (repeatable), e.g. --model-arg width=32",
            )  # fmt: skip
        elif tp is bool:
            opt = click.option(f"{flag}/--no-{flag[2:]}", name, default=None, help=text)
        else:
            if typing.get_origin(tp) is types.UnionType:
                tp = next(a for a in typing.get_args(tp) if a is not type(None))
            default = getattr(defaults, name)
            notes = [f"default: {default}"] if default is not None else []
            notes += [str(ranges[name])] if name in ranges else []  # e.g. "at least 1"
            shown = f" [{'; '.join(notes)}]" if notes else ""
            # --run-dir too: under torchrun, `--run` is taken for an abbreviation of --run-path
            flags = (flag, "--run-dir") if name == "run" else (flag,)
            opt = click.option(*flags, name, type=_CLICK_TYPES[tp], default=None, help=text + shown)
        fn = opt(fn)
    return fn


def _launch_options(fn):
    """workflow (issue 18): --nproc and the flags for several machines (torch.distributed.run)."""
    for name, kw in reversed(LAUNCH.items()):
        fn = click.option("--" + name.replace("_", "-"), name, **kw)(fn)
    return fn


LAUNCH = {
    "nproc": dict(type=click.IntRange(min=1), default=1, show_default=True,
                  help="training processes on this machine (DDP through torch.distributed.run; "
                  "one per GPU)"),
    "nnodes": dict(type=click.IntRange(min=1), default=1, show_default=True,
                   help="machines, each running this command with its --node-rank"),
    "node_rank": dict(type=click.IntRange(min=0), default=0, show_default=True,
                      help="this machine's number, 0 to nnodes-1"),
    "master_addr": dict(default="127.0.0.1", show_default=True,
                        help="address of machine 0, which every machine can reach"),
    "master_port": dict(type=click.IntRange(1, 65535),
                        help="port on machine 0 [default: a free one; 29500 for several]"),
}  # fmt: skip


@cli.command()
@click.option("--config", "config_file", type=click.Path(), help="YAML file of settings")
@_train_options
@_launch_options
def train(config_file: str | None, model_args: tuple[str, ...], **settings: object) -> None:
    """Train a model; writes a run folder (runs/train, runs/train2, ...)."""
    from convlens.api.train import train as run_training
    from convlens.config import make_config

    launch = {k: settings.pop(k) for k in LAUNCH}  # workflow (issue 18): --nproc
    overrides = _overrides(model_args, settings)
    if launch["nproc"] > 1 or launch["nnodes"] > 1:
        from convlens.api.launch import launch_training

        launch_training(config_file, overrides, **launch)
        return
    run_training(make_config(config_file, overrides))


def _overrides(model_args: tuple[str, ...], settings: dict) -> dict:
    """The settings the flags give, --model-arg KEY=VALUE pairs as model_args."""
    import yaml

    overrides = dict(settings)
    if model_args:
        pairs = [a.partition("=") for a in model_args]
        bad = [a for a, (_, eq, _) in zip(model_args, pairs, strict=True) if not eq]
        if bad:
            raise ConvlensError(f"--model-arg {bad[0]!r}: expected KEY=VALUE")
        overrides["model_args"] = {k: yaml.safe_load(v) for k, _, v in pairs}
    return overrides


@cli.command()
@click.argument("run")
@click.option("--data", help="dataset to evaluate on [default: the one it was trained on]")
@click.option("--split", default="test", show_default=True, type=click.Choice(SPLITS))
@click.option("--json", "as_json", is_flag=True, help="print one JSON document, nothing else")
@click.option("--target-sensitivity", type=click.FloatRange(0, 1, min_open=True),
              help="two classes: threshold reaching this sensitivity on val [default: the run's "
              "setting, else Youden's J]")  # fmt: skip
@click.option("--device", default="cpu", show_default=True,
              help="where the model runs: cpu, cuda or auto (cuda if there is a GPU)")  # fmt: skip
def evaluate(
    run: str,
    data: str | None,
    split: str,
    as_json: bool,
    target_sensitivity: float | None,
    device: str,
) -> None:
    """Accuracy, top-5, per-class precision/recall/F1 and confusion matrix of RUN."""
    from convlens.api.evaluate import evaluate_run
    from convlens.device import resolve_device

    metrics = evaluate_run(run, data=data, split=split, target_sensitivity=target_sensitivity,
                           device=str(resolve_device(device)))  # fmt: skip
    if as_json:
        click.echo(json.dumps(metrics, indent=2))
        return
    if "per_class" not in metrics:  # multilabel, anomaly, embed: the task's own summary line
        from convlens.tasks import task_class

        click.echo(task_class(metrics.get("task", "classify")).summary(metrics))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{metrics['data']} {metrics['split']} split, n={metrics['n']}")
    for col in ("class", "precision", "recall", "f1", "support"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for c in metrics["per_class"]:
        table.add_row(c["class"], f"{c['precision']:.4f}", f"{c['recall']:.4f}",
                      f"{c['f1']:.4f}", str(c["support"]))  # fmt: skip
    console = Console(highlight=False)
    console.print(table)
    console.print(
        f"accuracy {metrics['accuracy']:.4f}  top5 {metrics['top5']:.4f}  "
        f"macro_f1 {metrics['macro_f1']:.4f}"
    )
    if "detection" in metrics:
        from convlens.tasks.detection import detection_lines

        click.echo("\n".join(detection_lines(metrics["detection"])))
    if "openset" in metrics:  # open-set rejection (issue 19): what the val threshold keeps
        from convlens.tasks.openset import line

        click.echo(line(metrics["openset"]))


@cli.command()
@click.argument("run")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--top-k", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="print one JSON document, nothing else")
@click.option("--csv", "csv_file", type=click.Path(), help="write rows to this CSV file")
@click.option("--engine", default="torch", show_default=True, type=click.Choice(["torch", "numpy"]),
              help="numpy: the NumPy reference engine (textbook, lenet5, mlp)")  # fmt: skip
@click.option("--maps", "maps_dir", type=click.Path(file_okay=False),
              help="anomaly maps (patchcore, padim runs): folder for their PNG files, written "
              "with --json, --csv or this [default: maps/ beside the CSV file, else "
              "./maps]")  # fmt: skip
def predict(
    run: str, inputs: tuple[str, ...], top_k: int, as_json: bool, csv_file: str | None, engine: str,
    maps_dir: str | None,
):  # fmt: skip
    """Top-k classes of each image (files, folders or globs) with probabilities."""
    from convlens.predict import expand_inputs, load

    rows = load(run, engine=engine).predict_files(expand_inputs(list(inputs)), top_k=top_k)
    # anomaly maps (issue 19): PNG files in a folder, each row naming its own
    if any("map_png" in row for row in rows):
        from pathlib import Path

        from convlens.predict.maps import FOLDER, save_maps

        if as_json or csv_file or maps_dir:
            beside = Path(csv_file).parent / FOLDER if csv_file else Path(FOLDER)
            save_maps(rows, maps_dir or beside)
        for row in rows:
            row.pop("map_png", None)
    if csv_file:
        with open(csv_file, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file", "rank", "label", "index", "score", "error"])
            for row in rows:
                for rank, p in enumerate(row.get("predictions", []), 1):
                    writer.writerow([row["file"], rank, p["label"], p["index"], p["score"], ""])
                if "anomaly" in row:  # anomaly run: one row, labelled anomalous or normal
                    label = "anomalous" if row["anomaly"] else "normal"
                    writer.writerow([row["file"], "", label, "", row["score"], ""])
                if row.get("unknown"):  # open-set rejection (issue 19): below the val threshold
                    writer.writerow([row["file"], "", "unknown", "", row["openset"]["value"], ""])
                if "error" in row:
                    writer.writerow([row["file"], "", "", "", "", row["error"]])
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    elif not csv_file:
        for row in rows:
            if "error" in row:
                click.echo(f"{row['file']}: error: {row['error']}")
                continue
            if "anomaly" in row:  # anomaly run: a score in [0, 1], flagged at the val threshold
                flag = "ANOMALOUS" if row["anomaly"] else "normal"
                where = f"  map {row['map']}" if "map" in row else ""
                click.echo(f"{row['file']}: anomaly score {row['score']:.3f} {flag}{where}")
                continue
            tops = ", ".join(
                f"{p['label']} {p['score']:.3f}{' +' if p.get('positive') else ''}"
                for p in row["predictions"]
            )  # +: multi-label, positive at the label's threshold chosen on val
            if "flag" in row:  # two-class run: the decision at the threshold chosen on val
                tops += f"  -> {'POSITIVE' if row['flag'] else 'negative'}"
            if row.get("unknown"):  # open-set rejection (issue 19): below the val threshold
                point = row["openset"]
                tops = (f"unknown ({point['score']} {point['value']:.4g} < "
                        f"{point['threshold']:.4g}); nearest: {tops}")  # fmt: skip
            click.echo(f"{row['file']}: {tops}")
    if any("error" in row for row in rows):
        click.echo(f"{sum('error' in r for r in rows)} of {len(rows)} file(s) unreadable", err=True)


@cli.command()
@click.argument("run")
@click.argument("images", nargs=-1)
@click.option("--out", type=click.Path(), help="folder for the figures [default: RUN/explain]")
@click.option("--layer", help="module for Grad-CAM, e.g. features.conv2 [default: last stage]")
@click.option("--invariance", is_flag=True, help="also measure shift/rotation accuracy vs an MLP")
@click.option("--baseline", help="run to compare with [default: an mlp trained like RUN]")
@click.option("--data", help="dataset to use [default: the one RUN was trained on]")
@click.option("--max-shift", default=4, show_default=True, type=click.IntRange(min=0),
              help="largest test shift in pixels")  # fmt: skip
@click.option("--n-images", default=2000, show_default=True, help="images sampled per measure")
# the interactive explainer page (issue 20)
@click.option("--interactive", is_flag=True,
              help="one clickable page instead [--out: RUN/explain/explainer.html]")  # fmt: skip
@click.option("--image", type=click.Path(), help="the page's image [default: a test image]")
def explain(run: str, images: tuple[str, ...], out: str | None, layer: str | None,
            invariance: bool, baseline: str | None, data: str | None, max_shift: int,
            n_images: int, interactive: bool, image: str | None) -> None:  # fmt: skip
    """Parameter sharing, filters, feature maps, top patches, Grad-CAM of RUN (PNGs + JSON)."""
    from convlens.api.explain import explain_run

    if interactive:  # the interactive explainer page (issue 20)
        from convlens.api.interactive import explain_page

        if len(images) > 1 or (images and image):
            raise click.UsageError("--interactive shows one image: give IMAGE or --image")
        click.echo(f"wrote {explain_page(run, image or (images[0] if images else None), out)}")
        return

    summary = explain_run(run, images, out=out, layer=layer, invariance=invariance,
                          baseline=baseline, data=data, max_shift=max_shift,
                          n_images=n_images)  # fmt: skip
    click.echo(f"{len(summary['figures'])} figures and summary.json in {summary['out']}")
    if "invariance" in summary:
        inv = summary["invariance"]
        for key in ("model", "baseline"):
            accs = " ".join(f"{100 * a:.1f}" for a in inv[key]["curves"]["shift"]["accuracy"])
            click.echo(f"{inv[key]['name']}: accuracy (%) at shifts 0..{max_shift} px: {accs}")


@cli.command()
@click.argument("run")
@click.option("--data", help="dataset to evaluate on [default: the one it was trained on]")
def report(run: str, data: str | None) -> None:
    """Rewrite RUN/report.html (and metrics.json, figures) from the run's best weights."""
    from convlens.api.evaluate import report_run

    click.echo(f"wrote {report_run(run, data=data)}")


@cli.command()
@click.argument("run")
@click.option("--format", "fmt", default="onnx", show_default=True,
              type=click.Choice(["onnx", "torchscript"]))  # fmt: skip
@click.option("--out", type=click.Path(), help="output file [default: next to the weights]")
def export(run: str, fmt: str, out: str | None) -> None:
    """Export RUN (ONNX or TorchScript, dynamic batch, metadata) and check it against torch."""
    from convlens.api.export import export_run

    result = export_run(run, fmt, out)
    what = "embedding" if "min_cosine" in result else "score"  # an embedding graph's parity
    click.echo(
        f"wrote {result[fmt]}; on {result['images']} {result['source']} images the largest "
        f"{what} difference from torch is {result['max_abs_diff']:.2e}"
    )


@cli.command()
@click.argument("run")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to bind")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--max-in-flight", default=64, show_default=True, type=click.IntRange(min=1),
              help="requests handled at once (once their body is in); more get 503")  # fmt: skip
@click.option("--max-connections", default=256, show_default=True, type=click.IntRange(min=1),
              help="open connections; past it requests get 503")  # fmt: skip
@click.option("--header-timeout", default=10.0, show_default=True,
              type=click.FloatRange(min=0, min_open=True),
              help="seconds a client may take to send a request head, then closed")  # fmt: skip
@click.option("--body-timeout", default=60.0, show_default=True,
              type=click.FloatRange(min=0, min_open=True),
              help="seconds a client may take to send a body, then 408")  # fmt: skip
@click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="NAME",
              help="a Host name to answer besides localhost, 127.0.0.1 and [::1] (repeatable, "
              "e.g. the server's DNS name); other names get 400 on a loopback address, and "
              "anywhere once one is given")  # fmt: skip
@click.option("--engine", default="auto", show_default=True,
              type=click.Choice(["auto", "onnx", "torch"]),
              help="predict via an ONNX export (auto: where it exports) or torch")  # fmt: skip
def serve(
    run: str,
    host: str,
    port: int,
    max_in_flight: int,
    max_connections: int,
    header_timeout: float,
    body_timeout: float,
    allowed_hosts: tuple[str, ...],
    engine: str,
) -> None:
    """Serve RUN (run folder, weights, .onnx or .pt) over HTTP: /predict, /model, /health, page."""
    from convlens.api.serve import serve as run_serve

    run_serve(run, host=host, port=port, max_in_flight=max_in_flight,
              max_connections=max_connections, header_timeout=header_timeout,
              body_timeout=body_timeout, allowed_hosts=allowed_hosts, engine=engine,
              start=True)  # fmt: skip


@cli.command()
def datasets() -> None:
    """Named datasets and where each was found."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from convlens.data import list_datasets

    table = Table()
    for col in ("name", "description", "found"):
        table.add_column(col, overflow="fold")
    for d in list_datasets():
        found = str(d["found"] or f"not here: {d['obtain']}")
        table.add_row(d["name"], escape(d["description"]), escape(found))
    Console().print(table)


@cli.command()
@click.argument("out", type=click.Path())
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--per-class", nargs=3, type=click.IntRange(min=1), metavar="TRAIN VAL TEST",
              help="images per class in each split [default: fashion-scenes' own]")  # fmt: skip
@click.option("--workers", type=click.IntRange(min=0),
              help="processes rendering (0: this one) [default: a core each, up to 8]")  # fmt: skip
@click.option("--item-scale", nargs=2, type=click.FloatRange(0, 1, min_open=True),
              metavar="LOW HIGH", help="item side / the image's shorter side [default: 0.45 0.9; "
              "fashion-scenes-small's: 0.15 0.35]")  # fmt: skip
@click.option("--data-dir", help="where Fashion-MNIST is looked up first")
def scenes(
    out: str, seed: int, per_class: tuple[int, int, int] | None, workers: int | None,
    item_scale: tuple[float, float] | None, data_dir: str | None,
) -> None:  # fmt: skip
    """Write a fashion-scenes tree (Fashion-MNIST items on real photos, JPEG) to new folder OUT."""
    from convlens import scenes as make_scenes

    manifest = make_scenes(out, seed, per_class, workers, data_dir, item_scale)
    counts = ", ".join(f"{n} {split}" for split, n in manifest["counts"].items())
    click.echo(f"wrote {counts} images to {out}/{{train,val,test}}/<class>/")


@cli.command()
@click.argument("folder", type=click.Path())
@click.argument("out", type=click.Path())
@click.option("--maxcount", default=1000, show_default=True, type=click.IntRange(min=1),
              help="images per shard (a shard also ends at 1 GB)")  # fmt: skip
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="seeds the order images are mixed in (and a held-out val split)")  # fmt: skip
@click.option("--strict", is_flag=True, help="stop at the first unreadable file")
def shards(folder: str, out: str, maxcount: int, seed: int, strict: bool) -> None:
    """Write FOLDER (class folders, optionally in train/val/test) as WebDataset shards in OUT."""
    from convlens.data.shards import write_shards

    index = write_shards(folder, out, maxcount=maxcount, seed=seed, strict=strict)
    total = sum(len(part) for part in index["shards"].values())
    parts = ", ".join(f"{split} {index['counts'][split]} images in {len(part)}"
                      for split, part in index["shards"].items())  # fmt: skip
    click.echo(f"wrote {total} shards and dataset.json to {out}: {parts}")
    if index["bad_files"]:
        click.echo(f"skipped {index['bad_files']} unreadable files, listed in {out}/bad_files.csv")
    for note in index["notes"]:
        click.echo(f"note: {note}")


@cli.command()
@click.option("--channels", default=1, show_default=True, help="input channels")
@click.option("--image-size", default=28, show_default=True, help="input height and width")
@click.option("--classes", default=10, show_default=True, help="number of classes")
def models(channels: int, image_size: int, classes: int) -> None:
    """Registered models with parameter counts and FLOPs for one image."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from convlens.models import list_models, model_info

    table = Table(title=f"input {channels}x{image_size}x{image_size}, {classes} classes")
    for col in ("model", "params", "MFLOPs", "description"):
        table.add_column(col, justify="right" if col in ("params", "MFLOPs") else "left")
    for name in list_models():
        info = model_info(
            name, in_channels=channels, num_classes=classes, image_size=(image_size, image_size)
        )
        flops = f"{info['flops'] / 1e6:.2f}"
        table.add_row(name, f"{info['params']:,}", flops, escape(info["description"]))
    Console().print(table)
    Console().print("and any torchvision classification model as tv-<name>, e.g. tv-resnet18")
    # transfer learning (issue 16): timm's models by name
    Console().print("and any timm model as timm-<name>, e.g. timm-convnext_atto "
                    "(pip install convlens[timm])", markup=False)  # fmt: skip


# workflow (issue 18): convlens tune
@cli.command()
@click.option("--space", required=True, type=click.Path(),
              help="YAML file: each setting to sweep with its range or choices")  # fmt: skip
@click.option("--trials", default=20, show_default=True, type=click.IntRange(min=1),
              help="finished trials the study should hold (run again, it continues)")  # fmt: skip
@click.option("--out", default="runs/tune", show_default=True, type=click.Path(),
              help="study folder: a run folder per trial, trials.csv, best.yaml")  # fmt: skip
@click.option("--storage", help="Optuna RDB storage URL, to share the study between machines "
              "[default: sqlite:///OUT/study.db]")  # fmt: skip
@click.option("--study-name", default="convlens", show_default=True, help="the study's name")
@click.option("--pruner", default="median", show_default=True,
              type=click.Choice(["median", "none"]),
              help="median: stop a trial below the median val score at an epoch")  # fmt: skip
@click.option("--startup-trials", default=5, show_default=True, type=click.IntRange(min=0),
              help="trials run to the end before the pruner stops any")  # fmt: skip
@click.option("--warmup-epochs", default=0, show_default=True, type=click.IntRange(min=0),
              help="epochs of each trial before the pruner may stop it")  # fmt: skip
@click.option("--config", type=click.Path(), help="YAML file of settings every trial shares")
@_train_options
def tune(model_args: tuple[str, ...], **options: object) -> None:
    """Sweep training settings with Optuna (TPE, median pruning); train flags fix the rest."""
    from rich.console import Console
    from rich.table import Table

    from convlens.api.tune import tune as run_tune

    names = ("space", "trials", "out", "storage", "study_name", "pruner", "startup_trials",
             "warmup_epochs", "config")  # fmt: skip
    own = {k: options.pop(k) for k in names}
    result = run_tune(**own, **_overrides(model_args, options))
    table = Table(title=f"study {result['study']} in {result['storage']}")
    columns = [c for c in result["trials"][0] if c != "run"] if result["trials"] else []
    for col in columns:
        table.add_column(col, justify="left" if col == "state" else "right")
    for row in result["trials"]:
        table.add_row(*(_cell(row[c]) for c in columns))
    Console(highlight=False).print(table)
    best = result["best"]
    if best is None:
        raise ConvlensError(f"no trial of the study completed; see {result['out']}/trials.csv")
    click.echo(f"best: trial {best['number']} ({best['value']:.4f}), run {best['run']}; "
               f"train it with: convlens train --config {best['config']}")  # fmt: skip


tune.params = [p for p in tune.params if p.name not in ("run", "resume", "folds", "fold")]


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


from convlens.faces.cli import COMMANDS as FACE_COMMANDS  # noqa: E402 (click only; fast)

for _command in FACE_COMMANDS:  # verify, enroll, identify, lfw
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; errors are one line on stderr and a non-zero exit (traceback with --debug)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    try:
        cli.main(args, prog_name="convlens", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        if debug:
            raise
        click.echo(f"convlens: error: {e.format_message()}", err=True)
        return e.exit_code
    except click.Abort:
        click.echo("convlens: aborted", err=True)
        return 130
    except (ConvlensError, OSError) as e:
        if debug:
            raise
        message = str(e) if isinstance(e, ConvlensError) else _os_message(e)
        click.echo(f"convlens: error: {' '.join(message.split())}", err=True)
        return 1
    except KeyboardInterrupt:
        click.echo("convlens: interrupted", err=True)
        return 130
    return 0


def _os_message(e: OSError) -> str:
    where = f"{e.filename}: " if e.filename else ""
    return f"{where}{e.strerror or e}"
