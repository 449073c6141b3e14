"""Spectral view: does the class split into a clean and a poisoned group? Eigenvalues, an
embedding of the class, the clustering scored against the truth, and the baselines."""

from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.data import CLASS_NAMES, NUM_CLASSES
from core.durations import estimate
from core.cache import locked_elsewhere
from core.detectors import (PAIRWISE_GW_STEP, class_embedding, embedding_path, embedding_step)
from core.detectors import GWDistanceConfig, gw_distances_path, gw_spectral, heatmap_features, heatmap_spectral, thesis_spectral
from core.errors import ConfigError
from core.experiment import model_path, poisoned_data
from core.jobs import RUNNER
from ui.device import on_session_device
from core.lrp import LRPConfig
from core.presets import gw_relevance
from core.spectral import SpectralConfig, compile_umap_in_background, embed_2d
from ui.charts import confusion_chart
from ui.cleanse import cleanse_section
from ui.common import (active_experiment, cached_baselines, cached_detection, data_or_stop, expected_time, follow_elsewhere, follow_job,
                       heatmaps_or_stop, run_through_app, settle_job, view_links)
from ui.hover_preview import hover_preview
from ui.tiles import diverging_rgb, enlarge
from ui.relevance import relevance_controls, relevance_fields, relevance_query
from ui.url_state import Choice, Number, remember_view, restore_view

EMBEDDING_LABELS = {"spectral": "Spectral (eigenvectors 2 and 3)", "umap": "UMAP of the heatmaps", "tsne": "t-SNE of the heatmaps",
                    "umap-spectral": "UMAP of the spectral embedding", "tsne-spectral": "t-SNE of the spectral embedding"}


@st.cache_data(show_spinner=False, max_entries=16)
def embedding(path_name: str, source: str, choice: str, config: SpectralConfig, _features: np.ndarray, _result) -> np.ndarray:
    """A cached t-SNE or UMAP (core.detectors.class_embedding), read once per session."""
    return class_embedding(source, choice, config, _features, _result)


def coordinates(source: str, choice: str, config: SpectralConfig, features: np.ndarray, result) -> tuple[np.ndarray, str]:
    """The scatter's coordinates and what they are. t-SNE and UMAP are fitted in a job (with its
    progress shown) and cached; until they are ready, the spectral embedding stands in."""
    if choice == "spectral":
        return embed_2d(features, "spectral", config.seed, result), choice
    path = embedding_path(source, choice, config)
    if path.is_file():
        return embedding(path.name, source, choice, config, features, result), choice
    job = RUNNER.get(path.name)
    if job is not None and job.state == "done":
        RUNNER.forget(path.name)
        return embedding(path.name, source, choice, config, features, result), choice
    stand_in = embed_2d(features, "spectral", config.seed, result), "spectral"
    if job is not None and job.state in ("failed", "cancelled"):  # shown once; the next interaction tries again
        (st.info if job.state == "cancelled" else st.error)(f"{EMBEDDING_LABELS[choice]}: {job.state}: {job.error}")
        RUNNER.forget(path.name)
        return stand_in
    if job is None:
        if locked_elsewhere(path.name):
            follow_elsewhere(path.name, EMBEDDING_LABELS[choice])
            return stand_in
        RUNNER.submit(path.name, EMBEDDING_LABELS[choice],
                      lambda progress: class_embedding(source, choice, config, features, result, progress=progress))
    expected = expected_time(estimate(embedding_step(choice), len(features)))
    follow_job(path.name, f"Fitted once and cached: {expected}. Until it is ready, the spectral embedding is shown.")
    return stand_in


def eigenvalue_chart(values: np.ndarray, gap_k: int) -> go.Figure:
    index = np.arange(1, len(values) + 1)
    gaps = np.append(np.diff(values), np.nan)
    hover = [f"λ{i} = {v:.4f}<br>gap to λ{i + 1}: {g:.4f} → {i} cluster{'s' if i > 1 else ''}" if np.isfinite(g) else f"λ{i} = {v:.4f}"
             for i, v, g in zip(index, values, gaps)]
    fig = go.Figure(go.Scatter(x=index, y=values, mode="lines+markers", hovertext=hover, hoverinfo="text", name="eigenvalue"))
    fig.add_vrect(x0=gap_k + 0.1, x1=gap_k + 0.9, fillcolor="#f97316", opacity=0.25, line_width=0,
                  annotation_text=f"largest gap: {gap_k} cluster{'s' if gap_k != 1 else ''}", annotation_position="top left")
    fig.update_layout(height=360, margin=dict(l=0, r=0, t=40, b=0), title=dict(text="Smallest eigenvalues of the normalised Laplacian L_sym", font=dict(size=14)),
                      xaxis_title="index i", yaxis_title="eigenvalue λi", showlegend=False)
    return fig


