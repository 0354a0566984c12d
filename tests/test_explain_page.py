"""`convlens explain RUN --interactive`: the page in a real Chromium, its sums checked by torch."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import convlens
from convlens.data import load_dataset
from convlens.data.batches import normalize
from convlens.errors import ConvlensError
from convlens.explain import object_scenes, shift_images
from tests.helpers import convlens as cli
from tests.helpers import launch_chromium, open_page, seven_png, start_server

ARTIFACTS = Path(__file__).parent / "artifacts"  # screenshots the tests keep (git-ignored)
BUDGET = 5 * 2**20  # bytes: the page of a 28x28 model stays under 5 MB
TV_BUDGET = 8 * 2**20  # bytes: a tv-resnet18's page at 32 px (60-odd columns of 64 maps)
needs_chromium = pytest.mark.skipif(not shutil.which("chromium"), reason="no Debian chromium")
QUICK = {"epochs": 1, "batch_size": 128, "amp": "off"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    home = tmp_path_factory.mktemp("page")
    return convlens.train(data="digits", model="textbook", run=str(home / "run"), **QUICK)


@pytest.fixture(scope="module")
def digit_png(tmp_path_factory):
    return seven_png(tmp_path_factory.mktemp("img") / "seven.png")


@pytest.fixture(scope="module")
def page_file(run, digit_png):
    path = run / "seven.html"
    out = cli("explain", run, "--interactive", "--image", digit_png, "--out", path)
    assert out.returncode == 0, out.stderr
    assert f"wrote {path}" in out.stdout
    return path


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """A folder of 40 grey 28x28 scenes in two classes, 8 of them for test."""
    root = tmp_path_factory.mktemp("scenes")
    x, y, _ = object_scenes(40, size=28, classes=2, seed=1)
    for i, (img, label) in enumerate(zip(x, y, strict=True)):
        folder = root / "data" / ("test" if i >= 32 else "train") / f"c{int(label)}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0].numpy()).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch_chromium(p)
        yield browser
        browser.close()


def click_map(page, layer: int, ch: int, row: int, col: int, size: tuple[int, int]) -> None:
    """Click pixel (row, col) of channel `ch`'s map of layer (column) `layer`."""
    img = page.locator(f'img.map[data-layer="{layer}"][data-ch="{ch}"]')
    box = img.bounding_box()
    img.click(position={"x": (col + 0.5) * box["width"] / size[1],
                        "y": (row + 0.5) * box["height"] / size[0]})  # fmt: skip
    calc = page.locator("#calc")
    assert [calc.get_attribute(f"data-{k}") for k in ("ch", "y", "x")] == [
        str(ch), str(row), str(col)]  # fmt: skip


def click_conv(page, layer: int, ch: int, row: int, col: int, size: tuple[int, int]):
    """Click pixel (row, col) of a conv map: (the map's value, the page's sum) as printed."""
    click_map(page, layer, ch, row, col, size)
    return (float(page.locator("#calc-value").text_content()),
            float(page.locator("#calc-sum").text_content()))  # fmt: skip


def shown(page, name: str) -> float:
    """The number the page prints in #calc-NAME."""
    return float(page.locator(f"#calc-{name}").text_content())


def torch_input(rec, image) -> torch.Tensor:
    """The normalised (1, C, H, W) input torch sees for an image file."""
    norm = rec.meta.normalize
    return normalize(rec.preprocess(image)[None], norm.mean, norm.std)


def _self_contained(page: str) -> None:
    assert not re.search(r'\b(src|href)="(?!data:|#)', page), "an outside asset"
    assert "<script src" not in page and "@import" not in page


@pytest.fixture(scope="module")
def default_page(run):
    """The page of the run's first stored test image, with the others to choose among."""
    return Path(convlens.explain(str(run), interactive=True)["page"])


def test_default_image_is_a_stored_test_image(run, default_page):
    assert default_page == run / "explain" / "explainer.html"
    page = default_page.read_text()
    _self_contained(page)
    assert "test image 0 of digits" in page and "NumPy reference engine" in page
    assert len(page.encode()) < BUDGET
    data = json.loads(re.search(r'id="data">(.*?)</script>', page, re.S).group(1))
    assert len(data["choices"]) == 7  # 8 test images to choose among, one per class first
    labels = [c["caption"].rsplit("labelled ", 1)[1] for c in data["choices"]]
    assert len(set(labels)) == 7 and not any(c["caption"].startswith("test image 0 ")
                                             for c in data["choices"])  # fmt: skip


