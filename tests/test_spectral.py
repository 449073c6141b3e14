"""Spectral relevance analysis (core/spectral.py) on inputs whose answer is known: disconnected
cliques, small hand-computed graphs, bipartite graphs (the eigenvalue-2 trap), random points
checked against scipy/sklearn, and well-separated blobs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.cluster import KMeans, SpectralClustering
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import kneighbors_graph
from threadpoolctl import threadpool_limits

from core.errors import ConfigError
from core.spectral import (
    EMBEDDINGS,
    SpectralConfig,
    analyse,
    check_distances,
    eigengap_clusters,
    embed_2d,
    euclidean_distances,
    fiedler_score,
    knn_graph,
    normalized_laplacian,
    smallest_eigenpairs,
)


def clique_distances(sizes, seed=0):
    """A distance matrix of len(sizes) groups in shuffled order: within a group 0.1 … 1,
    between groups 100 … 200. Returns the matrix and each vertex's group."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
    n = len(labels)
    same = labels[:, None] == labels[None, :]
    upper = np.triu(np.where(same, rng.uniform(0.1, 1.0, (n, n)), rng.uniform(100.0, 200.0, (n, n))), 1)
    return upper + upper.T, labels


def same_partition(a, b) -> bool:
    """True if the labelings a and b split the samples identically (up to renaming)."""
    a, b = np.asarray(a), np.asarray(b)
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def cycle(n: int) -> np.ndarray:
    adjacency = np.zeros((n, n))
    for i in range(n):
        adjacency[i, (i + 1) % n] = adjacency[(i + 1) % n, i] = 1.0
    return adjacency


def blobs(sizes=(40, 25), dims=10, separation=12.0, seed=0):
    rng = np.random.default_rng(seed)
    points = np.concatenate([rng.normal(size=(n, dims)) + separation * i for i, n in enumerate(sizes)])
    return points, np.repeat(np.arange(len(sizes)), sizes)


# --- disconnected cliques: k components, k zero eigenvalues ---------------------------------------


# k_neighbors below the smallest group (so no edge leaves a group) and >= (largest - 1) / 2
# (so every group's kNN graph is connected: two vertices of degree >= (n-1)/2 share a neighbour).
@pytest.mark.parametrize("sizes, k", [((5, 7, 9), 4), ((6, 6), 3), ((4, 5, 6, 7), 3)], ids=["5-7-9", "6-6", "4-5-6-7"])
def test_k_disconnected_groups_give_exactly_k_zero_eigenvalues(sizes, k):
    distances, labels = clique_distances(sizes)
    groups = len(sizes)
    adjacency = knn_graph(distances, k)
    assert not adjacency[labels[:, None] != labels[None, :]].any(), "no edge between groups"

    result = analyse(distances, SpectralConfig(k_neighbors=k, n_eigenvalues=10, n_clusters=groups))
    values = result.eigenvalues
    assert len(values) == 10 and np.all(np.diff(values) >= 0)
    assert np.all(values[:groups] <= 1e-10), values
    assert values[groups] > 0.1, values  # the (k+1)-th is clearly positive
    assert eigengap_clusters(values) == groups == result.eigengap_clusters
    assert same_partition(result.assignments, labels), (result.assignments, labels)
    assert np.array_equal(result.adjacency, adjacency)
    # the eigenvectors of the zero eigenvalues lie in the span of the groups' D^1/2-indicators
    laplacian = normalized_laplacian(adjacency)
    assert np.allclose(laplacian @ result.embedding[:, :groups], 0.0, atol=1e-9)


def test_connected_graph_has_a_single_zero_eigenvalue():
    points, _ = blobs(sizes=(60,), seed=3)
    result = analyse(euclidean_distances(points), SpectralConfig(k_neighbors=8, n_eigenvalues=5))
    assert result.eigenvalues[0] <= 1e-10 and result.eigenvalues[1] > 1e-3, result.eigenvalues


def test_eigengap_clusters_on_hand_made_spectra():
    assert eigengap_clusters([0, 0, 0.01, 0.5, 0.6]) == 3
    assert eigengap_clusters([0, 0.9, 0.95, 1.0]) == 1
    assert eigengap_clusters([0, 0.1, 0.2, 0.3, 1.3]) == 4
    assert eigengap_clusters(np.array([0.0])) == 1


# --- the normalised Laplacian ---------------------------------------------------------------------