def scatter(coords: np.ndarray, groups: np.ndarray, names: dict, hover: list, embedding_label: str) -> go.Figure:
    fig = go.Figure()
    palette = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563", "#ca8a04"]
    for i, (value, name) in enumerate(names.items()):
        members = np.flatnonzero(groups == value)
        fig.add_trace(go.Scattergl(x=coords[members, 0], y=coords[members, 1], mode="markers", name=f"{name} ({len(members)})",
                                   marker=dict(size=5, color=palette[i % len(palette)], opacity=0.7),
                                   customdata=members, hovertext=[hover[m] for m in members], hoverinfo="text"))
    fig.update_layout(height=480, margin=dict(l=0, r=0, t=40, b=0), dragmode="lasso",
                      title=dict(text=f"The class's samples: {embedding_label} (hover for a preview, drag to select a group)",
                                 font=dict(size=14)),
                      xaxis_title="dimension 1", yaxis_title="dimension 2", legend=dict(orientation="h", y=-0.15))
    return fig


@st.fragment
def embedding_section(distance_key: str, spectral_config: SpectralConfig, features: np.ndarray, result, heatmaps, truth: np.ndarray,
                      flagged: np.ndarray, train_images) -> None:
    """The class's scatter, its colouring and the selected samples: switching the embedding or the
    colouring, or selecting points, reruns this section alone."""
    method = st.radio("Embedding", list(EMBEDDING_LABELS), format_func=EMBEDDING_LABELS.get, horizontal=True, key="sp_embedding", persist_state="session")
    colour = st.radio("Colour by", VIEW["sp_colour"].options, horizontal=True, key="sp_colour", persist_state="session")
    remember_view(VIEW)
    coords, shown = coordinates(distance_key, method, spectral_config, features, result)
    indices = heatmaps.indices.numpy()
    hover = [f"#{indices[i]} · {'poisoned' if truth[i] else 'clean'} · cluster {result.assignments[i]}"
             f"{' (flagged)' if flagged[i] else ''} · confidence {100 * float(heatmaps.confidence[i]):.1f} %" for i in range(len(truth))]
    if colour == "cluster":
        groups = result.assignments
        names = {c: f"cluster {c}{' (flagged)' if flagged[result.assignments == c].all() else ''}" for c in np.unique(groups)}
    else:
        groups = truth.astype(int)
        names = {0: "clean", 1: "poisoned"}
    event = st.plotly_chart(scatter(coords, groups, names, hover, EMBEDDING_LABELS[shown]), width="stretch", on_select="rerun", selection_mode=("lasso", "box", "points"), key="sp_scatter")
    images = train_images[indices].permute(0, 2, 3, 1).numpy()
    hover_preview("sp_scatter", {"image": (f"{distance_key}-images", images),
                                 "heatmap": (f"{distance_key}-heatmaps", diverging_rgb(heatmaps.heatmaps.numpy()))},
                  [h.replace(" · ", "\n", 1) for h in hover])
    selected = sorted({int(p["customdata"]) for p in (event.selection.points if event and event.selection else []) if "customdata" in p})
    if selected:
        previews = selected[:16]
        st.write(f"{len(selected)} selected: {int(truth[selected].sum())} poisoned, {len(selected) - int(truth[selected].sum())} clean"
                 f"{' (showing 16)' if len(selected) > 16 else ''}. Each sample: image, then its heatmap (red: for the class, blue: against).")
        grid = st.columns(8)
        for n, i in enumerate(previews):
            image = train_images[indices[i]].permute(1, 2, 0).numpy()
            label = f"#{indices[i]} {'poisoned' if truth[i] else 'clean'}"
            grid[(2 * n) % 8].image(enlarge(image), caption=label)
            grid[(2 * n + 1) % 8].image(enlarge(diverging_rgb(heatmaps.heatmaps[i].numpy())), caption="heatmap")


