"""Anomaly maps: PatchCore's coreset and search, PaDiM, maps that find pasted defects, ONNX, PRO."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from convlens.data import mvtec
from convlens.errors import ConvlensError, DatasetFormatError
from convlens.medical import defects, masks, patchcore, synthetic
from convlens.medical.anomaly_maps import Smooth, export_scorer
from convlens.medical.padim import PaDiM
from convlens.medical.patchcore import (
    PatchCore,
    covering_radius,
    faiss_search,
    greedy_coreset,
    nearest,
    nearest_chunked,
)
from convlens.medical.patches import PatchFeatures
from convlens.models import create_model
from tests.helpers import without_faiss

SIZE = 32
METHODS = {"patchcore": PatchCore, "padim": PaDiM}
NORM = {"mean": [0.5], "std": [0.2]}


def backbone(name: str = "textbook", channels: int = 1, seed: int = 0) -> torch.nn.Module:
    """A registry model with seeded random weights: PatchCore needs no training."""
    torch.manual_seed(seed)
    return create_model(name, in_channels=channels, num_classes=10, image_size=SIZE)


@pytest.fixture(scope="module")
def brick(tmp_path_factory):
    """A generated brick-wall set with pasted defects, written as MVTec AD folders and read."""
    root = defects.write_defects(tmp_path_factory.mktemp("brick"), "brick", SIZE, (40, 16, 30))
    return {split: mvtec.read_mask_set(root, split) for split in mvtec.SPLITS} | {"root": root}


@pytest.fixture(scope="module")
def fitted(brick):
    """Both methods fitted on the brick set's normal training images."""
    kw = dict(input_shape=(1, SIZE, SIZE), **NORM)
    return {name: cls(backbone(), **kw).fit(brick["train"].images) for name, cls in METHODS.items()}


def clusters(n: int = 1200, d: int = 200, k: int = 12, seed: int = 0) -> torch.Tensor:
    """n points in d dimensions around k well-separated centres."""
    gen = torch.Generator().manual_seed(seed)
    centres = 10 * torch.randn(k, d, generator=gen)
    return centres[torch.arange(n) % k] + torch.randn(n, d, generator=gen)


# --- coreset and nearest-neighbour search ---------------------------------------------------------
def test_greedy_coreset_is_seeded_nested_and_covers_better_than_chance():
    x = clusters()  # 200 dimensions: selection runs on the 128-d random projection
    a = greedy_coreset(x, 40, seed=3)
    assert torch.equal(a, greedy_coreset(x, 40, seed=3)) and len(set(a.tolist())) == 40
    assert not torch.equal(a, greedy_coreset(x, 40, seed=4))
    assert torch.equal(greedy_coreset(x, 10, seed=3), a[:10])  # greedy: each k extends k - 1
    radii = [covering_radius(x, x[a[:k]]) for k in (1, 4, 12, 24, 40)]
    assert all(r1 >= r2 for r1, r2 in zip(radii, radii[1:], strict=False)) and radii[-1] < radii[0]
    # 12 centres reach every cluster (radius ~ one cluster's spread), 12 random points rarely do
    gen = torch.Generator().manual_seed(0)
    chance = [covering_radius(x, x[torch.randperm(len(x), generator=gen)[:12]]) for _ in range(5)]
    assert radii[2] < 0.5 * np.median(chance)
    with pytest.raises(ConvlensError, match="cannot choose 0 centres"):
        greedy_coreset(x, 0)