@needs_chromium
def test_choosing_another_test_image_switches_maps_and_prediction(run, default_page, browser):
    """A thumbnail click: conv1's maps, a click's sum and the probabilities are that image's."""
    rec = convlens.load(str(run))
    page, errors = open_page(browser, default_page.as_uri(), height=900)
    thumbs = page.locator("img.thumb")
    assert thumbs.count() == 8
    conv = page.locator('img.map[data-layer="1"][data-ch="3"]')
    before, top_before = conv.get_attribute("src"), page.locator("#probs .bar").first.text_content()
    thumbs.nth(3).click()
    picture = torch.from_numpy(_png(thumbs.nth(3).get_attribute("src")).astype(np.uint8))
    assert page.locator("img.pic").get_attribute("src") == thumbs.nth(3).get_attribute("src")
    norm = rec.meta.normalize
    x = normalize(picture.reshape(1, *rec.size)[None], norm.mean, norm.std)  # (1, 1, 8, 8)
    with torch.no_grad():
        conv1 = dict(rec.model.named_modules())["features.conv1"](x)[0]
        probs = torch.softmax(rec.model(x)[0], 0)
    assert conv.get_attribute("src") != before
    grey = _png(conv.get_attribute("src"))  # drawn on the layer's range: torch's, rescaled
    lo, hi = float(conv1.min()), float(conv1.max())
    np.testing.assert_allclose(grey, np.round((conv1[3].numpy() - lo) / (hi - lo) * 255), atol=1)
    value, summed = click_conv(page, 1, 3, 4, 5, (8, 8))
    assert abs(summed - value) <= 1e-4 and abs(summed - float(conv1[3, 4, 5])) <= 1e-4
    k = int(probs.argmax())
    top = page.locator("#probs .bar").first
    assert top.get_attribute("data-class") == str(k)
    assert top.text_content() == f"{rec.classes[k]}: {100 * float(probs[k]):.2f}%"
    assert top.text_content() != top_before
    assert rec.classes[k] in page.locator("#sub").text_content()
    page.screenshot(path=str(ARTIFACTS / "explainer_chosen.png"), full_page=True)
    thumbs.first.click()  # back to the first image: its own maps again
    assert conv.get_attribute("src") == before
    page.close()
    assert not errors, errors


@pytest.fixture(scope="module")
def lenet5(scenes):
    """A lenet5 run on the scenes and its page of the default (first stored test) image."""
    run = convlens.train(data=str(scenes / "data"), model="lenet5", run=str(scenes / "lenet5"),
                         **QUICK)  # fmt: skip
    return run, Path(convlens.explain(str(run), interactive=True)["page"])


def test_page_of_a_28x28_lenet5_stays_under_budget(lenet5):
    """Every conv layer's inputs and weights are embedded, and the page is under 5 MB."""
    page = lenet5[1].read_text()
    _self_contained(page)
    assert len(page.encode()) < BUDGET
    assert '"name":"features.conv2"' in page and '"values":null' not in page
    assert '"weight":null' not in page


@needs_chromium
def test_lenet5_conv_click_shows_the_sum_relu_and_max_pool_choice(scenes, lenet5, browser):
    """lenet5 on the NumPy engine: conv1's sum, its ReLU and pool1's max, each equal to torch."""
    run, out = lenet5
    rec = convlens.load(str(run))
    test = load_dataset(str(scenes / "data")).test  # the page's default image is test 0
    norm = rec.meta.normalize
    x = normalize(test.images[:1], norm.mean, norm.std)
    net = dict(rec.model.named_modules())
    with torch.no_grad():
        relu1 = net["features.relu1"](net["features.conv1"](x))[0]  # (6, 28, 28)
        pool1 = net["features.pool1"](relu1[None])[0]  # (6, 14, 14)
    page, errors = open_page(browser, out.as_uri(), height=900)
    assert "NumPy reference engine" in page.locator("#sub").text_content()
    # a pixel that pool1 keeps and one it drops, in the same 2x2 window
    ch, py, px = 4, 6, 7
    window = relu1[ch, 2 * py : 2 * py + 2, 2 * px : 2 * px + 2]
    kept = divmod(int(window.argmax()), 2)
    dropped = divmod(int(window.argmin()), 2) if window.max() > window.min() else None
    for dy, dx in [kept] + ([dropped] if dropped else []):
        row, col = 2 * py + dy, 2 * px + dx
        shown, summed = click_conv(page, 1, ch, row, col, (28, 28))
        assert abs(summed - shown) <= 1e-4
        relu = float(page.locator("#calc-relu").text_content())
        assert abs(relu - float(relu1[ch, row, col])) <= 1e-4
        pooled = float(page.locator("#calc-pool").text_content())
        assert abs(pooled - float(pool1[ch, py, px])) <= 1e-4
        cell = page.locator("#calc table.win td.max")  # the window's largest, highlighted
        assert cell.count() == 1 and abs(float(cell.text_content()) - pooled) <= 1e-4
        said = page.locator("#calc").text_content()
        assert ("this pixel is the one kept" in said) == ((dy, dx) == kept)
    page.screenshot(path=str(ARTIFACTS / "explainer_lenet5.png"), full_page=True)
    page.close()
    assert not errors, errors


