"""Heatmaps view: what the model looks at, per sample and on average, and the point clouds
the Gromov–Wasserstein detection starts from."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from core.data import CLASS_NAMES, NUM_CLASSES
from core.errors import ConfigError
from core.experiment import load_trained
from core.durations import estimate
from core.experiment import poisoned_data
from core.heatmaps import ClassHeatmaps, experiment_heatmaps, experiment_heatmaps_path, lrp_step
from core.jobs import RUNNER
from ui.device import on_session_device
from core.lrp import LRPConfig
from core.presets import gw_relevance
from core.pointcloud import normalised_mass, point_cloud, point_count, visibility
from core.poison import sticker_window
from ui.common import (active_experiment, computed_heatmaps, data_or_stop, expected_time, run_through_app, settle_job, training_time,
                       view_links)
from ui.relevance import relevance_controls, relevance_fields, relevance_query
from ui.url_state import Choice, Number, remember_view, restore_view

SQUARE = dict(scaleanchor="x", autorange="reversed", constrain="domain", showticklabels=False, showgrid=False, zeroline=False)
AXIS = dict(constrain="domain", showticklabels=False, showgrid=False, zeroline=False)


def view_fields(default_class: int, architecture: str) -> dict:
    """The view's selections that a link carries (see ui/url_state.py)."""
    return {"hm_class": Choice(tuple(range(NUM_CLASSES)), default_class), **relevance_fields("hm", architecture),
            "hm_eps": Number(0.0, 100.0, 0.25), "hm_gamma": Number(0.0, 100.0, 0.25),
            "hm_target": Choice(("label", "prediction"), "label"), "hm_filter": Choice(("all", "poisoned", "clean"), "all"),
            "hm_sort": Choice(SORT_ORDERS, SORT_ORDERS[0]), "hm_position": Number(1, 100_000, 1, integer=True),
            "hm_t1": Number(0.05, 1.0, 0.99), "hm_t2": Number(0.05, 1.0, 0.5)}


SORT_ORDERS = ("lowest first", "highest first", "training index")


def lrp_controls() -> tuple[int, LRPConfig]:
    with st.sidebar:
        st.subheader("Explain")
        class_id = st.selectbox("Class", range(NUM_CLASSES), format_func=lambda c: f"{c} · {CLASS_NAMES[c]}", key="hm_class", persist_state="session")
        rule, layer, positive = relevance_controls("hm", experiment.train.architecture)
        epsilon = st.number_input("ε (dense layers / ε rule)", *VIEW["hm_eps"].bounds, step=0.05, format="%.3f", key="hm_eps", persist_state="session",
                                  disabled=rule not in ("composite", "epsilon"))
        gamma = st.number_input("γ (convolutions / γ rule)", *VIEW["hm_gamma"].bounds, step=0.05, format="%.3f", key="hm_gamma", persist_state="session",
                                disabled=rule not in ("composite", "gamma"))
        target = st.radio("Explain the logit of", VIEW["hm_target"].options, key="hm_target", persist_state="session", horizontal=True,
                          format_func={"label": "the image's label", "prediction": "the predicted class"}.get)
    try:
        return class_id, LRPConfig(rule=rule, epsilon=epsilon, gamma=gamma, target=target, layer=layer, positive=positive)
    except ConfigError as exc:
        st.error(str(exc))
        st.stop()


def symmetric_range(*arrays: np.ndarray) -> float:
    top = max(float(np.abs(a).max()) for a in arrays)
    return top if top > 0 else 1.0


def heatmap_trace(values: np.ndarray, bound: float, name: str, colorbar_x: float | None = None, show_scale: bool = True) -> go.Heatmap:
    return go.Heatmap(z=values, zmid=0, zmin=-bound, zmax=bound, colorscale="RdBu_r", name=name, showscale=show_scale,
                      colorbar=dict(title=dict(text="relevance", side="right"), x=colorbar_x, thickness=12, len=0.9),
                      hovertemplate="row %{y}, col %{x}<br>relevance %{z:.4f}<extra>" + name + "</extra>")


