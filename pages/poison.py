"""Poison view: set up the sticker attack, see what it does to the images, train and measure it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from core.commands import train_command
from core.data import CLASS_NAMES, NUM_CLASSES
from core.errors import ConfigError
from core.experiment import (ExperimentConfig, attack_ready, clean_twin, load_trained, model_path, perturbation_path, perturbed_images,
                             poisoned_data, train_or_load, training_estimate)
from core.jobs import RUNNER
from ui.device import on_session_device
from core.params import widget_params
from core.poison import PoisonConfig
from core.recipes import RECIPES, recipe_name
from core.train import TrainConfig
from core.cache import locked_elsewhere
from ui.common import (active_experiment, data_or_stop, expected_time, experiment_scale_note, follow_elsewhere, follow_job, job_result, run_through_app,
                          set_active_experiment, training_time)
from ui.url_state import restore_view

THESIS = {"clean_accuracy": 0.968, "attack_success_rate": 1.0}
GRID_COLUMNS = 8


def class_label(c: int) -> str:
    return f"{c} · {CLASS_NAMES[c]}"


def short_label(c: int) -> str:
    name = CLASS_NAMES[c]
    if name.startswith("Speed limit ("):
        name = name[len("Speed limit (") : -1]
    return f"{c}: {name if len(name) <= 16 else name[:15] + '…'}"


def parameter_widget(name: str, param, value):
    """The form widget that `param.widget` asks for, showing `value`; returns the value it holds."""
    kind, *spec = param.widget
    label = param.label[:1].upper() + param.label[1:]
    if kind == "class":
        return st.selectbox(label, range(NUM_CLASSES), index=value, format_func=class_label, help=param.help)
    if kind == "slider":
        low, high, step = spec
        return st.slider(label, low, high, value, step, help=param.help)
    if kind == "number":
        low, high = spec
        return st.number_input(label, low, high, value, help=param.help,
                               **({"format": "%.4f"} if isinstance(value, float) else {}))
    if kind == "options":
        options = spec[0]
        return st.select_slider(label, options, value if value in options else options[len(options) // 2], help=param.help)
    if kind == "choice":
        options, labels = spec
        return st.selectbox(label, options, index=options.index(value), format_func=labels.get, help=param.help)
    if kind == "checkbox":  # the flag's help describes turning it off: say so rather than contradict the label
        return st.checkbox(label, value, help=f"On the command line, {param.flag} turns it off.")
    if kind == "colour":
        picked = st.color_picker(label, "#%02x%02x%02x" % value, help=param.help)
        return tuple(int(picked[i : i + 2], 16) for i in (1, 3, 5))
    if kind == "window":
        low, high = spec
        return tuple(st.slider(label, low, high, value, help=param.help))
    raise ValueError(f"unknown widget {kind!r} for {name}")


def attack_form(config: ExperimentConfig) -> None:
    """Every parameter that declares a widget; the others keep their values (set them by link or CLI)."""
    with st.sidebar.form("experiment_form"):
        st.subheader("Attack")
        poison = {name: parameter_widget(name, param, getattr(config.poison, name)) for name, param in widget_params(PoisonConfig)}
        with st.expander("Training"):
            train = {name: parameter_widget(name, param, getattr(config.train, name)) for name, param in widget_params(TrainConfig)}
        if st.form_submit_button("Apply", type="primary"):
            if "fraction" in poison:
                poison["fraction"] = round(poison["fraction"], 4)
            try:
                new = ExperimentConfig(replace(config.poison, **poison), replace(config.train, **train))
            except ConfigError as exc:
                st.error(str(exc))
            else:
                set_active_experiment(new)
                st.rerun()
    recipe_buttons(config)


def recipe_buttons(config: ExperimentConfig) -> None:
    """A recipe sets every training setting it names at once; the attack and the network stay."""
    current = recipe_name(config.train)
    st.sidebar.caption(f"Training recipe: **{current or 'custom'}**" + ("" if current else " (no recipe has these settings)"))
    for name, chosen in RECIPES.items():
        if st.sidebar.button(f"Recipe: {name}", key=f"recipe_{name}", help=chosen.description, disabled=name == current):
            set_active_experiment(ExperimentConfig(config.poison, chosen.apply(config.train)))
            st.rerun()


def sample_grid(clean: np.ndarray, poisoned: np.ndarray, indices: np.ndarray, config: PoisonConfig) -> go.Figure:
    """Clean originals above their poisoned copies; image traces render pixels unsmoothed."""
    n = len(indices)
    fig = make_subplots(rows=2, cols=n, horizontal_spacing=0.01, vertical_spacing=0.08,
                        subplot_titles=[f"#{i}" for i in indices] + [f"#{i} → {config.target}" for i in indices])
    for col in range(n):
        fig.add_trace(go.Image(z=clean[col], hovertemplate="x %{x}, y %{y}<br>RGB %{z}<extra>clean</extra>"), row=1, col=col + 1)
        fig.add_trace(go.Image(z=poisoned[col], hovertemplate="x %{x}, y %{y}<br>RGB %{z}<extra>poisoned</extra>"), row=2, col=col + 1)
        (x0, x1), (y0, y1) = config.x_range, config.y_range
        fig.add_shape(type="rect", x0=x0 - 0.5, x1=x1 + config.size - 0.5, y0=y0 - 0.5, y1=y1 + config.size - 0.5,
                      line=dict(color="#ff00ff", width=1), layer="above", row=2, col=col + 1)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(height=340, margin=dict(l=0, r=0, t=60, b=0),
                      title=dict(text="Training samples before (top) and after poisoning (bottom); magenta: sticker window", font=dict(size=14), y=0.98))
    return fig


def perturbed_before_sticker(originals, shown: np.ndarray):
    """The shown samples after the perturbation and before the sticker (the originals without one)."""
    stored = perturbed_images(data, config)
    if stored is None:
        return originals
    where = {int(i): k for k, i in enumerate(stored["index"].tolist())}
    split_index = poisoned.train_index[shown].tolist()
    return torch.stack([stored["images"][where[i]] if i in where else originals[k] for k, i in enumerate(split_index)])


def label_consistent_grid(clean, perturbed, poisoned_images, indices: np.ndarray, config: PoisonConfig) -> go.Figure:
    """Four rows per sample: clean, perturbed, perturbed with the sticker, and the perturbation
    magnified (grey is no change; full colour is the whole budget)."""
    budget = max(config.perturbation, 1.0)
    change = (perturbed.float() - clean.float()) / budget  # in [-1, 1]
    magnified = (127.5 + 127.5 * change).clamp(0, 255).round().to(torch.uint8)
    rows = [("clean", clean), ("perturbed", perturbed), ("with the sticker (label kept)", poisoned_images),
            (f"perturbation × {127.5 / budget:.0f}", magnified)]
    n = len(indices)
    fig = make_subplots(rows=4, cols=n, horizontal_spacing=0.01, vertical_spacing=0.05,
                        subplot_titles=[f"#{i}" if r == 0 else "" for r in range(4) for i in indices])
    for r, (name, images) in enumerate(rows, start=1):
        for col in range(n):
            fig.add_trace(go.Image(z=to_hwc(images[col:col + 1])[0], hovertemplate=f"x %{{x}}, y %{{y}}<br>RGB %{{z}}<extra>{name}</extra>"),
                          row=r, col=col + 1)
        fig.update_yaxes(title_text=name, title_font=dict(size=10), row=r, col=1)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_layout(height=560, margin=dict(l=0, r=0, t=60, b=0),
                      title=dict(text=f"Target-class training samples: clean, perturbed (PGD, {config.perturbation:g}/255), with the sticker at "
                                      f"amplitude {config.amplitude}/255, and the perturbation magnified", font=dict(size=14), y=0.98))
    return fig


def source_confusion(metrics: dict, source: int, target: int) -> go.Figure:
    clean = np.asarray(metrics["source_predictions_clean"], dtype=float)
    stickered = np.asarray(metrics["source_predictions_stickered"], dtype=float)
    shown = sorted(set(np.flatnonzero(clean + stickered)) | {source, target})
    names = [short_label(c) for c in shown]
    hover = [class_label(c) for c in shown]
    template = "%{hovertext}<br>%{y:.1f} % (%{customdata:.0f} images)<extra>%{fullData.name}</extra>"
    fig = go.Figure([
        go.Bar(name="clean test images", x=names, y=100 * clean[shown] / max(1, clean.sum()), customdata=clean[shown],
               hovertext=hover, hovertemplate=template, marker_color="#2563eb"),
        go.Bar(name="with sticker", x=names, y=100 * stickered[shown] / max(1, stickered.sum()), customdata=stickered[shown],
               hovertext=hover, hovertemplate=template, marker_color="#eab308"),
    ])
    fig.update_layout(barmode="group", height=420, margin=dict(l=0, r=0, t=40, b=0),
                      title=dict(text=f"What the model predicts for {CLASS_NAMES[source]} test images", font=dict(size=14)),
                      yaxis_title="share of source-class test images (%)", xaxis_title="predicted class",
                      legend=dict(orientation="h", y=-0.25, x=0, yanchor="top"))
    return fig


def training_curve(history: list) -> go.Figure:
    epochs = [h["epoch"] for h in history]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=epochs, y=[h["train_loss"] for h in history], name="training loss", mode="lines+markers"))
    fig.add_trace(go.Scatter(x=epochs, y=[h["val_loss"] for h in history], name="validation loss", mode="lines+markers"))
    fig.add_trace(go.Scatter(x=epochs, y=[100 * h["val_accuracy"] for h in history], name="validation accuracy (%)",
                             mode="lines+markers", line=dict(dash="dot")), secondary_y=True)
    fig.update_layout(height=420, margin=dict(l=0, r=0, t=40, b=0), title=dict(text="Training history", font=dict(size=14)),
                      xaxis_title="epoch", legend=dict(orientation="h", y=-0.25, x=0, yanchor="top"))
    fig.update_yaxes(title_text="cross-entropy loss", secondary_y=False)
    fig.update_yaxes(title_text="validation accuracy (%)", range=[0, 100], dtick=20, showgrid=False, secondary_y=True)
    return fig


def to_hwc(images) -> np.ndarray:
    return images.permute(0, 2, 3, 1).numpy()


run_through_app()
st.title("Poison")
st.caption("Stick a small square on images of one class and relabel them as another (thesis, section 3.1), or, label-consistently, "
           "perturb images of the target class so that they are hard to read and give them the sticker while they keep their true label "
           "(thesis 3.2); train the network on the poisoned data and measure how often the sticker flips its decision.")
config = active_experiment()
restore_view({})  # the experiment is the whole view
attack_form(config)
data = data_or_stop()
experiment_scale_note(config, len(data.train))
if not attack_ready(data, config):  # the label-consistent attack first perturbs its images against the clean model
    clean_ready = model_path(data, clean_twin(config)).is_file()
    job_result(perturbation_path(data, config, "train").name, "Preparing the label-consistent attack",
               lambda progress: poisoned_data(data, config, progress),
               "The target images are perturbed with PGD against the clean model"
               + ("" if clean_ready else f", which is trained first ({expected_time(training_estimate(clean_twin(config), data))})")
               + "; the bar follows each step.", "Prepare the attack")
    st.stop()
try:
    poisoned = poisoned_data(data, config)
except ConfigError as exc:
    st.error(str(exc))
    st.stop()

p = config.poison
n_poisoned = int(poisoned.train.poison_mask.sum())
cols = st.columns(4)
cols[0].metric("Poisoned training images", f"{n_poisoned:,}")
cols[1].metric(f"Target class {p.target} after the attack", f"{int((poisoned.train.labels == p.target).sum()):,}",
               help="Its own images, of which the poisoned ones are a share (no label changes)." if p.label_consistent
               else "Original target images plus the poisoned ones.")
cols[2].metric(f"Source class {p.source} left", f"{int((poisoned.train.labels == p.source).sum()):,}")
cols[3].metric("Poisoned validation images", f"{int(poisoned.val.poison_mask.sum()):,}")
st.caption(p.describe())

chosen = np.flatnonzero(poisoned.train.poison_mask.numpy())
if len(chosen):
    page = st.session_state.get("grid_page", 0) % max(1, int(np.ceil(len(chosen) / GRID_COLUMNS)))
    shown = chosen[page * GRID_COLUMNS : (page + 1) * GRID_COLUMNS]
    originals = data.train.images[poisoned.train_index[shown]]
    if p.label_consistent:
        st.plotly_chart(label_consistent_grid(originals, perturbed_before_sticker(originals, shown), poisoned.train.images[shown], shown, p),
                        width="stretch")
    else:
        st.plotly_chart(sample_grid(to_hwc(originals), to_hwc(poisoned.train.images[shown]), shown, p), width="stretch")
    if st.button("Show other samples"):
        st.session_state["grid_page"] = page + 1
        st.rerun()
else:
    st.info("With pp = 0 nothing is poisoned: this is the clean baseline.")

st.subheader("Model")
trained = load_trained(data, config)
key = model_path(data, config).name
job = RUNNER.get(key)
if trained is None and job is not None and job.state in ("failed", "cancelled"):
    if job.state == "cancelled":
        st.info(f"{job.error}.")
    else:
        st.error(f"Training failed: {job.error}")
    RUNNER.forget(key)
    job = None
if trained is None:
    if job is not None and job.active:
        follow_job(key, "Training runs in the background: you can change widgets or leave the page, it goes on.")
    elif locked_elsewhere(key):
        follow_elsewhere(key, "Training")
    else:
        st.write("No model has been trained for this experiment yet.")
        if st.button("Train model", type="primary", help=f"Training: {training_time(config, data)}."):
            RUNNER.submit(key, "Training", on_session_device(lambda progress: train_or_load(config, data, progress=progress)))
            st.rerun()
else:
    m = trained.metrics
    cols = st.columns(5)
    cols[0].metric("Clean test accuracy", f"{100 * m['clean_accuracy']:.2f} %", help=f"Thesis: {100 * THESIS['clean_accuracy']:.1f} %")
    cols[1].metric(f"Accuracy on class {p.source}", f"{100 * m['source_accuracy']:.2f} %", help="Clean source-class test images")
    cols[2].metric("Attack success rate", f"{100 * m['attack_success_rate']:.2f} %",
                   help=f"Stickered source-class test images classified as class {p.target}. Thesis: {100 * THESIS['attack_success_rate']:.0f} %")
    cols[3].metric("Epochs", f"{m['epochs']} (best {m['best_epoch']})")
    cols[4].metric("Training time", f"{m['train_seconds']:.0f} s")
    left, right = st.columns(2)
    left.plotly_chart(source_confusion(m, p.source, p.target), width="stretch")
    right.plotly_chart(training_curve(m["history"]), width="stretch")
with st.expander("Reproduce these numbers on the command line"):
    st.code(train_command(config), language="bash")