run_through_app()
st.title("Spectral analysis")
st.caption("Spectral relevance analysis (SpRAy; thesis sections 6.3 and 7): a k-nearest-neighbour graph over the class's "
           "normalised heatmaps, the eigenvalues of its normalised Laplacian (a gap after the k-th hints at k groups), "
           "and spectral clustering. The smaller cluster is flagged as poisoned and scored against the truth.")
experiment = active_experiment()
compile_umap_in_background()  # so that a first UMAP does not also wait for numba's compiler
VIEW = {"sp_class": Choice(tuple(range(NUM_CLASSES)), experiment.poison.target), **relevance_fields("sp", experiment.train.architecture),
        "sp_k": Number(2, 50, 10, integer=True), "sp_clusters": Number(2, 8, 2, integer=True),
        "sp_distance": Choice(("euclidean", "gw"), "euclidean"), "sp_embedding": Choice(tuple(EMBEDDING_LABELS), "spectral"),
        "sp_colour": Choice(("cluster", "ground truth"), "cluster")}
restore_view(VIEW)
with st.sidebar:
    st.subheader("Analyse")
    class_id = st.selectbox("Class", range(NUM_CLASSES), format_func=lambda c: f"{c} · {CLASS_NAMES[c]}", key="sp_class", persist_state="session")
    rule, layer, positive = relevance_controls("sp", experiment.train.architecture)
    k = st.slider("Neighbours k of the kNN graph", *VIEW["sp_k"].bounds, key="sp_k", persist_state="session")
    clusters = st.slider("Number of clusters", *VIEW["sp_clusters"].bounds, key="sp_clusters", persist_state="session")
    distance_kind = st.radio("Distances between heatmaps", VIEW["sp_distance"].options, key="sp_distance", persist_state="session",
                             format_func={"euclidean": "Euclidean (every sample)", "gw": "Gromov–Wasserstein (random subset)"}.get,
                             help="GW compares the heatmaps' point clouds up to rotation and translation; every pair is a GW problem, "
                                  "so it runs on a random subset of the class, on heatmaps pooled to an 8×8 grid.")
remember_view(VIEW)
try:
    lrp = LRPConfig(rule=rule, layer=layer, positive=positive)
    spectral_config = SpectralConfig(k_neighbors=k, n_clusters=clusters)
except ConfigError as exc:
    st.error(str(exc))
    st.stop()
data = data_or_stop()
distance_key = heatmaps_or_stop(data, experiment, class_id, lrp)
if distance_kind == "gw":
    gw_config = GWDistanceConfig(seed=spectral_config.seed)
    step = partial(gw_spectral, experiment, class_id, lrp, spectral_config, gw_config, data)
    gw_path = gw_distances_path(experiment, class_id, lrp, gw_config, data)
    if not gw_path.is_file():
        settle_job(gw_path.name, "Pairwise GW", "Pairwise GW runs in the background: switching pages or changing controls does not stop it.")
        pairs = gw_config.samples * (gw_config.samples - 1) // 2
        st.write(f"Gromov–Wasserstein distances between {gw_config.samples} random samples of the class ({pairs:,} pairs, "
                 f"ε = {gw_config.epsilon:g}, clouds at t = {gw_config.threshold} on an 8×8 grid) are not computed yet: "
                 f"{expected_time(estimate(PAIRWISE_GW_STEP, pairs))}.")
        if st.button("Compute GW distances", type="primary"):
            RUNNER.submit(gw_path.name, "Pairwise GW", on_session_device(lambda progress: step(progress=progress)))
            st.rerun()
        st.stop()
    distance_key = gw_path.name
else:
    step = partial(heatmap_spectral, experiment, class_id, lrp, spectral_config, data)
try:
    detection = cached_detection((distance_kind, distance_key, spectral_config), step)
except ConfigError as exc:
    st.error(str(exc))
    st.stop()
heatmaps, result, flagged, score = detection
truth = detection.truth
if distance_kind == "gw":
    st.caption(f"Gromov–Wasserstein distances between {len(truth)} random samples of the class "
               f"(`python -m core spectral --distance gw --gw-samples {gw_config.samples} --cluster-seed {gw_config.seed}`).")
features = heatmap_features(heatmaps)

suggested = int(result.eigengap_clusters)
cols = st.columns(5)
cols[0].metric("Eigengap suggests", f"{suggested} cluster{'s' if suggested != 1 else ''}",
               help="The largest gap between consecutive eigenvalues of the graph Laplacian: a hint at how many groups the class "
                    "falls into. The clustering below uses the number chosen in the sidebar.")