def sticker_box(fig: go.Figure, window: np.ndarray, row: int, col: int) -> None:
    rows, cols = np.nonzero(window)
    fig.add_shape(type="rect", x0=cols.min() - 0.5, x1=cols.max() + 0.5, y0=rows.min() - 0.5, y1=rows.max() + 0.5,
                  line=dict(color="#ff00ff", width=1), row=row, col=col)


def mean_heatmaps(h: ClassHeatmaps, window: np.ndarray) -> go.Figure:
    """The mean heatmap of each group the class has (poisoned, clean), on one colour scale."""
    maps = h.heatmaps.numpy()
    mask = h.poison_mask.numpy()
    groups = [(f"poisoned samples ({int(mask.sum())})", "mean, poisoned", maps[mask]), (f"clean samples ({int((~mask).sum())})", "mean, clean", maps[~mask])]
    groups = [(title, name, members.mean(0)) for title, name, members in groups if len(members)]
    bound = symmetric_range(*(mean for _, _, mean in groups))
    fig = make_subplots(1, 2, subplot_titles=[title for title, _, _ in groups], horizontal_spacing=0.06)
    for col, (_, name, mean) in enumerate(groups, start=1):
        fig.add_trace(heatmap_trace(mean, bound, name, show_scale=col == 1), 1, col)
        sticker_box(fig, window, 1, col)
    fig.update_xaxes(**AXIS)
    fig.update_yaxes(**SQUARE)
    fig.update_yaxes(scaleanchor="x2", row=1, col=2)
    if len(groups) == 1:
        fig.update_xaxes(visible=False, row=1, col=2)
        fig.update_yaxes(visible=False, row=1, col=2)
    fig.update_layout(height=340, margin=dict(l=0, r=0, t=60, b=0),
                      title=dict(text="Mean heatmap of the class (shared colour scale; magenta: sticker window)", font=dict(size=14)))
    return fig


def sample_figure(image: np.ndarray, heat: np.ndarray, window: np.ndarray) -> go.Figure:
    bound = symmetric_range(heat)
    fig = make_subplots(1, 3, subplot_titles=["image", "heatmap", "overlay"], horizontal_spacing=0.04)
    fig.add_trace(go.Image(z=image, hovertemplate="row %{y}, col %{x}<br>RGB %{z}<extra>image</extra>"), 1, 1)
    fig.add_trace(heatmap_trace(heat, bound, "relevance", colorbar_x=1.02), 1, 2)
    gray = image.mean(axis=2)
    fig.add_trace(go.Heatmap(z=gray, colorscale="gray", showscale=False, hoverinfo="skip"), 1, 3)
    fig.add_trace(go.Heatmap(z=heat, zmid=0, zmin=-bound, zmax=bound, colorscale="RdBu_r", opacity=0.65, showscale=False,
                             hovertemplate="row %{y}, col %{x}<br>relevance %{z:.4f}<extra>overlay</extra>"), 1, 3)
    for col in (2, 3):
        sticker_box(fig, window, 1, col)
    fig.update_xaxes(**AXIS)
    fig.update_yaxes(**SQUARE)
    for col in (2, 3):
        fig.update_yaxes(scaleanchor=f"x{col}", row=1, col=col)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(height=330, margin=dict(l=0, r=40, t=40, b=0))
    return fig


