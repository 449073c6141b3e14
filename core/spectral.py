"""Spectral relevance analysis (SpRAy; thesis sections 6.3 and 7): structure inside one class.

From a distance matrix between the class's samples (Euclidean between normalised heatmaps
here; any other, e.g. Gromov–Wasserstein, can be passed in): a symmetric k-nearest-
neighbour graph, its symmetric normalised Laplacian L_sym = I - D^-1/2 A D^-1/2, the
smallest eigenvalues of L_sym, the eigengap estimate of the number of groups, and spectral
clustering (Ng, Jordan and Weiss 2001: k-means on the row-normalised eigenvectors of the
k smallest eigenvalues).

The smallest eigenvalues are computed from L_sym itself (dense symmetric solver, indices
0 … m-1). The shortcut of taking the largest-magnitude eigenvalues of D^-1/2 A D^-1/2
would admit eigenvalues near -1, i.e. near 2 for L_sym, which displace the ones that
matter and corrupt the gap.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import scipy.linalg
from sklearn.cluster import KMeans

from .errors import ConfigError
from .params import WHOLE, check_declared, parameter


@dataclass(frozen=True)
class SpectralConfig:
    k_neighbors: int = parameter(10, WHOLE, "--k", label="neighbours k", help="neighbours in the kNN graph (10 in the thesis)",
                                 low=1, high=10**6)
    n_eigenvalues: int = parameter(30, WHOLE, "--eigenvalues", label="eigenvalues",
                                   help="how many of the smallest eigenvalues to report", low=2, high=10**6)
    n_clusters: int = parameter(2, WHOLE, "--clusters", label="clusters", help="number of spectral clusters", low=2, high=10**6)
    seed: int = parameter(0, WHOLE, "--cluster-seed", label="cluster seed", help="seed of k-means and of the GW subset",
                          low=0, high=2**32 - 1)

    def __post_init__(self) -> None:
        check_declared(self)


@dataclass(frozen=True, eq=False)
class SpectralResult:
    eigenvalues: np.ndarray  # (m,) ascending, of L_sym
    eigengap_clusters: int  # number of groups the largest gap implies
    embedding: np.ndarray  # (N, max(n_clusters, 3)): eigenvectors of the smallest eigenvalues
    assignments: np.ndarray  # (N,) spectral clustering into n_clusters groups
    adjacency: np.ndarray  # (N, N) symmetric 0/1 kNN graph


def check_distances(distances) -> np.ndarray:
    d = np.asarray(distances, dtype=float)
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise ConfigError(f"distances must be a square matrix, got shape {d.shape}")
    if not np.isfinite(d).all():
        raise ConfigError("distances contain NaN or infinite values")
    if d.shape[0] < 3:
        raise ConfigError(f"spectral analysis needs at least 3 samples, got {d.shape[0]}")
    return d


def euclidean_distances(features) -> np.ndarray:
    """Pairwise Euclidean distances between the rows of `features` (N, D)."""
    x = np.asarray(features, dtype=float).reshape(len(features), -1)
    squared = np.einsum("ij,ij->i", x, x)
    d2 = squared[:, None] + squared[None, :] - 2.0 * (x @ x.T)
    np.fill_diagonal(d2, 0.0)
    return np.sqrt(np.clip(d2, 0.0, None))


def knn_graph(distances, k: int) -> np.ndarray:
    """Symmetric 0/1 adjacency: i ~ j if j is among the k nearest of i or i among those of j."""
    d = check_distances(distances)
    n = d.shape[0]
    if not 1 <= k < n:
        raise ConfigError(f"k must be in 1 … {n - 1} for {n} samples, got {k}")
    masked = d.copy()
    np.fill_diagonal(masked, np.inf)
    nearest = np.argpartition(masked, k - 1, axis=1)[:, :k]
    adjacency = np.zeros((n, n))
    adjacency[np.repeat(np.arange(n), k), nearest.ravel()] = 1.0
    return np.maximum(adjacency, adjacency.T)


def normalized_laplacian(adjacency) -> np.ndarray:
    """L_sym = I - D^-1/2 A D^-1/2 (isolated vertices keep a 1 on the diagonal)."""
    a = np.asarray(adjacency, dtype=float)
    degree = a.sum(axis=1)
    inv_sqrt = np.where(degree > 0, 1.0 / np.sqrt(np.where(degree > 0, degree, 1.0)), 0.0)
    return np.eye(len(a)) - inv_sqrt[:, None] * a * inv_sqrt[None, :]


def smallest_eigenpairs(laplacian, m: int):
    """The m smallest eigenvalues (ascending) of a symmetric matrix and their eigenvectors."""
    lap = np.asarray(laplacian, dtype=float)
    m = min(m, lap.shape[0])
    values, vectors = scipy.linalg.eigh(lap, subset_by_index=[0, m - 1], driver="evr")
    return np.clip(values, 0.0, None), vectors


def eigengap_clusters(eigenvalues) -> int:
    """k such that the gap between the k-th and (k+1)-th smallest eigenvalue is largest."""
    values = np.asarray(eigenvalues, dtype=float)
    if values.size < 2:
        return 1
    return int(np.argmax(np.diff(values)) + 1)


def analyse(distances, config: SpectralConfig = SpectralConfig()) -> SpectralResult:
    """kNN graph, spectrum of L_sym, eigengap and spectral clustering of one class."""
    d = check_distances(distances)
    if config.n_clusters >= d.shape[0]:
        raise ConfigError(f"cannot make {config.n_clusters} clusters of {d.shape[0]} samples")
    adjacency = knn_graph(d, min(config.k_neighbors, d.shape[0] - 1))
    laplacian = normalized_laplacian(adjacency)
    m = max(config.n_eigenvalues, config.n_clusters, 2)
    values, vectors = smallest_eigenpairs(laplacian, m)
    k = config.n_clusters
    rows = vectors[:, :k]
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    rows = rows / np.where(norms > 0, norms, 1.0)
    assignments = KMeans(n_clusters=k, n_init=10, random_state=config.seed).fit_predict(rows)
    embedding = vectors[:, : max(k, 3)]
    return SpectralResult(values[: config.n_eigenvalues], eigengap_clusters(values[: config.n_eigenvalues]),
                          embedding, assignments, adjacency)


def fiedler_score(result: SpectralResult, flagged) -> np.ndarray:
    """A continuous suspicion score for ROC-AUC: the second eigenvector, signed so that the
    flagged cluster lies on its high side."""
    flagged = np.asarray(flagged, dtype=bool)
    vector = result.embedding[:, 1]
    if flagged.any() and (~flagged).any() and vector[flagged].mean() < vector[~flagged].mean():
        vector = -vector
    return vector


EMBEDDINGS = ("spectral", "umap", "tsne")


_UMAP_COMPILE: dict = {}
_UMAP_COMPILE_LOCK = threading.Lock()


def compile_umap_in_background() -> threading.Thread:
    """Start, once per process, a UMAP fit of a tiny random set in a background thread.

    UMAP's numba kernels are compiled on their first use in a process, and most are not cached
    on disk: a class's first UMAP in a fresh server took 17 s on a 2-core AVX2 CPU, of which ~9 s
    was compiling (bench/embeddings.py). A view that offers UMAP calls this when it opens, so
    the compiling is done before anyone asks for a UMAP; a fit that starts meanwhile waits for
    numba's compiler lock instead of compiling again."""
    with _UMAP_COMPILE_LOCK:
        thread = _UMAP_COMPILE.get("thread")
        if thread is None:
            sample = np.random.default_rng(0).random((60, 16), dtype=np.float32)
            thread = threading.Thread(target=embed_2d, args=(sample, "umap"), name="compile-umap", daemon=True)
            thread.start()
            _UMAP_COMPILE["thread"] = thread
        return thread


