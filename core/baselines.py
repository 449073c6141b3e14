"""Standard poison detectors run on the same model and class, to compare with LRP-based ones.

* Activation clustering (Chen et al. 2018, "Detecting backdoor attacks on deep neural
  networks by activation clustering"): penultimate-layer activations reduced to 10
  dimensions with ICA, k-means with 2 clusters, the smaller cluster flagged.
* Spectral signatures (Tran, Li and Madry 2018): the squared projection of the centred
  activations on their top singular vector. The paper removes the top 1.5 eps of scores
  for a known bound eps on the poisoned share; not assuming eps, we split the scores with
  2-means and flag the high side.
* Raw images (the thesis's "guessing" baseline): k-means with 2 clusters on the pixels.

Each returns hard flags and a continuous score (higher = more suspicious) for ROC-AUC.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import FastICA
from torch import nn

from .detection import flag_smaller_cluster
from .models import INFERENCE_BATCH


def penultimate_activations(model: nn.Sequential, images: torch.Tensor, batch_size: int = INFERENCE_BATCH) -> np.ndarray:
    """Activations of the layer the architecture names `penultimate` (ThesisNet: relu5, 128 units)."""
    name = getattr(model, "penultimate", None)
    layers = dict(model.named_children())
    if name not in layers:
        raise ValueError(f"{type(model).__name__} does not name a penultimate layer")
    stop = list(layers).index(name) + 1
    head = nn.Sequential(*list(layers.values())[:stop])
    modes = {module: module.training for module in model.modules()}  # the layers are shared: restore their modes
    head.eval()
    out = []
    try:
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = images[start : start + batch_size]
                batch = batch.float().div_(255.0) if batch.dtype == torch.uint8 else batch.float()
                out.append(head(batch))
    finally:
        for module, training in modes.items():
            module.training = training
    return torch.cat(out).double().numpy()


def _two_clusters(features: np.ndarray, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    kmeans = KMeans(n_clusters=2, n_init=10, random_state=seed).fit(features)
    flagged = flag_smaller_cluster(kmeans.labels_)
    # the other cluster's centre (not bincount.argmax, which on a tie is the flagged cluster itself)
    kept = kmeans.cluster_centers_[1 - int(kmeans.labels_[np.argmax(flagged)])]
    return flagged, np.linalg.norm(features - kept, axis=1)


def activation_clustering(activations: np.ndarray, seed: int = 0, dims: int = 10) -> Tuple[np.ndarray, np.ndarray]:
    """FastICA to at most `dims` components, then 2-means. A briefly trained network can leave
    most ReLU units dead, so the activations may span fewer than `dims` directions: ICA's
    whitening would then divide by zero, so it keeps only the directions that vary."""
    varying = activations[:, activations.std(axis=0) > 0]
    if varying.shape[1] == 0:
        return _two_clusters(activations, seed)
    singular = np.linalg.svd(varying - varying.mean(axis=0), compute_uv=False)
    rank = int((singular > singular[0] * 1e-6).sum()) if singular[0] > 0 else 0
    dims = min(dims, rank, activations.shape[0])
    if dims < 1:
        return _two_clusters(varying, seed)
    reduced = FastICA(n_components=dims, random_state=seed, max_iter=1000, whiten="unit-variance").fit_transform(varying)
    return _two_clusters(reduced, seed)


def spectral_signatures(activations: np.ndarray, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    centred = activations - activations.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    score = (centred @ vt[0]) ** 2
    labels = KMeans(n_clusters=2, n_init=10, random_state=seed).fit_predict(score[:, None])
    high = int(np.argmax([score[labels == c].mean() for c in (0, 1)]))
    return labels == high, score


def raw_image_clustering(images: torch.Tensor, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    pixels = images.reshape(len(images), -1).double().numpy() / 255.0
    return _two_clusters(pixels, seed)