def cloud_figure(heat: np.ndarray, thresholds: list[float]) -> go.Figure:
    import torch

    clouds = [point_cloud(torch.from_numpy(heat), t) for t in thresholds]
    fig = make_subplots(1, len(clouds), horizontal_spacing=0.06,
                        subplot_titles=[f"t = {t:.2f}: {len(c)} points" for t, c in zip(thresholds, clouds)])
    for i, cloud in enumerate(clouds, start=1):
        weights = cloud.weights.numpy()
        coords = cloud.coords.numpy()
        size = 3 + 20 * np.sqrt(weights / weights.max())
        fig.add_trace(go.Scattergl(x=coords[:, 1], y=coords[:, 0], mode="markers", marker=dict(size=size, color=weights, colorscale="Viridis",
                                   showscale=i == len(clouds), colorbar=dict(title=dict(text="weight", side="right"), thickness=12)),
                                   customdata=weights, hovertemplate="row %{y}, col %{x}<br>weight %{customdata:.5f}<extra></extra>"), 1, i)
        fig.update_xaxes(range=[-0.5, 31.5], row=1, col=i, **AXIS)
        fig.update_yaxes(range=[31.5, -0.5], row=1, col=i, scaleanchor=f"x{i if i > 1 else ''}", showticklabels=False, showgrid=False, zeroline=False)
    fig.update_layout(height=360, margin=dict(l=0, r=0, t=60, b=0), showlegend=False,
                      title=dict(text="Point clouds: the most relevant pixels up to mass t, sized by weight", font=dict(size=14)))
    return fig


@st.cache_data(show_spinner=False, max_entries=8)
def class_visibility(heatmaps_file: str, _heatmaps: ClassHeatmaps, _window) -> dict:
    """Cloud sizes at every threshold and mass shares for the class, once per heatmaps file."""
    values = visibility(_heatmaps.heatmaps, _window)
    return {"thresholds": np.array(values["thresholds"]), "sizes": values["sizes"].numpy(),
            "top_share": values["top_share"].numpy(), "window_share": values["window_share"].numpy()}


def visibility_figure(values: dict, poisoned: np.ndarray, threshold: float, chosen: int) -> go.Figure:
    """Median cloud size against t, poisoned and clean, with the chosen sample's curve."""
    fig = go.Figure()
    t = values["thresholds"]
    for name, where, colour in (("poisoned (median)", poisoned, "#d62728"), ("clean (median)", ~poisoned, "#1f77b4")):
        if where.any():
            fig.add_trace(go.Scatter(x=t, y=np.median(values["sizes"][where], axis=0), name=name, line=dict(color=colour),
                                     hovertemplate="t %{x:.2f}: %{y:.0f} points<extra>" + name + "</extra>"))
    fig.add_trace(go.Scatter(x=t, y=values["sizes"][chosen], name="this sample", line=dict(color="black", dash="dot"),
                             hovertemplate="t %{x:.2f}: %{y:.0f} points<extra>this sample</extra>"))
    fig.add_vline(x=threshold, line=dict(color="grey", dash="dash"), annotation_text=f"t = {threshold:.2f}")
    fig.update_layout(height=320, margin=dict(l=0, r=0, t=50, b=0), legend=dict(orientation="h", y=-0.25),
                      title=dict(text="Cloud size against the mass threshold t", font=dict(size=14)),
                      xaxis_title="mass threshold t", yaxis_title="points in the cloud (of 1,024)")
    return fig


run_through_app()
st.title("Heatmaps")
st.caption("Layer-wise relevance propagation (LRP) shows which pixels made the model choose a class (thesis, section 5). "
           "Poisoned samples should light up at the sticker; the point clouds keep the most relevant pixels for the "
           "Gromov–Wasserstein detection.")
experiment = active_experiment()
VIEW = view_fields(experiment.poison.target, experiment.train.architecture)
restore_view(VIEW)
class_id, lrp = lrp_controls()
remember_view(VIEW)
data = data_or_stop()
key = experiment_heatmaps_path(experiment, class_id, lrp, data).name