@pytest.fixture(scope="module")
def tv_page(scenes):
    """A tv-resnet18 run (no pretrained weights) on the scenes at 32 px, and its page."""
    run = convlens.train(data=str(scenes / "data"), model="tv-resnet18", image_size=32,
                         run=str(scenes / "tv"), **QUICK)  # fmt: skip
    image = sorted((scenes / "data" / "test").rglob("*.png"))[0]
    out = Path(convlens.explain(str(run), interactive=True, image=str(image),
                                out=str(scenes / "tv.html"))["page"])  # fmt: skip
    return run, image, out


@needs_chromium
def test_tv_resnet18_layers_convs_and_residual_sums_in_chromium(tv_page, browser):
    """Every module of a torchvision ResNet and every residual sum (`out + identity`, outside
    any module) is a column; conv1's click redoes conv, BatchNorm and ReLU, and a click on a
    sum shows both operands added, each number equal to torch's."""
    run, image, out = tv_page
    assert len(out.read_bytes()) < TV_BUDGET
    rec = convlens.load(str(run))
    m = rec.model
    x = torch_input(rec, image)
    with torch.no_grad():
        conv1 = m.conv1(x)
        bn1 = m.bn1(conv1)
        pool = m.maxpool(torch.relu(bn1))  # (1, 64, 8, 8): layer1.0's input and identity
        blk = m.layer1[0]
        bn2 = blk.bn2(blk.conv2(torch.relu(blk.bn1(blk.conv1(pool)))))
        block = blk(pool.clone())  # relu(bn2 + pool)
    page, errors = open_page(browser, out.as_uri(), height=900)
    text = "c => [c.querySelector('h3').textContent, c.querySelector('.meta').textContent]"
    cols = page.eval_on_selector_all(".col", f"cs => cs.map({text})")  # [[name, meta], ...]
    names = [n for n, _ in cols]
    for name, module in m.named_modules():  # each module with weights, with its count
        n = sum(p.numel() for p in module.parameters(recurse=False))
        if n:
            assert name in names, name
            assert f"{n:,} parameters" in cols[names.index(name)][1], name
    sums = [i for i, (_, meta) in enumerate(cols) if "added outside a module" in meta]
    assert len(sums) == 8  # one per BasicBlock
    assert cols[sums[0]][1].startswith("add · 64×8×8")
    assert "layer1.0.bn2 + maxpool" in cols[sums[0]][1]

    for ch, row, col in [(5, 7, 9), (60, 0, 15)]:  # inside, and on the padding
        value, summed = click_conv(page, names.index("conv1"), ch, row, col, (16, 16))
        assert abs(summed - value) <= 1e-4 and abs(summed - float(conv1[0, ch, row, col])) <= 1e-4
        assert abs(shown(page, "bn") - float(bn1[0, ch, row, col])) <= 1e-3
        assert abs(shown(page, "relu") - max(0.0, float(bn1[0, ch, row, col]))) <= 1e-3
        py, px = min(7, (row + 1) // 2), min(7, (col + 1) // 2)  # a 3x3 window holding it
        assert abs(shown(page, "pool") - float(pool[0, ch, py, px])) <= 1e-3
    page.screenshot(path=str(ARTIFACTS / "explainer_tv_conv.png"), full_page=True)

    for layer in (sums[0], sums[0] + 1):  # the sum, and the block's ReLU after it
        ch, row, col = 7, 3, 2
        click_map(page, layer, ch, row, col, (8, 8))
        a, b, total = shown(page, "a"), shown(page, "b"), shown(page, "add")
        assert abs(a - float(bn2[0, ch, row, col])) <= 1e-3
        assert abs(b - float(pool[0, ch, row, col])) <= 1e-3
        assert abs(total - (a + b)) <= 1e-4 and abs(total - shown(page, "value")) <= 1e-4
        assert abs(shown(page, "relu") - float(block[0, ch, row, col])) <= 1e-3
    page.screenshot(path=str(ARTIFACTS / "explainer_tv_sum.png"), full_page=True)
    page.close()
    assert not errors, errors


@needs_chromium
def test_torch_model_conv_pixel_in_chromium(scenes, browser):
    """fastnet, which the NumPy engine cannot run: its numbers come from torch's hooks."""
    run = convlens.train(data=str(scenes / "data"), model="fastnet", run=str(scenes / "fastnet"),
                         model_args={"widths": [8, 16, 16]}, **QUICK)  # fmt: skip
    image = next((scenes / "data" / "test").rglob("*.png"))
    out = Path(convlens.explain(str(run), interactive=True, image=str(image),
                                out=str(scenes / "fastnet.html"))["page"])  # fmt: skip
    rec = convlens.load(str(run))
    with torch.no_grad():
        conv1 = dict(rec.model.named_modules())["conv1"](torch_input(rec, image))[0]
    page, errors = open_page(browser, out.as_uri(), height=900)
    assert page.locator('.col[data-col="1"] h3').text_content() == "conv1"
    assert "Numbers from torch" in page.locator("#sub").text_content()
    size = tuple(conv1.shape[1:])
    for ch, row, col in [(2, 10, 13), (7, size[0] - 1, 0)]:
        shown, summed = click_conv(page, 1, ch, row, col, size)
        assert abs(summed - shown) <= 1e-4
        assert abs(summed - float(conv1[ch, row, col])) <= 1e-4
    page.screenshot(path=str(ARTIFACTS / "explainer_fastnet.png"))
    page.close()
    assert not errors, errors


@needs_chromium
def test_clicks_show_sums_equal_to_the_map_and_to_torch(run, page_file, digit_png, browser):
    rec = convlens.load(str(run))
    x = torch_input(rec, digit_png)
    with torch.no_grad():
        conv1 = dict(rec.model.named_modules())["features.conv1"](x)[0]  # (16, 8, 8)
        logits = rec.model(x)[0]  # (10,)
    top = rec.predict(digit_png)[0]["label"]
    ARTIFACTS.mkdir(exist_ok=True)
    page, errors = open_page(browser, page_file.as_uri(), height=900)
    assert page.locator('.col[data-col="1"] h3').text_content() == "features.conv1"
    for ch, row, col in [(3, 4, 5), (0, 0, 0), (15, 7, 2)]:  # inside, and on the padding
        shown, summed = click_conv(page, 1, ch, row, col, (8, 8))
        assert abs(summed - shown) <= 1e-4  # equal at the 4 decimals printed
        assert abs(summed - float(conv1[ch, row, col])) <= 1e-4
        relu = float(page.locator("#calc-relu").text_content())
        assert relu == pytest.approx(max(summed, 0.0), abs=1e-4)
        assert page.locator("#calc-pool").count() == 1
    page.screenshot(path=str(ARTIFACTS / "explainer_conv.png"), full_page=True)

    last = page.locator(".col").count() - 1
    k = int(logits.argmax())
    page.locator(f'.unit[data-layer="{last}"][data-unit="{k}"]').click()
    fc_sum = float(page.locator("#fc-sum").text_content())
    assert abs(fc_sum - float(page.locator("#fc-value").text_content())) <= 1e-4
    assert abs(fc_sum - float(logits[k])) <= 1e-4
    assert page.locator("#calc table.grid").count() == 2  # top inputs, then the softmax
    assert page.locator("#probs .bar").first.get_attribute("data-label") == top
    first = page.locator("#cam").get_attribute("src")  # Grad-CAM of the predicted class
    second = page.locator("#probs .bar").nth(1)
    second.click()
    assert page.locator("#cam").get_attribute("data-class") == second.get_attribute("data-class")
    assert page.locator("#cam").get_attribute("src") != first
    page.screenshot(path=str(ARTIFACTS / "explainer_softmax.png"), full_page=True)
    assert page.locator("#hierarchy").is_visible()  # the top-activating training patches
    assert page.locator("#patches").get_attribute("src").startswith("data:image/png;base64,")
    page.close()
    assert not errors, errors


@needs_chromium
def test_dragging_the_image_moves_the_first_maps_with_it(run, page_file, digit_png, browser):
    rec = convlens.load(str(run))
    moved = shift_images(rec.preprocess(digit_png)[None], 0, 2)  # 2 px right, zero-filled
    top = rec.answer(rec.predict_tensor(moved)[0])["predictions"][0]["label"]
    page, errors = open_page(browser, page_file.as_uri(), height=900)
    conv = page.locator('img.map[data-layer="1"][data-ch="3"]')
    before = _png(conv.get_attribute("src"))  # (8, 8) grey levels
    page.locator("img.pic").scroll_into_view_if_needed()  # the mouse moves over the viewport
    box = page.locator("img.pic").bounding_box()
    page.mouse.move(box["x"] + 20, box["y"] + 20)
    page.mouse.down()
    page.mouse.move(box["x"] + 20 + 2 * box["width"] / 8, box["y"] + 20, steps=4)
    page.mouse.up()
    assert page.locator("#shift-at").text_content() == "0, 2"
    after = _png(conv.get_attribute("src"))
    # 5x5 windows that see neither the zero padding nor the filled columns moved by 2
    assert np.abs(after[2:6, 4:6] - before[2:6, 2:4]).max() <= 1
    assert np.abs(after - before).max() > 1  # and the map did change
    assert page.locator("#probs .bar").first.get_attribute("data-label") == top
    page.screenshot(path=str(ARTIFACTS / "explainer_moved.png"))
    conv.click()
    assert "unmoved image" in page.locator("#calc").text_content()
    page.close()
    assert not errors, errors


def _png(uri: str) -> np.ndarray:
    """A data: URI's PNG as int grey levels."""
    data = base64.b64decode(uri.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)), dtype=int)