cols[1].metric("Accuracy", f"{100 * score.accuracy:.2f} %")
cols[2].metric("TPR (poisoned found)", f"{100 * score.tpr:.2f} %" if np.isfinite(score.tpr) else "–")
cols[3].metric("TNR (clean kept)", f"{100 * score.tnr:.2f} %" if np.isfinite(score.tnr) else "–")
cols[4].metric("ROC-AUC", f"{score.auc:.3f}" if score.auc is not None else "–",
               help="How well the second eigenvector ranks poisoned above clean samples, over every possible cut: 1.000 means some "
                    "cut separates them perfectly. TPR and TNR score the one cut the clustering made, so a high AUC beside a low TPR "
                    "says the groups are separable but the clustering cut in the wrong place (try another k or number of clusters).")
if score.auc is not None and np.isfinite(score.tpr) and score.auc - min(score.tpr, score.tnr) > 0.05:
    st.caption(f"ROC-AUC {score.auc:.3f} against TPR {100 * score.tpr:.1f} % and TNR {100 * score.tnr:.1f} %: the second eigenvector ranks "
               "poisoned samples above clean ones better than the clustering's cut separates them, so the groups are there but the "
               "cut misses part of them.")
low, high = VIEW["sp_clusters"].bounds
if suggested != clusters:
    note, button = st.columns([4, 1], vertical_alignment="center")
    usable = min(max(suggested, low), high)
    reason = ("a single group (no gap after λ1 is larger)" if suggested == 1 else f"{suggested} groups")
    note.caption(f"The eigengap hints at {reason}; the clustering below uses {clusters}, the sidebar's choice. With 2 clusters the "
                 "smaller one is flagged as poisoned; with more, the smallest one is.")
    if usable != clusters:
        button.button(f"Use {usable} clusters", key="sp_use_suggested", on_click=st.session_state.__setitem__, args=("sp_clusters", usable))
left, right = st.columns([3, 2])
left.plotly_chart(eigenvalue_chart(result.eigenvalues, result.eigengap_clusters), width="stretch")
right.plotly_chart(confusion_chart(score, "Confusion of the spectral clustering"), width="stretch")
t = thesis_spectral(experiment, class_id) if distance_kind == "euclidean" else None
if t is not None:
    right.caption(f"Thesis, Euclidean spectral clustering on the same setting: tn {t['tn']}, fp {t['fp']}, fn {t['fn']}, tp {t['tp']}.")

embedding_section(distance_key, spectral_config, features, result, heatmaps, truth, flagged, poisoned_data(data, experiment).train.images)

st.subheader("Methods on the same model and class")
rows = {f"LRP heatmaps, {'Euclidean' if distance_kind == 'euclidean' else 'GW'} spectral ({lrp.rule})": score.as_dict()}
if distance_kind == "gw":
    st.caption(f"The GW row is scored on its {len(truth)} samples; the baselines below on the whole class.")
if st.toggle("Run the baselines (activation clustering, spectral signatures, raw images)", key="sp_baselines", persist_state="session"):
    rows.update(cached_baselines(model_path(data, experiment).name, class_id, spectral_config.seed, experiment, data))
table = pd.DataFrame(rows).T[["accuracy", "tpr", "tnr", "f1", "auc", "tn", "fp", "fn", "tp"]]
formats = {**{c: "{:.4f}" for c in ("accuracy", "tpr", "tnr", "f1", "auc")}, **{c: "{:.0f}" for c in ("tn", "fp", "fn", "tp")}}
st.dataframe(table.style.format(formats, na_rep="–"), width="stretch")
st.caption("TPR: share of poisoned samples flagged; TNR: share of clean samples kept; AUC from each method's continuous score. "
           "Reproduce with `python -m core spectral` and `python -m core baselines`.")
if class_id == experiment.poison.target:
    cleanse_section(experiment, data, ("truth", "random", "spectral", "activation"))
view_links(experiment, [
    ("pages/heatmaps.py", f"The heatmaps of class {class_id}", ":material/blur_on:", {"hm_class": class_id, **relevance_query("hm", lrp)}),
    ("pages/detect.py", f"Detect in class {class_id}: GW k-means", ":material/hub:", {"gw_class": class_id, **relevance_query("gw", gw_relevance(lrp))}),
    ("pages/export.py", f"Export class {class_id}", ":material/download:", {"export_class": class_id}),
])