def test_laplacian_of_a_path_of_three_matches_the_hand_computed_matrix():
    adjacency = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=float)
    s = 1 / np.sqrt(2)  # degrees 1, 2, 1: the off-diagonal entries are -1/sqrt(1*2)
    expected = np.array([[1, -s, 0], [-s, 1, -s], [0, -s, 1]])
    assert np.allclose(normalized_laplacian(adjacency), expected, atol=1e-15)
    assert np.allclose(np.linalg.eigvalsh(expected), [0.0, 1.0, 2.0])  # a path is bipartite


def test_isolated_vertices_keep_a_one_on_the_diagonal():
    triangle_and_isolated = np.zeros((4, 4))
    triangle_and_isolated[:3, :3] = 1 - np.eye(3)
    laplacian = normalized_laplacian(triangle_and_isolated)
    expected = np.zeros((4, 4))
    expected[:3, :3] = np.eye(3) - (1 - np.eye(3)) / 2
    expected[3, 3] = 1.0
    assert np.isfinite(laplacian).all()
    assert np.allclose(laplacian, expected, atol=1e-15)
    assert np.allclose(np.sort(np.linalg.eigvalsh(laplacian)), [0.0, 1.0, 1.5, 1.5])
    assert np.array_equal(normalized_laplacian(np.zeros((3, 3))), np.eye(3))


@pytest.mark.parametrize("seed", range(3))
def test_laplacian_of_a_random_graph_is_symmetric_with_spectrum_in_0_2(seed):
    rng = np.random.default_rng(seed)
    upper = np.triu(rng.random((30, 30)) < 0.2, 1)
    adjacency = (upper | upper.T).astype(float)
    adjacency[0, :] = adjacency[:, 0] = 0  # one isolated vertex
    laplacian = normalized_laplacian(adjacency)
    assert np.array_equal(laplacian, laplacian.T)
    values = np.linalg.eigvalsh(laplacian)
    assert values.min() >= -1e-10 and values.max() <= 2 + 1e-10
    degree = adjacency.sum(1)
    assert np.allclose(laplacian @ np.sqrt(degree), 0.0, atol=1e-12), "D^1/2 1 is in the kernel"


# --- the smallest eigenvalues really are the smallest ----------------------------------------------


def complete_bipartite(a: int, b: int) -> np.ndarray:
    adjacency = np.zeros((a + b, a + b))
    adjacency[:a, a:] = adjacency[a:, :a] = 1.0
    return adjacency


@pytest.mark.parametrize("adjacency", [cycle(12), cycle(20), complete_bipartite(3, 4)], ids=["C12", "C20", "K3,4"])
def test_smallest_eigenpairs_skip_the_eigenvalue_two_of_a_bipartite_graph(adjacency):
    laplacian = normalized_laplacian(adjacency)
    full = np.sort(np.linalg.eigvalsh(laplacian))
    assert np.isclose(full[-1], 2.0), "bipartite graphs have the eigenvalue 2"
    # the trap: the largest-magnitude eigenvalues of D^-1/2 A D^-1/2 include -1, i.e. 2 for L_sym
    normalised_adjacency = np.eye(len(adjacency)) - laplacian
    by_magnitude = np.linalg.eigvalsh(normalised_adjacency)
    assert np.allclose(np.sort(by_magnitude[np.argsort(-np.abs(by_magnitude))[:2]]), [-1.0, 1.0])

    for m in (1, 2, 3, 5):
        values, vectors = smallest_eigenpairs(laplacian, m)
        assert values.shape == (m,) and vectors.shape == (len(adjacency), m)
        assert np.allclose(values, full[:m], atol=1e-10), (m, values, full[:m])
        assert values[0] <= 1e-10 and values.max() < 1.9
        assert np.allclose(laplacian @ vectors, vectors * values, atol=1e-9)
        assert np.allclose(vectors.T @ vectors, np.eye(m), atol=1e-9)


def test_smallest_eigenpairs_never_ask_for_more_than_the_matrix_has():
    laplacian = normalized_laplacian(cycle(6))
    values, vectors = smallest_eigenpairs(laplacian, 30)
    assert values.shape == (6,) and vectors.shape == (6, 6)
    assert np.allclose(values, np.sort(np.linalg.eigvalsh(laplacian)), atol=1e-10)
    assert np.isclose(values[-1], 2.0)