@needs_chromium
def test_serve_shows_the_page_for_an_uploaded_image(run, digit_png, browser):
    import httpx

    rec = convlens.load(str(run))
    with torch.no_grad():
        conv1 = dict(rec.model.named_modules())["features.conv1"](torch_input(rec, digit_png))[0]
    proc, url = start_server(run, "--engine", "torch")  # no ONNX export to wait for
    try:
        info = httpx.get(f"{url}/model").json()
        assert info["explain"] is True
        bad = httpx.post(f"{url}/explain", files={"file": b"not an image"})
        assert bad.status_code == 422, bad.text
        page, errors = open_page(browser, url + "/", height=900)
        page.wait_for_function("document.getElementById('about').textContent.includes('textbook')")
        page.set_input_files("#file", str(digit_png))
        page.wait_for_selector("#explainer:not([hidden])")
        frame = page.frame_locator("#explainer")
        assert "seven.png" in frame.locator("#sub").text_content()
        shown, summed = click_conv(frame, 1, 5, 3, 6, (8, 8))
        assert abs(summed - shown) <= 1e-4 and abs(summed - float(conv1[5, 3, 6])) <= 1e-4
        page.screenshot(path=str(ARTIFACTS / "explainer_serve.png"), full_page=True)
        page.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert not errors, errors


