"""Exact nearest-neighbour search through FAISS's flat indexes (faiss-cpu: the faiss extra).

PatchCore's memory bank (Euclidean, IndexFlatL2) and a face gallery (cosine on unit vectors,
IndexFlatIP) hand their search to FAISS past a bank size measured in BENCHMARKS.md; below it,
and wherever faiss is not installed, their own torch matmul serves. Flat indexes are exact: the
same neighbours as the matmul, up to float32 rounding.
"""

from __future__ import annotations

import numpy as np
import torch

from convlens.errors import ConvlensError

SEARCHES = ("auto", "torch", "faiss")  # auto: FAISS from a measured size, when installed
METRICS = {"l2": "IndexFlatL2", "ip": "IndexFlatIP"}  # squared Euclidean | inner product


def faiss_available() -> bool:
    """Whether the optional faiss package imports."""
    try:
        import faiss  # noqa: F401
    except ImportError:  # absent, or blocked by sys.modules["faiss"] = None
        return False
    return True


def require_faiss(what: str):
    """The faiss module, or a one-line error naming `what` and the extra that installs it."""
    try:
        import faiss
    except ImportError:
        raise ConvlensError(
            f"{what}: search='faiss' needs the faiss extra (pip install 'convlens[faiss]', "
            "which installs faiss-cpu)"
        ) from None
    return faiss


def check_search(search: str, what: str) -> str:
    """`search` if it is one of SEARCHES (and faiss imports when it is 'faiss'), else an error."""
    if search not in SEARCHES:
        raise ConvlensError(f"{what}: search={search!r}; choose {', '.join(SEARCHES)}")
    if search == "faiss":
        require_faiss(what)  # fail at set-up, not after the work before the search
    return search


def use_faiss(search: str, rows: int, faiss_from: int) -> bool:
    """Whether a search over `rows` rows goes to FAISS: forced, or auto past `faiss_from`."""
    return search == "faiss" or (search == "auto" and rows >= faiss_from and faiss_available())


def flat_index(rows: torch.Tensor | np.ndarray, metric: str, what: str):
    """An exact FAISS index (METRICS) holding `rows` (M, D) as float32."""
    faiss = require_faiss(what)
    x = as_float32(rows)
    index = getattr(faiss, METRICS[metric])(x.shape[1])
    index.add(x)
    return index


def knn(index, queries: torch.Tensor | np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(values, rows), each (m, k): the k best rows per query, best first (-1 past the end).

    values are squared distances for "l2", inner products for "ip"."""
    require_faiss("search").omp_set_num_threads(torch.get_num_threads())  # --threads holds
    return index.search(as_float32(queries), k)


def as_float32(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """x as a C-contiguous float32 array on the CPU: what FAISS's Python API accepts."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    return np.ascontiguousarray(x, dtype=np.float32)
