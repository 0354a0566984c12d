"""PatchCore (Roth et al., CVPR 2022): a memory bank of normal patches, nearest-neighbour scores.

fit: the patch features (convlens.medical.patches) of every normal training image form the bank,
reduced to a `coreset` fraction by greedy k-centre selection (each new centre is the patch
farthest from those chosen), run on a Johnson-Lindenstrauss random projection of the features as
the paper does. A test patch's score is its Euclidean distance to the nearest bank patch,
computed as ||a||^2 - 2 a.b + ||b||^2 and a min over the bank: one matmul, which is also how
the ONNX graph does it with the bank as a constant. The paper's reweighting of the image score
by the neighbourhood of the nearest bank patch is left out (anomalib's default with one
neighbour): the image score is the largest patch score.

search="faiss" hands the search to the optional faiss-cpu package's exact index; "auto" keeps
torch's chunked matmul, which was faster at every bank size measured (FAISS_FROM).
"""

from __future__ import annotations

import math

import torch

from convlens.errors import ConvlensError
from convlens.evaluation.neighbours import check_search, flat_index, knn, use_faiss
from convlens.medical.anomaly_maps import PatchMethod, PatchScorer, check_finite
from convlens.medical.patches import PatchFeatures

PROJECTION_DIM = 128  # coreset selection runs on features projected to this many dimensions
# bank patches from which search="auto" uses FAISS when installed: never, in effect. FAISS's
# exact flat index was slower than torch's matmul at every bank size measured, 1e3 to 1e6
# patches of 192 dimensions, 64 to 6,272 queries (BENCHMARKS.md, "FAISS against the matmul");
# search="faiss" still forces it
FAISS_FROM = 2**62
SCORE_ELEMENTS = 1 << 24  # patch-to-bank distances held at once while scoring (64 MB)
QUERY_ROWS = 4096  # queries per block of the chunked search


@torch.no_grad()
def greedy_coreset(
    x: torch.Tensor, k: int, *, seed: int = 0, projection_dim: int | None = PROJECTION_DIM
) -> torch.Tensor:
    """Indices (k,) of a greedy k-centre coreset of the rows of x (n, D), in selection order.

    The first centre is a seeded random row; each next one is the row farthest from the centres
    so far, which keeps the covering radius within twice the optimum (Gonzalez 1985). Distances
    are taken on x projected to `projection_dim` dimensions (Gaussian, seeded) when D is larger.
    """
    n, d = x.shape
    if not 1 <= k <= n:
        raise ConvlensError(f"coreset: cannot choose {k} centres from {n} patches")
    gen = torch.Generator().manual_seed(seed)
    z = x.float()
    if projection_dim is not None and d > projection_dim:
        p = torch.randn(d, projection_dim, generator=gen) / math.sqrt(projection_dim)
        z = z @ p.to(z.device)  # (n, projection_dim)
    sq = (z * z).sum(1)  # (n,)
    chosen = torch.empty(k, dtype=torch.long, device=z.device)
    chosen[0] = int(torch.randint(n, (1,), generator=gen))
    nearest = torch.full((n,), math.inf, device=z.device)  # squared distance to the centres
    for i in range(k):
        c = chosen[i]
        nearest = torch.minimum(nearest, sq - 2 * (z @ z[c]) + sq[c])  # (n,)
        nearest[c] = -1.0  # never chosen twice, even where rounding leaves it slightly above 0
        if i + 1 < k:
            chosen[i + 1] = nearest.argmax()
    return chosen.cpu()


def covering_radius(x: torch.Tensor, centres: torch.Tensor) -> float:
    """max over rows of x (n, D) of the distance to the nearest row of centres (k, D)."""
    bank_sq = (centres * centres).sum(1)
    return float(nearest(x, centres, bank_sq)[0].max())