def test_torch_trace_keeps_each_output_before_in_place_ops():
    """A BatchNorm's output as it was, though an in-place ReLU overwrote that tensor after."""
    from convlens.explain.torch_trace import run_hooks, run_torch

    torch.manual_seed(0)
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
                        nn.Conv2d(4, 2, 3)).eval()  # fmt: skip
    x = torch.randn(1, 8, 8).numpy()
    with torch.no_grad():
        bn = net[1](net[0](torch.from_numpy(x)[None]))[0]
    assert (bn < 0).any()  # so the ReLU changed it
    for trace in (run_torch, run_hooks):  # fx's graph, and the hooks for untraceable models
        steps, logits = trace(net, x)
        assert [s.name for s in steps] == ["input", "0", "1", "2", "3"]
        assert [s.src for s in steps] == [None, 0, 1, 2, 3]
        np.testing.assert_allclose(steps[2].out, bn.numpy(), atol=1e-6)
        np.testing.assert_allclose(steps[4].out, logits, atol=0)


def test_torch_trace_links_a_linear_layer_through_flatten():
    """torch.flatten between modules (tv-* models' heads): the linear layer reads the pool."""
    from convlens.explain.torch_trace import run_hooks, run_torch

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pool, self.fc = torch.nn.AdaptiveAvgPool2d(2), torch.nn.Linear(12, 3)

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(x), 1))

    x = torch.randn(3, 4, 4).numpy()
    steps, _ = run_hooks(Head().eval(), x)
    assert [(s.name, s.src) for s in steps] == [("input", None), ("pool", 0), ("fc", 1)]
    steps, _ = run_torch(Head().eval(), x)  # fx sees the flatten itself
    assert [(s.name, s.src) for s in steps] == [
        ("input", None), ("pool", 0), ("flatten", 1), ("fc", 2)]  # fmt: skip
    assert steps[2].layer == "flatten"