heatmaps = computed_heatmaps(experiment, class_id, lrp, data)
if heatmaps is None:
    trained = load_trained(data, experiment)
    class_size = int((poisoned_data(data, experiment).train.labels == class_id).sum())
    lrp_time = expected_time(estimate(lrp_step(experiment.train.architecture, lrp), class_size))
    note = "" if trained is not None else f" The model is not trained yet: it is trained first ({training_time(experiment, data)})."
    settle_job(key, "Computing the heatmaps", f"LRP of the class's {class_size:,} images: {lrp_time}.{note}")
    st.write(f"No heatmaps yet for class {class_id} with {lrp.describe()}. LRP of its {class_size:,} images: {lrp_time}.{note}")
    if st.button("Compute heatmaps", type="primary"):
        RUNNER.submit(key, "LRP heatmaps", on_session_device(lambda progress: experiment_heatmaps(experiment, class_id, lrp, data, progress=progress)))
        st.rerun()
    st.stop()

window_tensor = sticker_window(experiment.poison)
window = window_tensor.numpy()
summary = heatmaps.summary(window_tensor, 0.99)
cols = st.columns([1, 0.8, 1.1, 1.5, 0.8])
cols[0].metric("Images of the class", f"{summary['count']:,}", help=f"{summary['poisoned']} poisoned, {summary['clean']} clean")
cols[1].metric("LRP time", f"{heatmaps.seconds:.2f} s")
cols[2].metric("Conservation gap", f"{100 * summary['conservation_gap_median']:.1f} %",
               help="Median over the class of (logit − total relevance) / |logit|: the share that biases and ε absorb. "
                    "With zero biases and ε → 0 it is 0.")
if summary["window_positive_share_poisoned"] is not None:
    cols[3].metric("In sticker window: poisoned", f"{100 * summary['window_positive_share_poisoned']:.1f} %",
                   help=f"The share of the positive relevance that lies in the sticker window (mean over the poisoned samples). "
                        f"The window is {100 * summary['window_share_of_image']:.1f} % of the image.")
if summary["window_positive_share_clean"] is not None:
    cols[4].metric("… clean" if summary["window_positive_share_poisoned"] is not None else "In sticker window: clean",
                   f"{100 * summary['window_positive_share_clean']:.1f} %")
notice = st.container()  # always drawn, so that a class with a note keeps every element below at its place
if not summary["poisoned"]:
    p = experiment.poison
    why = (f"the attack gave its stickered images the label {p.target}, so they are explained on class {p.target}'s page"
           if class_id == p.source else f"the attack poisons class {p.source} towards class {p.target} only")
    notice.info(f"Class {class_id} has no poisoned samples: {why}. Its heatmaps show what clean samples look like.", icon=":material/info:")

st.plotly_chart(mean_heatmaps(heatmaps, window), width="stretch")

@st.fragment
def one_sample(heatmaps: ClassHeatmaps, images, key: str, window_tensor) -> None:
    """The sample browser and its clouds: choosing a sample reruns this section alone, so the
    class's mean heatmaps above are not sent or redrawn again."""
    st.subheader("One sample")
    left, middle, right = st.columns([1, 1, 2])
    which = left.radio("Show", VIEW["hm_filter"].options, horizontal=True, key="hm_filter", persist_state="session")
    order = middle.selectbox("Sort by model confidence", SORT_ORDERS, key="hm_sort", persist_state="session")
    mask = heatmaps.poison_mask.numpy()
    candidates = np.arange(len(heatmaps)) if which == "all" else np.flatnonzero(mask if which == "poisoned" else ~mask)
    if len(candidates) == 0:
        remember_view(VIEW)
        st.info(f"This class has no {which} samples.")
        return
    confidence = heatmaps.confidence.numpy()[candidates]
    if order == "lowest first":
        candidates = candidates[np.argsort(confidence, kind="stable")]
    elif order == "highest first":
        candidates = candidates[np.argsort(-confidence, kind="stable")]
    st.session_state["hm_position"] = min(int(st.session_state.get("hm_position", 1)), len(candidates))  # a linked position may exceed this filter's count
    position = right.slider("Sample", 1, len(candidates), key="hm_position", persist_state="session") if len(candidates) > 1 else 1
    remember_view(VIEW)
    chosen = int(candidates[min(position, len(candidates)) - 1])
    index = int(heatmaps.indices[chosen])
    heat = heatmaps.heatmaps[chosen].numpy()
    st.caption(
        f"Training image #{index} · {'poisoned' if mask[chosen] else 'clean'} · label {class_id} · predicted "
        f"{int(heatmaps.predicted[chosen])} ({CLASS_NAMES[int(heatmaps.predicted[chosen])]}) · confidence "
        f"{100 * float(heatmaps.confidence[chosen]):.1f} % · explained logit {float(heatmaps.logit[chosen]):.2f} · "
        f"total relevance {float(heat.sum()):.2f}"
    )
    st.plotly_chart(sample_figure(images[index].permute(1, 2, 0).numpy(), heat, window_tensor.numpy()), width="stretch")
    clouds(heatmaps, key, window_tensor, chosen)


