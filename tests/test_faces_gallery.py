"""identify's search over a large gallery: torch's matmul and FAISS's exact index name the same
people as the per-person oracle (faces.metrics.identity_scores); without faiss, one clear line."""

import numpy as np
import pytest

from convlens.errors import ConvlensError
from convlens.evaluation.neighbours import faiss_available, use_faiss
from convlens.faces import gallery
from convlens.faces.metrics import identity_scores
from tests.helpers import without_faiss


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def big():
    """A generated gallery: 3000 unit vectors of 32 dimensions, 5 images of each of 600 people,
    and probes near some people's images (and one far from all)."""
    rng = np.random.default_rng(0)
    emb = unit(rng.standard_normal((3000, 32)))
    names = np.array([f"p{i % 600:03d}" for i in range(3000)])
    probes = unit(np.r_[emb[::250] + 0.3 * rng.standard_normal((12, 32)),
                        rng.standard_normal((1, 32))])  # fmt: skip
    return emb, names, probes


def oracle(probe, emb, names, top_k):
    """Every person's best similarity, from the full matrix, the top_k people best first."""
    scores, people = identity_scores((probe @ emb.T)[None], names)
    order = np.argsort(-scores[0], kind="stable")[:top_k]
    return [str(people[i]) for i in order], scores[0, order]


@pytest.mark.parametrize("top_k", [1, 5, 100])  # 100 people need more than 64 neighbours
def test_torch_and_faiss_name_the_same_people_as_the_oracle(big, top_k):
    pytest.importorskip("faiss")
    emb, names, probes = big
    for probe in probes:
        want, sims = oracle(probe, emb, names, top_k)
        for search in ("torch", "faiss"):
            got = gallery.nearest_people(probe, emb, names, top_k, search)
            assert [name for name, _ in got] == want, search
            np.testing.assert_allclose([s for _, s in got], sims, atol=1e-5)


def test_a_small_gallery_gives_every_person_once_whatever_top_k(big):
    emb, probes = big[0][:7], big[2]
    names = np.array(["ann", "bob", "ann", "cy", "bob", "ann", "cy"])
    for search in ("torch", "faiss") if faiss_available() else ("torch",):
        got = gallery.nearest_people(probes[0], emb, names, 10, search)
        assert sorted(name for name, _ in got) == ["ann", "bob", "cy"]
        assert [name for name, _ in got] == oracle(probes[0], emb, names, 10)[0]


def test_auto_uses_faiss_from_the_measured_size_only_when_installed():
    pytest.importorskip("faiss")
    assert use_faiss("auto", gallery.FAISS_FROM, gallery.FAISS_FROM)
    assert not use_faiss("auto", gallery.FAISS_FROM - 1, gallery.FAISS_FROM)
    assert use_faiss("faiss", 1, gallery.FAISS_FROM) and not use_faiss("torch", 10**9, 1)
    with pytest.raises(ConvlensError, match=r"identify: search='annoy'; choose auto, torch"):
        gallery.nearest_people(np.ones(2, np.float32), np.eye(2, dtype=np.float32),
                               np.array(["a", "b"]), 1, "annoy")  # fmt: skip


def test_faiss_asked_for_without_faiss_is_one_line_naming_the_extra():
    code = (
        "import numpy as np\n"
        "from convlens.errors import ConvlensError\n"
        "from convlens.faces import gallery\n"
        "emb, names = np.eye(3, dtype=np.float32), np.array(['a', 'b', 'c'])\n"
        "print(gallery.nearest_people(emb[1], emb, names, 1, 'auto'))\n"
        "try:\n"
        "    gallery.nearest_people(emb[1], emb, names, 1, 'faiss')\n"
        "except ConvlensError as e:\n"
        "    print(e)\n"
    )
    lines = without_faiss(code)
    assert lines == [
        "[('b', 1.0)]",
        "identify: search='faiss' needs the faiss extra (pip install 'convlens[faiss]', "
        "which installs faiss-cpu)",
    ]