def nearest(
    queries: torch.Tensor, bank: torch.Tensor, bank_sq: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance (m,) from each query (m, D) to its nearest bank row (M, D), and that row (m,).

    The search is ||a - b||^2 = ||a||^2 - 2 a.b + ||b||^2, one (m, M) matmul and a min over
    the bank (`bank_sq` is (bank * bank).sum(1), kept with the bank); the winner's distance is
    then taken directly, ||a - b||: near 0 the expansion's rounding (~1e-7 of ||a||^2) would
    become its square root after the sqrt.
    """
    _, index = _nearest_sq(queries, bank, bank_sq)
    return distance_to(queries, bank, index), index


def distance_to(queries: torch.Tensor, bank: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """||query i - bank[index[i]]|| (m,), computed directly."""
    return (queries - bank[index]).pow(2).sum(1).sqrt()


def _nearest_sq(queries, bank, bank_sq) -> tuple[torch.Tensor, torch.Tensor]:
    d2 = (queries * queries).sum(1, keepdim=True) - 2 * queries @ bank.T + bank_sq  # (m, M)
    return d2.min(1)


def nearest_chunked(
    queries: torch.Tensor, bank: torch.Tensor, bank_sq: torch.Tensor, elements: int = SCORE_ELEMENTS
) -> tuple[torch.Tensor, torch.Tensor]:
    """`nearest` holding at most about `elements` distances at once: blocks of up to
    QUERY_ROWS queries, each against as many bank rows as fit, with a running minimum (a large
    bank is read once per block of queries, not once per few queries)."""
    rows = min(len(queries), QUERY_ROWS, max(1, elements))
    cols = max(1, elements // max(1, rows))
    index = []
    for r in range(0, len(queries), rows):
        q = queries[r : r + rows]
        best = torch.full((len(q),), math.inf, device=q.device)
        where = torch.zeros(len(q), dtype=torch.long, device=q.device)
        for c in range(0, len(bank), cols):
            d2, i = _nearest_sq(q, bank[c : c + cols], bank_sq[c : c + cols])
            closer = d2 < best
            best, where = torch.where(closer, d2, best), torch.where(closer, i + c, where)
        index.append(where)
    index = torch.cat(index)
    return distance_to(queries, bank, index), index


def faiss_search(queries: torch.Tensor, bank: torch.Tensor, index=None) -> torch.Tensor:
    """Nearest-bank distances (m,) by an exact FAISS index of the bank (built if not given).

    FAISS finds the nearest row; its distance is then taken directly, as `nearest` does, so
    both searches give the same distances wherever they pick the same (or a tied) row.
    """
    index = flat_index(bank, "l2", "PatchCore") if index is None else index
    _, found = knn(index, queries, 1)  # (m, 1) rows
    return distance_to(queries, bank, torch.from_numpy(found[:, 0]).to(bank.device))


def exporting() -> bool:
    """Whether torch is tracing the module for export (no Python loops over data sizes then)."""
    return torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()


class PatchCoreScorer(PatchScorer):
    """Nearest-bank distance of each patch; the bank is a buffer (an ONNX constant).

    The bank is kept centred on its mean (`centre`), queries too: distances do not change, but
    ||a||^2 - 2 a.b + ||b||^2 then cancels far less in float32 (ReLU features sit far from 0),
    so a patch that is in the bank scores ~0 in torch and in onnxruntime alike.
    """

    STATISTICS = ("bank", "centre")

    def __init__(self, features: PatchFeatures) -> None:
        super().__init__(features)
        self.register_buffer("bank", torch.zeros(0, features.dim))  # (M, D), minus the centre
        self.register_buffer("centre", torch.zeros(features.dim))  # (D,) the patches' mean
        self.register_buffer("bank_sq", torch.zeros(0), persistent=False)  # (M,) squared norms
        self.faiss = False  # eager scoring searches with FAISS (never in an exported graph)
        self.index = None  # the bank's FAISS index, built on the first FAISS search

    def patch_scores(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)  # (B, D, h, w)
        b, d, h, w = f.shape
        q = f.permute(0, 2, 3, 1).reshape(-1, d) - self.centre  # (B * h * w, D)
        if exporting():
            dist = nearest(q, self.bank, self.bank_sq)[0]  # one matmul + min in the graph
        elif self.faiss:
            if self.index is None:
                self.index = flat_index(self.bank, "l2", "PatchCore")  # once per bank
            dist = faiss_search(q, self.bank, self.index)
        else:
            dist = nearest_chunked(q, self.bank, self.bank_sq)[0]
        return dist.view(b, h, w)

    def set_patches(self, patches: torch.Tensor) -> None:
        """Bank these patches (M, D), centred on their mean."""
        centre = patches.double().mean(0).float()
        self.set_statistics({"bank": patches.float() - centre, "centre": centre})

    def set_statistics(self, tensors: dict[str, torch.Tensor]) -> None:
        bank, centre = tensors["bank"], tensors["centre"]
        d = self.features.dim
        if bank.ndim != 2 or bank.shape[1] != d or len(bank) == 0 or centre.shape != (d,):
            raise ConvlensError(f"PatchCore: a bank of {list(bank.shape)} (centre "
                                f"{list(centre.shape)}) does not fit patch features of {d} "
                                f"dimensions")  # fmt: skip
        check_finite(bank, "PatchCore bank")
        self.bank = bank.float().to(self.bank.device)
        self.centre = centre.float().to(self.bank.device)
        self.bank_sq = (self.bank * self.bank).sum(1)
        self.index = None  # the old bank's


class PatchCore(PatchMethod):
    """`PatchCore(model, input_shape=, mean=, std=)`, `.fit(normal uint8 images)`, `.score`."""

    name = "patchcore"

    def __init__(
        self, model, *, coreset: float = 0.1, search: str = "auto", reduce: str = "project", **kw
    ) -> None:
        super().__init__(model, reduce=reduce, **kw)
        if not 0 < coreset <= 1:
            raise ConvlensError(f"PatchCore: coreset={coreset} must be a fraction in (0, 1]")
        self.coreset, self.search = coreset, check_search(search, "PatchCore")
        self.scorer = PatchCoreScorer(self.features)

    def fit(self, images: torch.Tensor) -> PatchCore:
        """Bank the patches of normal uint8 images (N, C, H, W), then keep a greedy coreset."""
        feats = [f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]) for f in self.embeddings(images)]
        patches = torch.cat(feats)  # (N * h * w, D) on the device
        check_finite(patches, "PatchCore fit")
        k = max(1, round(self.coreset * len(patches)))
        if k < len(patches):
            patches = patches[greedy_coreset(patches, k, seed=self.seed).to(patches.device)]
        self.scorer.set_patches(patches)
        self.fitted = True
        return self

    def scoring_module(self) -> PatchScorer:
        scorer = super().scoring_module()
        scorer.faiss = use_faiss(self.search, len(scorer.bank), FAISS_FROM)
        return scorer

    def settings(self) -> dict:
        out = {**super().settings(), "coreset": self.coreset, "search": self.search}
        return {**out, "bank_size": len(self.scorer.bank)}