@st.fragment
def clouds(heatmaps: ClassHeatmaps, key: str, window_tensor, chosen: int) -> None:
    """The two clouds of the chosen sample and what GW can see at the left threshold: a threshold
    nudge reruns this section alone."""
    heat = heatmaps.heatmaps[chosen].numpy()
    mask = heatmaps.poison_mask.numpy()
    t1, t2 = st.columns(2)
    first = t1.slider("Mass threshold t (left cloud)", *VIEW["hm_t1"].bounds, step=0.01, key="hm_t1", persist_state="session")
    second = t2.slider("Mass threshold t (right cloud)", *VIEW["hm_t2"].bounds, step=0.01, key="hm_t2", persist_state="session")
    remember_view(VIEW)
    st.plotly_chart(cloud_figure(heat, [first, second]), width="stretch")

    st.subheader("What Gromov–Wasserstein can see")
    st.caption("GW compares clouds up to rotation and translation: it cannot see where the sticker is, only whether a cloud is one "
               "heavy compact atom. So poisoned clouds stand out when their heaviest pixels hold much more of the mass than clean "
               "clouds' do. The thesis's clouds: 55 % against 12 % in the 9 heaviest pixels, 512 against 584 points at t = 0.99.")
    values = class_visibility(key, heatmaps, window_tensor)
    at_t = int(np.argmin(np.abs(values["thresholds"] - first)))
    exact_t = abs(values["thresholds"][at_t] - first) < 1e-9
    sizes_at_t = values["sizes"][:, at_t] if exact_t else point_count(normalised_mass(heatmaps.heatmaps), first).numpy()
    POINTS, TOP, WINDOW = f"points (t = {first:.2f})", "top-9 mass", "window mass"
    rows = {}
    for name, where in (("poisoned", mask), ("clean", ~mask), ("this sample", np.arange(len(mask)) == chosen)):
        if where.any():
            rows[name] = {POINTS: float(np.median(sizes_at_t[where])), TOP: float(np.median(values["top_share"][where])),
                          WINDOW: float(np.median(values["window_share"][where]))}
    left, right = st.columns([1, 1])
    left.dataframe(pd.DataFrame(rows).T.style.format({POINTS: "{:.0f}", TOP: "{:.1%}", WINDOW: "{:.1%}"}), width="stretch")
    left.caption("Medians over the class's poisoned and clean samples at the left cloud's threshold t: the cloud's size, the "
                 "share of its mass in its 9 heaviest pixels, and in the sticker window (where the attack may place the sticker).")
    right.plotly_chart(visibility_figure(values, mask, first, chosen), width="stretch")


one_sample(heatmaps, poisoned_data(data, experiment).train.images, key, window_tensor)
view_links(experiment, [
    ("pages/spectral.py", f"Cluster class {class_id}: spectral analysis", ":material/scatter_plot:", {"sp_class": class_id, **relevance_query("sp", lrp)}),
    ("pages/detect.py", f"Detect in class {class_id}: GW k-means", ":material/hub:", {"gw_class": class_id, **relevance_query("gw", gw_relevance(lrp))}),
    ("pages/export.py", f"Export class {class_id}", ":material/download:", {"export_class": class_id}),
])