def test_nearest_bank_distance_is_brute_force_cdist():
    gen = torch.Generator().manual_seed(0)
    queries, bank = torch.randn(300, 48, generator=gen), 1.5 * torch.randn(700, 48, generator=gen)
    bank_sq = (bank * bank).sum(1)
    dist, index = nearest(queries, bank, bank_sq)
    oracle = torch.cdist(queries.double(), bank.double())  # (300, 700)
    best, _ = oracle.min(1)
    torch.testing.assert_close(dist.double(), best, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(oracle.gather(1, index[:, None])[:, 0], best)  # a true nearest
    for elements in (5000, 300 * 64, 10**8):  # the bank in blocks of 16 and 64 rows; at once
        chunked = nearest_chunked(queries, bank, bank_sq, elements=elements)
        torch.testing.assert_close(chunked[0], dist)
        assert torch.equal(chunked[1], index)


def test_faiss_finds_the_distances_the_matmul_finds():
    pytest.importorskip("faiss")
    gen = torch.Generator().manual_seed(1)
    bank = 1.5 * torch.randn(3000, 48, generator=gen)
    queries = torch.cat([torch.randn(400, 48, generator=gen), bank[:50]])  # 50 exact hits
    dist, _ = nearest(queries, bank, (bank * bank).sum(1))
    found = faiss_search(queries, bank)
    torch.testing.assert_close(found, dist)  # the same row or a tie, distance taken directly
    assert (found[400:] == 0).all()
    # float64 and strided inputs reach FAISS as contiguous float32
    again = faiss_search(queries.double()[:, ::2], bank.double()[:, ::2])
    oracle = torch.cdist(queries.double()[:, ::2], bank.double()[:, ::2]).min(1).values
    torch.testing.assert_close(again, oracle, rtol=1e-5, atol=1e-4)


def test_patchcore_with_faiss_gives_the_torch_maps_and_scores(brick, fitted, monkeypatch):
    pytest.importorskip("faiss")
    method, images = fitted["patchcore"], brick["test"].images
    assert method.search == "auto" and not method.scoring_module().faiss  # a small bank: torch
    forced = PatchCore.from_settings(backbone(), {**method.settings(), "search": "faiss"},
                                     input_shape=(1, SIZE, SIZE), **NORM)  # fmt: skip
    forced.load_state_dict(method.state_dict())
    assert forced.scoring_module().faiss and forced.scorer.index is None
    for theirs, ours in zip(forced.score(images), method.score(images), strict=True):
        torch.testing.assert_close(theirs, ours)
    assert forced.scorer.index.ntotal == len(method.scorer.bank)  # built once, kept
    forced.load_state_dict(method.state_dict())
    assert forced.scorer.index is None  # a new bank drops the old index
    monkeypatch.setattr(patchcore, "FAISS_FROM", len(method.scorer.bank))
    assert method.scoring_module().faiss  # auto: FAISS from FAISS_FROM bank patches


def test_faiss_asked_for_without_faiss_is_one_line_naming_the_extra():
    code = (
        "from convlens.errors import ConvlensError\n"
        "from convlens.evaluation.neighbours import faiss_available, use_faiss\n"
        "from convlens.medical.patchcore import PatchCore\n"
        "from convlens.models import create_model\n"
        "model = create_model('textbook', in_channels=1, num_classes=10, image_size=32)\n"
        "kw = dict(input_shape=(1, 32, 32), mean=[0.5], std=[0.2])\n"
        "print(faiss_available(), use_faiss('auto', 10**9, 1), PatchCore(model, **kw).search)\n"
        "try:\n"
        "    PatchCore(model, search='faiss', **kw)\n"
        "except ConvlensError as e:\n"
        "    print(e)\n"
    )
    lines = without_faiss(code)
    assert lines[0] == "False False auto"  # auto falls back to torch at any size
    assert lines[1:] == ["PatchCore: search='faiss' needs the faiss extra (pip install "
                         "'convlens[faiss]', which installs faiss-cpu)"]  # fmt: skip


# --- patch features -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "channels", "layers", "grid"),
    [
        ("fastnet", 1, ("layer2", "layer3"), (8, 8)),
        ("resnet8", 1, ("layer2", "layer3"), (16, 16)),
        ("lenet5", 1, ("features.pool1", "features.pool2"), (16, 16)),
        ("tv-resnet18", 3, ("layer2", "layer3"), (4, 4)),
        ("tv-mobilenet_v3_small", 3, ("features.3", "features.8"), (4, 4)),
    ],
)
def test_patch_features_take_two_stages_of_any_backbone(name, channels, layers, grid):
    model = backbone(name, channels)
    feats = PatchFeatures(model, (channels, SIZE, SIZE), dim=16, seed=1)
    assert feats.layers == layers and feats.grid == grid
    x = torch.randn(3, channels, SIZE, SIZE)
    out = feats(x)
    assert out.shape == (3, 16, *grid) and out.dtype == torch.float32
    again = PatchFeatures(model, (channels, SIZE, SIZE), dim=16, seed=1)
    torch.testing.assert_close(again(x), out)  # the projection is seeded
    full = PatchFeatures(model, (channels, SIZE, SIZE))
    assert full(x).shape[1] == full.in_dim > 16


def test_patch_features_refuse_what_has_no_feature_maps():
    with pytest.raises(ConvlensError, match="no two convolutional stages"):
        PatchFeatures(backbone("mlp"), (1, SIZE, SIZE))
    with pytest.raises(ConvlensError, match="no module 'layer9'"):
        PatchFeatures(backbone("resnet8"), (1, SIZE, SIZE), layers=("layer1", "layer9"))


