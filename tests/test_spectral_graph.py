"""The spectral analysis on graphs whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.neighbors import kneighbors_graph

from core.errors import ConfigError
from core.spectral import (SpectralConfig, analyse, eigengap_clusters, euclidean_distances, fiedler_score, knn_graph,
                           normalized_laplacian, smallest_eigenpairs)


def clique_distances(sizes):
    """Well-separated groups of points on a line (spacing 1, groups 1000 apart): any kNN
    graph with k >= 1 connects each group and never two groups."""
    points = np.concatenate([1000.0 * i + np.arange(n) for i, n in enumerate(sizes)])[:, None]
    labels = np.repeat(np.arange(len(sizes)), sizes)
    return euclidean_distances(points), labels


@pytest.mark.parametrize("sizes", [(5, 7, 9), (3, 3), (4, 8, 5, 10)])
def test_laplacian_of_disjoint_cliques_has_one_zero_eigenvalue_per_clique(sizes):
    n = sum(sizes)
    adjacency = np.zeros((n, n))
    start = 0
    for size in sizes:
        adjacency[start : start + size, start : start + size] = 1
        start += size
    np.fill_diagonal(adjacency, 0)
    values, _ = smallest_eigenpairs(normalized_laplacian(adjacency), len(sizes) + 2)
    assert np.all(values[: len(sizes)] < 1e-10), values
    assert values[len(sizes)] > 0.5, values
    assert eigengap_clusters(values) == len(sizes)


def same_partition(a, b) -> bool:
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.mark.parametrize("sizes", [(5, 7, 9), (6, 6), (4, 8, 5, 10)])
def test_k_separated_groups_give_k_zero_eigenvalues_and_are_recovered(sizes):
    distances, labels = clique_distances(sizes)
    k = len(sizes)
    result = analyse(distances, SpectralConfig(k_neighbors=3, n_eigenvalues=10, n_clusters=k))
    assert np.all(result.eigenvalues[:k] < 1e-10), result.eigenvalues
    assert result.eigenvalues[k] > 1e-3, result.eigenvalues
    assert same_partition(result.assignments, labels)


def test_laplacian_of_a_path_matches_the_hand_computed_matrix():
    adjacency = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=float)
    s = 1 / np.sqrt(2)
    expected = np.array([[1, -s, 0], [-s, 1, -s], [0, -s, 1]])
    assert np.allclose(normalized_laplacian(adjacency), expected)
    isolated = normalized_laplacian(np.zeros((2, 2)))
    assert np.allclose(isolated, np.eye(2))


def test_the_smallest_eigenvalues_are_the_smallest_even_on_a_bipartite_graph():
    n = 12  # an even cycle is bipartite: L_sym has the eigenvalue 2
    adjacency = np.zeros((n, n))
    for i in range(n):
        adjacency[i, (i + 1) % n] = adjacency[(i + 1) % n, i] = 1
    laplacian = normalized_laplacian(adjacency)
    full = np.sort(np.linalg.eigvalsh(laplacian))
    assert np.isclose(full[-1], 2.0)
    values, vectors = smallest_eigenpairs(laplacian, 5)
    assert np.allclose(values, full[:5], atol=1e-10)
    assert values[0] < 1e-10 and np.all(values < 1.5)
    assert np.allclose(laplacian @ vectors, vectors * values, atol=1e-9)


def test_knn_graph_is_the_symmetrised_sklearn_graph():
    points = np.random.default_rng(1).normal(size=(40, 3))
    ours = knn_graph(euclidean_distances(points), 4)
    reference = kneighbors_graph(points, 4, mode="connectivity", include_self=False).toarray()
    assert np.array_equal(ours, np.maximum(reference, reference.T))
    assert np.array_equal(ours, ours.T) and not ours.diagonal().any() and ours.sum(1).min() >= 4


def test_euclidean_distances_match_scipy():
    points = np.random.default_rng(2).normal(size=(30, 7))
    assert np.allclose(euclidean_distances(points), cdist(points, points), atol=1e-9)


def test_eigengap_and_fiedler_orientation():
    assert eigengap_clusters([0, 0, 0.01, 0.5, 0.6]) == 3
    distances, labels = clique_distances((10, 4))
    result = analyse(distances, SpectralConfig(k_neighbors=3, n_clusters=2))
    flagged = labels == 1
    score = fiedler_score(result, flagged)
    assert score[flagged].mean() > score[~flagged].mean()


@pytest.mark.parametrize("kwargs", [dict(k_neighbors=0), dict(n_clusters=1), dict(k_neighbors=True), dict(n_eigenvalues=2.5), dict(seed=-1)])
def test_invalid_config(kwargs):
    with pytest.raises(ConfigError):
        SpectralConfig(**kwargs)


@pytest.mark.parametrize("distances", [np.zeros((3, 4)), np.full((4, 4), np.nan), np.zeros((2, 2))])
def test_invalid_distances(distances):
    with pytest.raises(ConfigError):
        analyse(distances)


def test_k_must_be_smaller_than_the_class():
    distances, _ = clique_distances((3, 3))
    with pytest.raises(ConfigError):
        knn_graph(distances, 6)