def test_analyse_reports_the_smallest_of_the_full_spectrum():
    points, _ = blobs(sizes=(30, 20), separation=2.5, seed=5)
    result = analyse(euclidean_distances(points), SpectralConfig(k_neighbors=5, n_eigenvalues=12))
    full = np.sort(np.linalg.eigvalsh(normalized_laplacian(result.adjacency)))
    assert np.allclose(result.eigenvalues, full[:12], atol=1e-10)


# --- the kNN graph ----------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3, 7])
def test_knn_graph_is_the_symmetrised_sklearn_connectivity_graph(k):
    points = np.random.default_rng(k).normal(size=(50, 4))
    ours = knn_graph(euclidean_distances(points), k)
    directed = kneighbors_graph(points, k, mode="connectivity", include_self=False).toarray()
    assert np.array_equal(ours, np.maximum(directed, directed.T))
    assert np.array_equal(ours, ours.T)
    assert set(np.unique(ours).tolist()) == {0.0, 1.0}
    assert not ours.diagonal().any()
    assert ours.sum(axis=1).min() >= k
    assert ours.sum() > 50 * k, "symmetrising adds the one-directional edges"


def test_knn_graph_with_k_n_minus_one_is_complete():
    distances, _ = clique_distances((4, 3))
    assert np.array_equal(knn_graph(distances, 6), 1 - np.eye(7))


@pytest.mark.parametrize("k", [0, -1, 7, 8])
def test_knn_graph_rejects_k_outside_1_to_n_minus_1(k):
    distances, _ = clique_distances((4, 3))
    with pytest.raises(ConfigError, match="k must be in 1"):
        knn_graph(distances, k)


# --- distances ----------------------------------------------------------------------------------


def test_euclidean_distances_match_scipy():
    rng = np.random.default_rng(2)
    points = rng.normal(size=(30, 7))
    ours = euclidean_distances(points)
    assert np.abs(ours - cdist(points, points)).max() <= 1e-9
    assert np.array_equal(np.diag(ours), np.zeros(30))
    heatmaps = rng.random((12, 4, 4)).astype(np.float32)  # (N, H, W) is flattened per sample
    flat = heatmaps.reshape(12, -1).astype(float)
    assert np.abs(euclidean_distances(heatmaps) - cdist(flat, flat)).max() <= 1e-9


def test_identical_samples_give_tiny_distances_not_nan():
    """The Gram-matrix formula can round |x|^2 + |y|^2 - 2<x, y> below zero; it is clipped."""
    points = np.repeat(np.random.default_rng(0).normal(size=(1, 5)) * 1e3, 4, axis=0)
    distances = euclidean_distances(points)
    assert np.isfinite(distances).all() and distances.min() >= 0.0
    assert np.array_equal(np.diag(distances), np.zeros(4))
    assert distances.max() <= 1e-7 * np.linalg.norm(points[0])  # rounding only


def test_euclidean_distances_at_the_scale_of_normalised_heatmaps():
    heatmaps = np.random.default_rng(4).random((40, 32 * 32))
    heatmaps /= heatmaps.sum(axis=1, keepdims=True)  # unit mass, as the spectral analysis uses them
    assert np.abs(euclidean_distances(heatmaps) - cdist(heatmaps, heatmaps)).max() <= 1e-12


# --- clustering ---------------------------------------------------------------------------------


def test_two_well_separated_blobs_are_separated_perfectly():
    points, labels = blobs()
    distances = euclidean_distances(points)
    result = analyse(distances)  # the thesis's defaults: k = 10, 30 eigenvalues, 2 clusters
    assert same_partition(result.assignments, labels)
    assert result.embedding.shape == (65, 3) and result.assignments.shape == (65,)
    assert result.eigenvalues.shape == (30,) and result.eigenvalues[0] <= 1e-10
    assert result.eigengap_clusters == 2

    # the same partition as sklearn's spectral clustering of the same graph
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns that a disconnected graph is not fully embedded
        theirs = SpectralClustering(n_clusters=2, affinity="precomputed", random_state=0).fit_predict(result.adjacency)
    assert same_partition(theirs, labels)


def njw_reference(distances, n_clusters, k_neighbors, seed):
    """Ng, Jordan and Weiss (2001) written out with numpy: the full eigendecomposition of L_sym,
    the eigenvectors of the n_clusters smallest eigenvalues, rows scaled to unit length, k-means."""
    adjacency = knn_graph(distances, k_neighbors)
    degree = adjacency.sum(axis=1)
    laplacian = np.eye(len(adjacency)) - adjacency / np.sqrt(np.outer(degree, degree))
    _, vectors = np.linalg.eigh(laplacian)
    rows = vectors[:, :n_clusters]
    rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit_predict(rows)