# --- maps -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", METHODS)
def test_maps_find_pasted_defects_with_a_random_backbone(brick, fitted, name):
    method, test = fitted[name], brick["test"]
    scores, maps = method.score(test.images)
    assert scores.shape == (len(test.kinds),) and maps.shape == (len(test.kinds), SIZE, SIZE)
    truth = test.masks.numpy()
    # measured 0.957-0.982 (pixel AUROC) and 0.84-0.93 (PRO) over three seeds of the set
    assert masks.pixel_auroc(truth, maps.numpy()) > 0.9
    assert masks.pro_auc(truth, maps.numpy()) > 0.7
    assert masks.image_auroc(test.anomalous.numpy(), scores.numpy()) > 0.85
    shuffled = np.roll(maps.numpy(), 1, axis=0)  # each image's mask against another's map
    assert masks.pixel_auroc(truth, shuffled) < 0.75
    val_scores, _ = method.score(brick["val"].images)
    bad = brick["val"].anomalous
    calibration = method.calibrate(val_scores[~bad], val_scores[bad])
    assert val_scores[~bad].min() < calibration["threshold"] <= val_scores[bad].max()
    assert "validation" in calibration["rule"]


@pytest.mark.parametrize("name", METHODS)
def test_image_score_is_the_largest_patch_score_before_smoothing(brick, fitted, name):
    method, images = fitted[name], brick["test"].images[:6]
    scores, maps = method.score(images)
    patches = method.patch_scores(images)  # (6, 16, 16)
    assert patches.shape == (6, *method.features.grid)
    torch.testing.assert_close(scores, patches.flatten(1).amax(1))
    assert (maps.flatten(1).amax(1) <= scores + 1e-5).all()  # smoothing only averages


def test_smoothing_keeps_constants_and_spreads_a_peak_symmetrically():
    smooth = Smooth((64, 64))  # sigma 4 * 64 / 224 = 1.14 px
    flat = smooth(torch.full((2, 8, 8), 3.0))
    torch.testing.assert_close(flat, torch.full((2, 64, 64), 3.0))
    peak = torch.zeros(1, 9, 9)
    peak[0, 4, 4] = 1.0
    out = smooth(peak)[0]  # the patch's centre lands between pixels 31 and 32
    for same in (out.flip(0), out.flip(1), out.T):
        torch.testing.assert_close(out, same, atol=1e-6, rtol=0)
    torch.testing.assert_close(out[31:33, 31:33], torch.full((2, 2), float(out.max())))
    assert 0 < out.max() < 1


# --- saving and exporting -------------------------------------------------------------------------
@pytest.mark.parametrize("name", METHODS)
def test_fitted_tensors_round_trip_through_safetensors(brick, fitted, name, tmp_path):
    method, images = fitted[name], brick["test"].images[:8]
    save_file(method.state_dict(), tmp_path / "method.safetensors")
    tensors = load_file(tmp_path / "method.safetensors")
    again = METHODS[name].from_settings(backbone(), method.settings(),
                                        input_shape=(1, SIZE, SIZE), **NORM)  # fmt: skip
    assert again.settings() | {"bank_size": 0} == method.settings() | {"bank_size": 0}
    with pytest.raises(ConvlensError, match="fit it on normal images"):
        again.score(images)
    again.load_state_dict(tensors)
    for a, b in zip(again.score(images), method.score(images), strict=True):
        torch.testing.assert_close(a, b)
    key = next(iter(tensors))
    with pytest.raises(ConvlensError, match="lack"):
        again.load_state_dict({k: v for k, v in tensors.items() if k != key})
    with pytest.raises(ConvlensError, match="does not fit|do not fit"):
        again.load_state_dict({**tensors, key: tensors[key][..., :3]})


