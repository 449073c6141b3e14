"""GW detection view: k-means over the class's heatmap point clouds with Gromov–Wasserstein
distances and barycenters (thesis section 6.5); its iterations, barycenters and scores."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from core.commands import detect_command
from core.data import CLASS_NAMES, NUM_CLASSES
from core.detectors import gw_kmeans_detection, gw_kmeans_path, gw_kmeans_step, heatmap_spectral, thesis_gw
from core.durations import estimate
from core.errors import ConfigError
from core.experiment import load_trained, model_path, poisoned_data
from core.heatmaps import experiment_heatmaps_path
from core.gw_kmeans import GWConfig, mds_embedding
from core.jobs import RUNNER
from ui.device import on_session_device
from core.lrp import LRPConfig
from core.presets import GW_RELEVANCE, PRESETS
from core.spectral import SpectralConfig
from ui.charts import confusion_chart
from ui.cleanse import cleanse_section
from ui.common import (active_experiment, cached_baselines, cached_detection, data_or_stop, expected_time, heatmaps_or_stop,
                       run_through_app, set_active_experiment, settle_job, view_links)
from ui.hover_preview import hover_preview
from ui.tiles import diverging_rgb
from ui.relevance import relevance_controls, relevance_fields, relevance_query
from ui.url_state import Choice, Number, remember_view, restore_view

EPSILONS = [5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 5e-2, 0.1]


@st.cache_data(show_spinner=False, max_entries=16)
def barycenter_coordinates(path_name: str, _structures: np.ndarray) -> list:
    return [mds_embedding(s) for s in _structures]


def iteration_table(result, truth: np.ndarray) -> pd.DataFrame:
    rows = []
    for i, it in enumerate(result.iterations):
        c = it.counts or {}
        tn, fp, fn, tp = c.get("tn"), c.get("fp"), c.get("fn"), c.get("tp")
        rows.append({"iteration": i, "tn": tn, "fp": fp, "fn": fn, "tp": tp,
                     "accuracy": (tn + tp) / len(truth), "tpr": tp / max(tp + fn, 1), "tnr": tn / max(tn + fp, 1),
                     "seconds": it.seconds, "barycenter updates": ", ".join(map(str, it.barycenter_updates)) or "–"})
    return pd.DataFrame(rows).set_index("iteration")


def barycenter_figure(coordinates: list, flagged_slot: int) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, subplot_titles=[f"Centre {k}{' (flagged cluster)' if k == flagged_slot else ''}" for k in (0, 1)])
    for k, xy in enumerate(coordinates):
        fig.add_trace(go.Scatter(x=xy[:, 0], y=xy[:, 1], mode="markers+text", text=[str(i) for i in range(len(xy))], textposition="top center",
                                 marker=dict(size=12, color="#dc2626" if k == flagged_slot else "#2563eb"), name=f"centre {k}",
                                 hovertemplate="point %{text}<extra></extra>"), 1, k + 1)
        fig.update_xaxes(scaleanchor=f"y{k + 1 if k else ''}", row=1, col=k + 1)
    fig.update_layout(height=360, margin=dict(l=0, r=0, t=60, b=0), showlegend=False,
                      title=dict(text="The two barycenters, drawn by metric MDS (thesis figure 5)", font=dict(size=14)))
    return fig


def distance_figure(distances: np.ndarray, truth: np.ndarray, hover: list) -> go.Figure:
    fig = go.Figure()
    for value, name, colour in ((False, "clean", "#2563eb"), (True, "poisoned", "#dc2626")):
        members = np.flatnonzero(truth == value)
        fig.add_trace(go.Scattergl(x=distances[members, 0], y=distances[members, 1], mode="markers", name=f"{name} ({len(members)})",
                                   marker=dict(size=5, color=colour, opacity=0.7), customdata=members,
                                   hovertext=[hover[m] for m in members], hoverinfo="text"))
    low, high = float(distances.min()), float(distances.max())
    fig.add_trace(go.Scatter(x=[low, high], y=[low, high], mode="lines", line=dict(color="#64748b", dash="dot"), name="equal distance", hoverinfo="skip"))
    fig.update_layout(height=480, margin=dict(l=0, r=0, t=40, b=0), xaxis_title="GW distance to centre 0", yaxis_title="GW distance to centre 1",
                      title=dict(text="Each sample's distances to the two barycenters (hover for a preview)", font=dict(size=14)),
                      legend=dict(orientation="h", y=-0.15))
    return fig


run_through_app()
st.title("Gromov–Wasserstein detection")
st.caption("Each heatmap becomes a weighted point cloud (its most relevant pixels up to the mass threshold). k-means with two "
           "clusters runs on these metric-measure spaces: entropic Gromov–Wasserstein distances to the centres, GW barycenters "
           "of 10 points as the centres, k-means++ seeding. The smaller cluster is flagged as poisoned (thesis section 6.5).")
experiment = active_experiment()
THRESHOLDS = (0.5, 0.9, 0.95, 0.99)
VIEW = {"gw_class": Choice(tuple(range(NUM_CLASSES)), experiment.poison.target), **relevance_fields("gw", experiment.train.architecture, GW_RELEVANCE),
        "gw_threshold": Choice(THRESHOLDS, 0.99), "gw_eps": Choice(tuple(EPSILONS), 5e-4), "gw_iter": Number(1, 20, 10, integer=True),
        "gw_seed": Number(0, 10_000, 0, integer=True), "gw_seeding": Choice(("distance", "squared"), "distance"),
        "gw_bary": Choice(("entropic", "exact"), "entropic")}
restore_view(VIEW)


def apply_preset(name: str) -> None:
    """Set the network (a new experiment) and every control the preset names; the page reruns with them."""
    chosen = PRESETS[name]
    set_active_experiment(replace(experiment, train=chosen.training(experiment.train)))
    st.session_state.update({"gw_rule": chosen.lrp.rule, "gw_layer": chosen.lrp.layer, "gw_positive": chosen.lrp.positive,
                             "gw_threshold": chosen.gw.threshold, "gw_eps": chosen.gw.epsilon, "gw_iter": chosen.gw.max_iter,
                             "gw_seeding": chosen.gw.seeding, "gw_bary": chosen.gw.barycenter})


with st.sidebar:
    st.subheader("Detect")
    for name, chosen in PRESETS.items():
        st.button(f"Preset: {name}", key=f"gw_preset_{name}", help=chosen.description, on_click=apply_preset, args=(name,))
    class_id = st.selectbox("Class", range(NUM_CLASSES), format_func=lambda c: f"{c} · {CLASS_NAMES[c]}", key="gw_class", persist_state="session")
    rule, layer, positive = relevance_controls("gw", experiment.train.architecture)
    threshold = st.select_slider("Mass threshold t", THRESHOLDS, key="gw_threshold", persist_state="session")
    epsilon = st.select_slider("Entropic ε (seeding and updates)", EPSILONS, format_func=lambda e: f"{e:g}", key="gw_eps", persist_state="session")
    max_iter = st.slider("k-means iterations at most", *VIEW["gw_iter"].bounds, key="gw_iter", persist_state="session")
    seed = st.number_input("Seed of the k-means++ seeding", *VIEW["gw_seed"].bounds, key="gw_seed", persist_state="session")
    seeding = st.radio("Second seed drawn in proportion to", VIEW["gw_seeding"].options, key="gw_seeding", persist_state="session", horizontal=True,
                       format_func={"distance": "GW distance", "squared": "its square (thesis)"}.get)
    barycenter = st.radio("Barycenters", VIEW["gw_bary"].options, key="gw_bary", persist_state="session", horizontal=True,
                          format_func={"entropic": "entropic, warm-started", "exact": "exact (thesis; slow)"}.get,
                          help="Exact barycenters are POT's gromov_barycenters from a fresh random start, as in the thesis's code: "
                               "one solver run per cloud and update, many times slower than the warm-started entropic updates.")
remember_view(VIEW)
try:
    lrp = LRPConfig(rule=rule, layer=layer, positive=positive)
    config = GWConfig(threshold=threshold, epsilon=epsilon, epsilon_init=epsilon, max_iter=max_iter, seed=int(seed),
                      seeding=seeding, barycenter=barycenter)
except ConfigError as exc:
    st.error(str(exc))
    st.stop()
data = data_or_stop()
if load_trained(data, experiment) is None:
    heatmaps_or_stop(data, experiment, class_id, lrp)  # no model yet: the Heatmaps page trains it
heatmaps_path = experiment_heatmaps_path(experiment, class_id, lrp, data)
heatmaps_file = heatmaps_path.name  # a run computes them first where they are missing
step = partial(gw_kmeans_detection, experiment, class_id, lrp, config, data)
path = gw_kmeans_path(experiment, class_id, lrp, config, data)
key = path.name
if not path.is_file() or not heatmaps_path.is_file():  # a run computes what is missing, in the background
    settle_job(key, "GW k-means", "GW k-means runs in the background: switching pages or changing controls does not stop it.")
    clouds = int((poisoned_data(data, experiment).train.labels == class_id).sum())
    st.write(f"GW k-means has not run yet for class {class_id} with these settings. Its {clouds:,} clouds: "
             f"{expected_time(estimate(gw_kmeans_step(config), clouds))} (a first run in a new process also compiles the "
             "solver's kernels). Smaller thresholds are no faster, because every cloud lives on the same 32×32 grid."
             + ("" if heatmaps_path.is_file() else f" Its heatmaps ({lrp.describe()}) are computed first, in a few seconds."))
    if st.button("Run GW k-means", type="primary"):
        RUNNER.submit(key, "GW k-means", on_session_device(lambda progress: step(progress=progress)))
        st.rerun()
    st.stop()

detection = cached_detection(("gw k-means", key), step)
heatmaps, result, flagged, score = detection
truth = detection.truth
flagged_slot = int(np.bincount(result.assignments, minlength=2).argmin())

cols = st.columns(5)
thesis = thesis_gw(experiment, class_id, config) or {}
cols[0].metric("Accuracy", f"{100 * score.accuracy:.2f} %", help=f"Thesis: {100 * thesis['accuracy']:.2f} %" if thesis else None)
cols[1].metric("TPR (poisoned found)", f"{100 * score.tpr:.2f} %" if np.isfinite(score.tpr) else "–",
               help=f"Thesis: {100 * thesis['tpr']:.2f} %" if thesis else None)
cols[2].metric("TNR (clean kept)", f"{100 * score.tnr:.2f} %" if np.isfinite(score.tnr) else "–",
               help=f"Thesis: {100 * thesis['tnr']:.2f} %" if thesis else None)
cols[3].metric("ROC-AUC", f"{score.auc:.3f}" if score.auc is not None else "–", help="From the difference of the two GW distances")
cols[4].metric("Time", f"{result.seconds:.0f} s", help=f"{len(result.iterations) - 1} iterations; converged: {result.converged}")
if thesis:
    st.caption(f"Thesis, same setting (table 2): accuracy {100 * thesis['accuracy']:.2f} %, TPR {100 * thesis['tpr']:.2f} %, TNR {100 * thesis['tnr']:.2f} %.")

left, right = st.columns([3, 2])
left.subheader("Iterations")
left.dataframe(iteration_table(result, truth).style.format({"accuracy": "{:.4f}", "tpr": "{:.4f}", "tnr": "{:.4f}", "seconds": "{:.1f}"}, na_rep="–"),
               width="stretch")
right.plotly_chart(confusion_chart(score, "Confusion of GW k-means", "Reds"), width="stretch")
st.plotly_chart(barycenter_figure(barycenter_coordinates(key, result.barycenters), flagged_slot), width="stretch")

indices = heatmaps.indices.numpy()
hover = [f"#{indices[i]} · {'poisoned' if truth[i] else 'clean'} · cluster {result.assignments[i]}{' (flagged)' if flagged[i] else ''}"
         for i in range(len(truth))]
st.plotly_chart(distance_figure(result.distances, truth, hover), width="stretch", key="gw_scatter")
images = poisoned_data(data, experiment).train.images[indices].permute(0, 2, 3, 1).numpy()
hover_preview("gw_scatter", {"image": (f"{heatmaps_file}-images", images), "heatmap": (f"{heatmaps_file}-heatmaps", diverging_rgb(heatmaps.heatmaps.numpy()))},
              [h.replace(" · ", "\n", 1) for h in hover])

st.subheader("Compared with the other methods on the same class")
spectral = cached_detection(("euclidean", heatmaps_file, SpectralConfig()), partial(heatmap_spectral, experiment, class_id, lrp, SpectralConfig(), data))
rows = {"Gromov–Wasserstein k-means": score.as_dict(), f"Euclidean spectral clustering ({lrp.short_name})": spectral.score.as_dict()}
if st.toggle("Add activation clustering", key="gw_baselines", persist_state="session"):
    rows["activation clustering"] = cached_baselines(model_path(data, experiment).name, class_id, 0, experiment, data)["activation clustering"]
table = pd.DataFrame(rows).T[["accuracy", "tpr", "tnr", "f1", "auc", "tn", "fp", "fn", "tp"]]
st.dataframe(table.style.format({**{c: "{:.4f}" for c in ("accuracy", "tpr", "tnr", "f1", "auc")}, **{c: "{:.0f}" for c in ("tn", "fp", "fn", "tp")}},
                                na_rep="–"), width="stretch")
command = detect_command(experiment, class_id, lrp, config)
st.caption("Reproduce these numbers on the command line:")
st.code(command, language="bash")
if class_id == experiment.poison.target:
    cleanse_section(experiment, data, ("truth", "random", "gw", "spectral"))
view_links(experiment, [
    ("pages/spectral.py", f"Class {class_id} by spectral analysis", ":material/scatter_plot:", {"sp_class": class_id, **relevance_query("sp", lrp)}),
    ("pages/export.py", f"Export class {class_id}", ":material/download:", {"export_class": class_id}),
    ("pages/defense.py", "Attack the model: the barycentric defense", ":material/shield:", {}),
])