@pytest.mark.parametrize("seed", [0, 1, 5])
@pytest.mark.parametrize("n_clusters", [2, 3])
def test_analyse_clusters_like_ng_jordan_weiss(seed, n_clusters):
    """Three overlapping blobs, where k-means on the unnormalised rows would often split differently."""
    rng = np.random.default_rng(seed)
    points = np.concatenate([rng.normal(size=(40, 5)), rng.normal(size=(30, 5)) + 2.0,
                             rng.normal(size=(25, 5)) + np.r_[0.0, 3.0, 0.0, 0.0, 0.0]])
    distances = euclidean_distances(points)
    result = analyse(distances, SpectralConfig(k_neighbors=6, n_clusters=n_clusters, seed=seed))
    assert same_partition(result.assignments, njw_reference(distances, n_clusters, 6, seed))


def test_analyse_is_deterministic_per_seed():
    points, _ = blobs(sizes=(30, 30), separation=1.5, seed=7)  # overlapping: k-means has choices to make
    distances = euclidean_distances(points)
    first = analyse(distances, SpectralConfig(n_clusters=3, seed=4))
    again = analyse(distances, SpectralConfig(n_clusters=3, seed=4))
    assert np.array_equal(first.assignments, again.assignments)
    assert np.array_equal(first.eigenvalues, again.eigenvalues)
    assert sorted(set(first.assignments.tolist())) == [0, 1, 2]


def test_analyse_returns_at_most_n_eigenvalues_and_clamps_k_to_the_class():
    distances, labels = clique_distances((8, 7))
    small = analyse(distances, SpectralConfig(k_neighbors=3, n_eigenvalues=30))
    assert small.eigenvalues.shape == (15,)
    complete = analyse(distances, SpectralConfig(k_neighbors=40))  # knn_graph itself rejects k >= n
    assert np.array_equal(complete.adjacency, 1 - np.eye(15))
    assert np.isclose(complete.eigenvalues[-1], 15 / 14)  # complete graph K_n: 0 and n/(n-1)


def test_analyse_with_only_two_eigenvectors_still_embeds_in_2d():
    points, labels = blobs(sizes=(20, 10))
    result = analyse(euclidean_distances(points), SpectralConfig(n_eigenvalues=2, k_neighbors=5))
    assert result.embedding.shape == (30, 2) and result.eigenvalues.shape == (2,)
    coords = embed_2d(points, "spectral", result=result)
    assert coords.shape == (30, 2) and np.array_equal(coords[:, 0], result.embedding[:, 1]) and not coords[:, 1].any()


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [
    dict(k_neighbors=0), dict(k_neighbors=-3), dict(n_clusters=1), dict(n_clusters=0), dict(n_eigenvalues=1),
    dict(k_neighbors=True), dict(n_clusters=False), dict(n_eigenvalues=2.5), dict(k_neighbors=10.0),
    dict(seed=-1), dict(seed="0"), dict(k_neighbors=None),
], ids=lambda kwargs: "-".join(f"{k}={v!r}" for k, v in kwargs.items()))
def test_invalid_config_is_a_config_error(kwargs):
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        SpectralConfig(**kwargs)


def test_numpy_integers_are_valid_config_values():
    config = SpectralConfig(k_neighbors=np.int64(5), n_clusters=np.int32(3))
    assert config.k_neighbors == 5 and config.n_clusters == 3


@pytest.mark.parametrize("distances, message", [
    (np.zeros((3, 4)), "square"),
    (np.zeros(9), "square"),
    (np.zeros((2, 3, 3)), "square"),
    (np.where(np.eye(4) > 0, 0.0, np.nan), "NaN"),
    (np.where(np.eye(4) > 0, 0.0, np.inf), "infinite"),
    (np.zeros((2, 2)), "at least 3"),
    (np.zeros((0, 0)), "at least 3"),
], ids=["3x4", "1-D", "3-D", "NaN", "inf", "2 samples", "empty"])
def test_invalid_distances_are_config_errors(distances, message):
    with pytest.raises(ConfigError, match=message):
        check_distances(distances)
    with pytest.raises(ConfigError, match=message):
        analyse(distances)
    with pytest.raises(ConfigError, match=message):
        knn_graph(distances, 1)


