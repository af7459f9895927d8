"""Shards of a data set, one per client: IID (equal random shards) or Dirichlet (label skew).

``iid``: the samples in a random order, cut into equal shards (the last ``n mod K`` samples are left out, so every
shard has the same size and FedAvg weights them equally). ``dirichlet:ALPHA``: for every class, its samples are
shared among the clients in proportions drawn from Dir(ALPHA, ..., ALPHA) (Hsu et al. 2019): small ALPHA gives
each client a few classes, large ALPHA approaches IID. Draws are repeated (up to 100 times) until every shard
holds at least ``min_size`` samples (one batch).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..data import Dataset
from ..errors import PoetcError


@dataclass(frozen=True)
class Partition:
    kind: str  # "iid" | "dirichlet"
    alpha: float = 0.0

    def __str__(self) -> str:
        return self.kind if self.kind == "iid" else f"dirichlet:{self.alpha:g}"


def parse(text: str) -> Partition:
    """``iid`` or ``dirichlet:ALPHA`` (ALPHA > 0)."""
    t = text.strip().lower()
    if t == "iid":
        return Partition("iid")
    if t.startswith("dirichlet"):
        _, _, a = t.partition(":")
        try:
            alpha = float(a) if a else 0.5
        except ValueError:
            alpha = -1.0
        if not alpha > 0 or not np.isfinite(alpha):
            raise PoetcError(f"--partition {text}: ALPHA must be a positive number (e.g. dirichlet:0.5)")
        return Partition("dirichlet", alpha)
    raise PoetcError(f"--partition {text}: expected iid or dirichlet:ALPHA")


def split(ds: Dataset, clients: int, how: Partition, seed: int = 0, min_size: int = 1) -> list[Dataset]:
    """``clients`` shards of the training samples of ``ds`` (the held-out samples stay with the server)."""
    n = len(ds.x)
    if clients < 1:
        raise PoetcError(f"--clients must be at least 1, got {clients}")
    if n < clients * min_size:
        raise PoetcError(
            f"the data has {n} training samples, too few for {clients} clients of at least {min_size} "
            f"(one batch) each"
        )
    rng = np.random.default_rng(seed)
    if how.kind == "iid":
        order = rng.permutation(n)
        size = n // clients
        parts = [order[k * size : (k + 1) * size] for k in range(clients)]
    else:
        parts = _dirichlet(ds.y, clients, how.alpha, rng, min_size)
    return [
        replace(ds, x=ds.x[idx], y=ds.y[idx], name=f"{ds.name} shard {k + 1}/{clients} ({how})")
        for k, idx in enumerate(parts)
    ]


def _dirichlet(
    y: np.ndarray, clients: int, alpha: float, rng: np.random.Generator, min_size: int
) -> list[np.ndarray]:
    classes = np.unique(y)
    for _ in range(100):
        parts: list[list[int]] = [[] for _ in range(clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(y == c))
            p = rng.dirichlet(np.full(clients, alpha))
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(int)
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k] += chunk.tolist()
        if min(len(p) for p in parts) >= min_size:
            return [rng.permutation(np.asarray(p, np.int64)) for p in parts]
    raise PoetcError(
        f"--partition dirichlet:{alpha:g}: no draw in 100 gave each of {clients} clients at least {min_size} "
        "samples (one batch); raise ALPHA, use fewer clients or a smaller batch"
    )


def label_counts(shards: list[Dataset], classes: int) -> np.ndarray:
    """[clients, classes] sample counts: how skewed a partition is."""
    return np.stack([np.bincount(s.y, minlength=classes) for s in shards])