def embed_2d(features, method: str, seed: int = 0, result: SpectralResult | None = None) -> np.ndarray:
    """Two-dimensional coordinates for a scatter plot of the class.

    "spectral": the 2nd and 3rd eigenvectors of L_sym (from `result`); "umap" and "tsne":
    UMAP (McInnes et al. 2018) and t-SNE (van der Maaten and Hinton 2008) of `features`.
    """
    if method == "spectral":
        if result is None:
            raise ConfigError("the spectral embedding needs the spectral analysis result")
        vectors = result.embedding
        return vectors[:, 1:3] if vectors.shape[1] >= 3 else np.column_stack([vectors[:, 1], np.zeros(len(vectors))])
    x = np.asarray(features, dtype=float).reshape(len(features), -1)
    if method in ("umap", "tsne") and len(x) < 6:  # t-SNE's perplexity (>= 5) must stay below the sample count
        raise ConfigError(f"{method} needs at least 6 samples, got {len(x)}; use the spectral embedding")
    if method == "umap":
        import umap

        return umap.UMAP(n_components=2, random_state=seed, n_jobs=1).fit_transform(x)
    if method == "tsne":
        from sklearn.manifold import TSNE

        return TSNE(n_components=2, random_state=seed, init="pca", perplexity=min(30.0, max(5.0, (len(x) - 1) / 3))).fit_transform(x)
    raise ConfigError(f"unknown embedding {method!r}; choose one of {', '.join(EMBEDDINGS)}")