def test_more_clusters_than_samples_is_a_config_error():
    distances, _ = clique_distances((2, 2))
    with pytest.raises(ConfigError, match="4 clusters of 4 samples"):
        analyse(distances, SpectralConfig(n_clusters=4, k_neighbors=1))


# --- embeddings and the continuous score --------------------------------------------------------


def test_spectral_embedding_is_eigenvectors_two_and_three():
    points, _ = blobs()
    result = analyse(euclidean_distances(points))
    coords = embed_2d(points, "spectral", result=result)
    assert coords.shape == (65, 2)
    assert np.array_equal(coords, result.embedding[:, 1:3])
    with pytest.raises(ConfigError, match="needs the spectral analysis result"):
        embed_2d(points, "spectral")


@pytest.mark.filterwarnings("ignore")
def test_tsne_is_finite_and_deterministic_per_seed():
    """One OpenMP thread: the result is the same (each point's gradient is computed on its own),
    but two spinning threads on a busy two-core machine can turn 0.3 s into 30 s."""
    points, _ = blobs(sizes=(20, 20), dims=6)
    with threadpool_limits(1, user_api="openmp"):
        first = embed_2d(points, "tsne", seed=3)
        again = embed_2d(points, "tsne", seed=3)
    assert first.shape == (40, 2) and np.isfinite(first).all()
    assert np.array_equal(first, again)
    assert first.std(axis=0).min() > 0, "not collapsed onto a line or a point"


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
def test_umap_is_finite_and_deterministic_per_seed():
    """~60 points; the first call compiles numba code (about 8 s on two cores)."""
    points, labels = blobs(sizes=(35, 25), dims=6)
    first = embed_2d(points, "umap", seed=1)
    assert first.shape == (60, 2) and np.isfinite(first).all()
    assert np.array_equal(first, embed_2d(points, "umap", seed=1))
    centres = np.array([first[labels == g].mean(0) for g in (0, 1)])
    spread = max(first[labels == g].std(0).max() for g in (0, 1))
    assert np.linalg.norm(centres[0] - centres[1]) > 2 * spread, "the blobs stay apart"


@pytest.mark.parametrize("method", ["umap", "tsne"])
def test_too_few_samples_for_umap_or_tsne_is_a_config_error(method):
    with pytest.raises(ConfigError, match="at least 6 samples"):
        embed_2d(np.random.default_rng(0).normal(size=(5, 4)), method)


def test_unknown_embedding_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown embedding 'pca'") as error:
        embed_2d(np.zeros((10, 3)), "pca")
    assert all(name in str(error.value) for name in EMBEDDINGS)


@pytest.mark.parametrize("flagged_group", [0, 1])
def test_fiedler_score_puts_the_flagged_cluster_on_the_high_side(flagged_group):
    points, labels = blobs(sizes=(40, 25), separation=4.0, seed=2)
    result = analyse(euclidean_distances(points), SpectralConfig(k_neighbors=8))
    flagged = labels == flagged_group
    score = fiedler_score(result, flagged)
    assert score[flagged].mean() > score[~flagged].mean()
    assert np.array_equal(np.abs(score), np.abs(result.embedding[:, 1]))
    assert roc_auc_score(flagged, score) == 1.0
    # both orientations occur, so the sign is really chosen from the flags
    opposite = fiedler_score(result, ~flagged)
    assert np.array_equal(opposite, -score)


def test_fiedler_score_without_two_groups_is_the_plain_eigenvector():
    points, _ = blobs(sizes=(20, 10))
    result = analyse(euclidean_distances(points), SpectralConfig(k_neighbors=5))
    for flags in (np.zeros(30, bool), np.ones(30, bool)):
        assert np.array_equal(fiedler_score(result, flags), result.embedding[:, 1])


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
def test_compiling_umap_in_the_background_runs_once_and_compiles_what_a_fit_uses():
    from umap import layouts

    from core.spectral import compile_umap_in_background

    thread = compile_umap_in_background()
    assert compile_umap_in_background() is thread, "one compile per process"
    thread.join(timeout=300)
    assert not thread.is_alive()
    assert layouts.clip.signatures, "the layout's kernels are compiled"
    points, _ = blobs(sizes=(35, 25), dims=6)
    assert np.isfinite(embed_2d(points, "umap", seed=1)).all()
