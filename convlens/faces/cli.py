"""The face commands: `convlens verify`, `enroll`, `identify` and `lfw` (parsing only; logic lives
in convlens.faces; heavy imports inside the commands so `convlens --help` stays fast)."""

from __future__ import annotations

import json

import click

DETECT_HELP = "find and crop the face with OpenCV's Haar cascade (--no-detect: images are crops)"
CONFIRM_HELP = "a classify run trained on lfw-faces that confirms each detected face"


def _face_options(fn):
    """--detect/--no-detect, --confirm and --device, shared by every face command."""
    fn = click.option("--device", default="cpu", show_default=True, help="cpu | cuda")(fn)
    fn = click.option("--confirm", metavar="RUN", help=CONFIRM_HELP)(fn)
    return click.option("--detect/--no-detect", default=True, show_default=True,
                        help=DETECT_HELP)(fn)  # fmt: skip


def _recogniser(run: str, detect: bool, confirm: str | None, device: str):
    from convlens.faces.recogniser import FaceRecogniser

    return FaceRecogniser(run, device=device, detect=detect, confirm=confirm)


def _faces_line(faces: dict) -> str:
    """Where the face was found in each image, for the plain-text output."""
    parts = []
    for image, info in faces.items():
        where = f"face at {info['box']}" if info.get("box") else "whole image"
        parts.append(f"{image}: {where}" + (f" ({info['note']})" if "note" in info else ""))
    return "; ".join(parts)


@click.command()
@click.argument("run")
@click.argument("image1")
@click.argument("image2")
@click.option("--json", "as_json", is_flag=True, help="print one JSON document, nothing else")
@_face_options
def verify(run: str, image1: str, image2: str, as_json: bool, detect: bool,
           confirm: str | None, device: str) -> None:  # fmt: skip
    """Whether IMAGE1 and IMAGE2 show the same person (embedding run RUN)."""
    from convlens.faces.verify import verify as run_verify

    result = run_verify(_recogniser(run, detect, confirm, device), image1, image2)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    verdict = "same person" if result["verified"] else "different people"
    similarity, threshold = result["similarity"], result["threshold"]
    click.echo(f"{verdict}: similarity {similarity:.4f} (threshold {threshold:.4f}); "
               f"{_faces_line(result['faces'])}")  # fmt: skip


@click.command()
@click.argument("run")
@click.argument("gallery_dir")
@click.option("--out", default="gallery.npz", show_default=True, help="gallery file to write")
@click.option("--json", "as_json", is_flag=True, help="print one JSON document, nothing else")
@_face_options
def enroll(run: str, gallery_dir: str, out: str, as_json: bool, detect: bool,
           confirm: str | None, device: str) -> None:  # fmt: skip
    """Embed GALLERY_DIR/<person>/<images> into a gallery .npz for `identify`."""
    from convlens.faces.gallery import enroll as run_enroll

    result = run_enroll(_recogniser(run, detect, confirm, device), gallery_dir, out)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"enrolled {result['images']} images of {result['people']} people in {out}")
    for row in result["skipped"]:
        click.echo(f"skipped {row['error']}", err=True)
    for person in result["people_without_images"]:
        click.echo(f"{person}: no usable image, not enrolled", err=True)


@click.command()
@click.argument("run")
@click.argument("gallery")
@click.argument("image")
@click.option("--top-k", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="print one JSON document, nothing else")
@_face_options
def identify(run: str, gallery: str, image: str, top_k: int, as_json: bool, detect: bool,
             confirm: str | None, device: str) -> None:  # fmt: skip
    """Who IMAGE shows among the people in GALLERY (from `enroll`), or "unknown"."""
    from convlens.faces.gallery import identify as run_identify

    result = run_identify(_recogniser(run, detect, confirm, device), gallery, image, top_k)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    tops = ", ".join(f"{c['identity']} {c['similarity']:.3f}" for c in result["candidates"])
    click.echo(f"{result['identity']} (threshold {result['threshold']:.3f}; best: {tops}); "
               f"{_faces_line({image: result['face']})}")  # fmt: skip


@click.command()
@click.argument("run")
@click.argument("lfw_dir")
@click.option("--pairs", help="pairs.txt [default: LFW_DIR/pairs.txt, else beside LFW_DIR]")
@click.option("--json", "as_json", is_flag=True, help="print one JSON document, nothing else")
@_face_options
def lfw(run: str, lfw_dir: str, pairs: str | None, as_json: bool, detect: bool,
        confirm: str | None, device: str) -> None:  # fmt: skip
    """LFW verification protocol: 10-fold accuracy, AUC, EER, TAR@FAR on LFW_DIR/Name/*.jpg."""
    from convlens.faces.lfw import find_pairs, run_protocol

    result = run_protocol(_recogniser(run, detect, confirm, device), find_pairs(lfw_dir, pairs),
                          lfw_dir)  # fmt: skip
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(
        f"LFW accuracy {100 * result['accuracy']:.2f}% +- {100 * result['std']:.2f} (10-fold); "
        f"AUC {result['auc']:.4f}  EER {result['eer']:.4f}  "
        f"TAR@FAR=1e-2 {result['tar@far=0.01']:.4f}  TAR@FAR=1e-3 {result['tar@far=0.001']:.4f}"
    )
    if result["no_face"]:
        click.echo(f"{len(result['no_face'])} image(s) had no detected face and were embedded "
                   f"whole, e.g. {result['no_face'][0]}", err=True)  # fmt: skip


COMMANDS = (verify, enroll, identify, lfw)
