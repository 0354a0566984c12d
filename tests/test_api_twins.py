"""The Python API mirrors the CLI: every command (the face commands too) has a documented
top-level twin taking its arguments and options under the same names with the same defaults."""

import inspect

import click
import pytest

import convlens
from convlens.cli import cli
from convlens.config import config_types

RENAMED = {"config_file": "config", "fmt": "format"}  # click's name -> the twin's (a builtin)
PRINTING = {"as_json", "csv_file"}  # how the CLI prints what the twin returns
SETTINGS = set(config_types())  # train and tune take every setting as a keyword
NO_DEFAULT = click.Option(["--x"]).get_default(click.Context(click.Command("x")))  # click's own


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_every_command_has_a_python_twin_with_its_defaults(name):
    command = cli.commands[name]
    twin = getattr(convlens, name, None)
    assert callable(twin) and name in convlens.__all__, f"no convlens.{name}"
    doc = inspect.getdoc(getattr(twin, "__twin__", twin))
    assert doc and len(doc) > 20, f"convlens.{name} is not documented"
    params = inspect.signature(twin).parameters
    keywords = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    ctx = click.Context(command)
    for param in command.params:
        if param.name in PRINTING:
            continue
        own = RENAMED.get(param.name, param.name)
        if own not in params:
            assert keywords and own in SETTINGS, f"convlens.{name} lacks {own!r}"
            continue
        expected = params[own].default
        if param.required:
            assert expected is inspect.Parameter.empty, f"convlens.{name}({own}) is required"
            continue
        default = param.get_default(ctx)
        if default is None or default is NO_DEFAULT:  # an option the command gives no default
            default = () if getattr(param, "multiple", False) else None
        assert expected == default or (expected, default) == ((), None), (
            f"convlens.{name}({own}={expected!r}) but `convlens {name}` defaults to {default!r}"
        )


def test_subpackage_names_stay_callable_after_their_import():
    import convlens.export.onnx  # binds convlens.export to the subpackage
    import convlens.serve.app  # noqa: F401

    assert callable(convlens.export) and convlens.export.export_onnx.__name__ == "export_onnx"
    assert list(inspect.signature(convlens.serve).parameters)[:2] == ["run", "host"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return convlens.train(data="digits", model="textbook", epochs=1, batch_size=128, amp="off",
                          run=str(tmp_path_factory.mktemp("twins") / "run"))  # fmt: skip


def test_twins_work_on_a_trained_run(run, tmp_path):
    from PIL import Image
    from starlette.testclient import TestClient

    image = tmp_path / "seven.png"
    Image.new("L", (8, 8), 40).save(image)
    rows = convlens.predict(run, str(image), top_k=3)
    assert rows[0]["file"] == str(image) and len(rows[0]["predictions"]) == 3
    assert rows[0]["predictions"] == convlens.load(run).predict(image, top_k=3)
    assert convlens.evaluate(run, split="val")["split"] == "val"
    assert convlens.report(run) == run / "report.html" and (run / "report.html").is_file()
    assert convlens.export(run, format="torchscript")["max_abs_diff"] <= 1e-4
    summary = convlens.explain(run, n_images=50, out=str(tmp_path / "explain"))
    assert "filters" in summary["figures"]
    with TestClient(convlens.serve(run), base_url="http://127.0.0.1") as client:
        assert client.get("/model").json()["classes"] == [str(i) for i in range(10)]
    assert [m["name"] for m in convlens.models(image_size=8)] == convlens.list_models()
    assert "digits" in [d["name"] for d in convlens.datasets()]