def test_torch_trace_records_ops_outside_modules_with_their_operands():
    """A residual sum, a torch.cat and a scaling: each a step naming the steps it read."""
    from convlens.explain.torch_trace import run_torch
    from convlens.explain.walkthrough import walkthrough

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.relu = torch.nn.Conv2d(2, 2, 3, padding=1), torch.nn.ReLU()

        def forward(self, x):
            y = self.relu(self.conv(x) + x)  # (1, 2, 4, 4)
            return torch.cat([y, x], 1) * 0.5  # (1, 4, 4, 4)

    x = torch.randn(2, 4, 4).numpy()
    steps, logits = run_torch(Block().eval(), x)
    got = [(s.name, s.layer if isinstance(s.layer, str) else None, s.src, s.operands)
           for s in steps]  # fmt: skip
    assert got == [
        ("input", None, None, None),
        ("conv", None, 0, None),
        ("add", "add", 1, [1, 0]),
        ("relu", None, 2, None),
        ("cat", "cat", 3, [3, 0]),
        ("mul", "mul", 4, [4]),
    ]
    np.testing.assert_allclose(steps[5].out, logits)  # the last op is the output
    records = walkthrough(steps, np.zeros((2, 4, 4), np.uint8))
    assert [(r["kind"], r.get("outside"), r.get("operands")) for r in records[2:]] == [
        ("add", True, [1, 0]),
        ("relu", None, None),
        ("cat", True, [3, 0]),
        ("mul", True, [4]),
    ]


def test_torch_trace_falls_back_to_hooks_where_fx_cannot_trace():
    """Python control flow on a value: fx cannot trace it, the hooks still give the modules."""
    from convlens.explain.torch_trace import run_torch

    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 2, 3)

        def forward(self, x):
            y = self.conv(x)
            return (y if y.sum() > 0 else -y).flatten(1)

    steps, logits = run_torch(Branchy().eval(), torch.randn(1, 5, 5).numpy())
    assert [(s.name, s.src) for s in steps] == [("input", None), ("conv", 0)]
    assert logits.shape == (18,)


def test_without_test_images_the_page_asks_for_one(tmp_path, digit_png):
    """A run whose data folder is gone: an error asking for --image, and --image works."""
    x, y, _ = object_scenes(12, size=8, classes=2, glyph=3, seed=2)
    for i, (img, label) in enumerate(zip(x, y, strict=True)):
        folder = tmp_path / "data" / "train" / f"c{int(label)}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0].numpy()).save(folder / f"{i}.png")
    run = convlens.train(data=str(tmp_path / "data"), model="textbook", run=str(tmp_path / "run"),
                         **QUICK)  # fmt: skip
    shutil.rmtree(tmp_path / "data")
    with pytest.raises(ConvlensError, match=r"no test images to show .*; pass --image FILE"):
        convlens.explain(str(run), interactive=True)
    with pytest.raises(ConvlensError, match="one image"):
        convlens.explain(str(run), [str(digit_png)] * 2, interactive=True)
    page = Path(convlens.explain(str(run), [str(digit_png)], interactive=True)["page"])
    assert "seven.png" in page.read_text()  # the image given as IMAGE, as --image
    page = Path(convlens.explain(str(run), interactive=True, image=str(digit_png))["page"])
    assert '"patches":null' in page.read_text()  # no training images left to take them from