@pytest.mark.parametrize("name", METHODS)
def test_onnx_scorer_matches_torch_at_any_batch_size(brick, fitted, name, tmp_path):
    import onnxruntime as ort

    from convlens.data.batches import normalize

    method, images = fitted[name], brick["test"].images[:5]
    result = export_scorer(method, tmp_path / "scorer.onnx", images, {"method": name})
    assert result["max_rel_diff"] <= 1e-4
    session = ort.InferenceSession(result["onnx"], providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map["method"] == name
    scores, maps = method.score(images)
    for n in (1, 5):
        x = normalize(images[:n], NORM["mean"], NORM["std"]).numpy()
        theirs_scores, theirs_maps = session.run(None, {"images": x})
        assert theirs_maps.shape == (n, SIZE, SIZE)
        np.testing.assert_allclose(theirs_scores, scores[:n].numpy(), rtol=1e-4)
        np.testing.assert_allclose(theirs_maps, maps[:n].numpy(), atol=1e-4 * float(maps.max()))


# --- metrics on masks -----------------------------------------------------------------------------
def test_pro_and_pixel_auroc_on_hand_computed_cases():
    # one 1x6 image: regions A = {0} and B = {3, 4}; normal pixels 1, 2, 5
    truth = np.array([[[1, 0, 0, 1, 1, 0]]], bool)
    maps = np.array([[[5, 4, 1, 3, 0, 2]]], float)
    # thresholds 5, 4, 3, 2, 1, 0 flag A (PRO 1/2), a normal pixel (FPR 1/3), half of B (PRO
    # 1/2 + 1/4), two more normal pixels, then the rest of B: PRO 1/2 on FPR [0, 1/3]
    fpr, pro = masks.pro_curve(truth, maps)
    np.testing.assert_allclose(fpr, [0, 0, 1 / 3, 1 / 3, 2 / 3, 1, 1])
    np.testing.assert_allclose(pro, [0, 0.5, 0.5, 0.75, 0.75, 0.75, 1])
    assert masks.pro_auc(truth, maps) == pytest.approx(0.5)
    assert masks.pro_auc(truth, maps, fpr_limit=0.5) == pytest.approx((0.5 / 3 + 0.75 / 6) / 0.5)
    assert masks.pro_auc(truth, maps, fpr_limit=1.0) == pytest.approx(1 / 6 + 1 / 2)
    assert masks.pixel_auroc(truth, maps) == pytest.approx(5 / 9)  # pixel ROC: B's big pixel 0
    assert masks.pro_auc(truth, truth * 1.0) == 1.0 and masks.pro_auc(truth, 1.0 - truth) == 0.0
    # a tie flags a region pixel and a normal pixel together: PRO rises with FPR, area .3^2 / 2
    assert masks.pro_auc(np.array([[1, 0]]), np.array([[1.0, 1.0]])) == pytest.approx(0.15)


def test_pro_regions_are_8_connected_and_labelled_per_image():
    truth = np.zeros((2, 4, 4), bool)
    truth[0, 0, 0] = truth[0, 1, 1] = True  # diagonal neighbours: one region
    truth[1, 3, 3] = True  # the other image: a region of its own
    labels, count = masks.regions(truth)
    assert count == 2 and labels[0, 0, 0] == labels[0, 1, 1] == 1 and labels[1, 3, 3] == 2
    maps = np.zeros((2, 4, 4))
    maps[0, 0, 0] = 1.0  # half of the first region found: PRO 1/4 before any false positive
    fpr, pro = masks.pro_curve(truth, maps)
    assert fpr[1] == 0 and pro[1] == pytest.approx(0.25)
    with pytest.raises(ConvlensError, match="no anomalous pixels"):
        masks.pro_auc(np.zeros((1, 4, 4)), maps[:1])


# --- generated sets with masks --------------------------------------------------------------------
def test_lesion_masks_are_the_blobs_and_leave_lesion_images_unchanged(tmp_path):
    images, labels, truth = synthetic.lesion_masks(60, seed=2)
    old_images, old_labels = synthetic.lesion_images(60, seed=2)
    assert np.array_equal(images, old_images) and np.array_equal(labels, old_labels)
    assert not truth[~labels].any() and truth[labels].any(axis=(1, 2)).all()
    background = np.median(images[~labels])
    assert images[truth].mean() > background + 40  # the mask sits on the bright blob
    root = synthetic.write_lesion_masks(tmp_path / "lesions", n=60, seed=2)
    test = mvtec.read_mask_set(root, "test")
    assert set(test.kinds) <= {"good", "lesion"} and test.masks[test.anomalous].any()
    assert set(mvtec.read_mask_set(root, "train").kinds) == {"good"}


def test_defects_folders_round_trip_and_refuse_a_missing_mask(brick, tmp_path):
    root, test = brick["root"], brick["test"]
    assert sorted({p.name for p in (root / "test").iterdir()}) == [
        "good",
        "hole",
        "scratch",
        "stain",
    ]
    assert set(brick["train"].kinds) == {"good"} and len(brick["train"].kinds) == 40
    assert test.masks[test.anomalous].flatten(1).any(1).all()
    assert not test.masks[~test.anomalous].any()
    images, kinds, truth = defects.defect_images(4, "brick", SIZE, seed=1, prevalence=1.0)
    with pytest.raises(ConvlensError, match="train holds good images only"):
        mvtec.write_mask_set(tmp_path / "no", images, kinds, truth, ["train"] * 4)
    bad = mvtec.write_mask_set(tmp_path / "bad", images, kinds, truth, ["test"] * 4)
    (bad / "ground_truth" / kinds[0] / "0000_mask.png").unlink()
    with pytest.raises(DatasetFormatError, match="0000_mask.png: missing"):
        mvtec.read_mask_set(bad, "test")
    shutil.rmtree(bad / "test" / kinds[0])
    (bad / "test" / "good").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(bad / "test" / "good" / "0099.png")
    with pytest.raises(DatasetFormatError, match=r"\(32, 32\) differs from .*0099.png"):
        mvtec.read_mask_set(bad, "test")
