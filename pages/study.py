"""Study view: a grid of experiments (thesis table 3, the paper's detection table, or your own),
run on Ray in the background, its cells filling in, and its results as charts."""

from __future__ import annotations

import os
from typing import Optional

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.errors import ConfigError
from core.study import (DETECTORS, preset_studies, start_study, stop_study, study_failures, study_from_dict, study_log, study_process, study_status,
                        study_table, table_csv, training_left)
from core.progress import approximate_duration
from ui.common import data_or_stop, run_through_app
from ui.device import session_device

STATE_COLOURS = {"cached": "background-color: #bbf7d0", "running": "background-color: #fed7aa", "failed": "background-color: #fecaca",
                 "waiting": "color: #6b7280"}
MEASURE_LABELS = {"attack_success_rate": "attack success rate", "clean_accuracy": "clean accuracy", "accuracy": "accuracy",
                  "tpr": "TPR (poisoned found)", "tnr": "TNR (clean kept)"}
AXIS_LABELS = {"pp": "poisoned share pp (log scale)", "size": "sticker side (pixels)", "seed": "training seed"}


def choose_preset() -> None:
    st.session_state["study_text"] = PRESETS[st.session_state["study_preset"]].read_text()


def parse(text: str):
    import tomllib

    try:
        return study_from_dict(tomllib.loads(text)), None
    except tomllib.TOMLDecodeError as exc:
        return None, f"not valid TOML ({exc})"
    except ConfigError as exc:
        return None, str(exc)


def line_chart(table: pd.DataFrame, study, measures: list, title: str, y_title: str) -> Optional[go.Figure]:
    """Mean ± standard deviation over seeds of `measures` (column prefixes) against the study's
    first axis (pp on a log scale), one line per value of a second axis."""
    axes = [a for a in study.axes if a != "seed"]
    if not axes:
        return None
    x_axis = "pp" if "pp" in axes else axes[0]
    split = next((a for a in axes if a != x_axis), None)
    fig = go.Figure()
    for measure in measures:
        if f"{measure} mean" not in table or table[f"{measure} mean"].isna().all():
            continue
        for value, group in (table.groupby(split, sort=False) if split else [(None, table)]):
            group = group.sort_values(x_axis, key=lambda s: s.astype(float))
            name = " · ".join(part for part in (MEASURE_LABELS.get(measure.split(" ")[-1], measure) if len(measures) > 1 else None,
                                                f"{split} = {value}" if split else None) if part) or measure
            fig.add_trace(go.Scatter(x=group[x_axis].astype(float), y=group[f"{measure} mean"], name=name, mode="lines+markers",
                                     error_y=dict(type="data", array=group[f"{measure} std"].fillna(0), visible=True),
                                     hovertemplate=f"{x_axis} %{{x:g}}: %{{y:.3f}}<extra>{name}</extra>"))
    if not fig.data:
        return None
    fig.update_layout(height=360, margin=dict(l=0, r=0, t=50, b=0), title=dict(text=title, font=dict(size=14)),
                      xaxis_title=AXIS_LABELS.get(x_axis, x_axis), yaxis_title=y_title, yaxis_range=[-0.02, 1.02],
                      legend=dict(orientation="h", y=-0.25))
    if x_axis == "pp":
        fig.update_xaxes(type="log")
    return fig


run_through_app()
st.title("Studies")
st.caption("A study sweeps the attack and the training over a grid; every cell is an ordinary experiment whose model and "
           "scores are the cached files the other views use. It runs on Ray in a process of its own (a local runtime with "
           "one worker per core, or a cluster), so it goes on while you use the other views.")
PRESETS = preset_studies()
data = data_or_stop()
if "study_text" not in st.session_state:
    st.session_state["study_preset"] = next(iter(PRESETS))
    choose_preset()
left, right = st.columns([1, 2])
left.selectbox("Start from", list(PRESETS), key="study_preset", on_change=choose_preset,
               help="The studies that come with Poison Lab (studies/*.toml); '(reduced)' variants finish in minutes here, "
                    "the full ones need hours per cell on a laptop.")
text = right.text_area("The study (TOML: name, detectors, [base], [grid])", key="study_text", height=260)
study, problem = parse(text)
if study is None:
    st.error(f"This study cannot run: {problem}")
    st.stop()

statuses = study_status(study, data)
steps = list(study.steps)
missing = [cell for cell, row in zip(study.cells, statuses) if row["train"] != "cached"]
workers = os.cpu_count() or 1
left = training_left(study, data, workers)
cols = st.columns(4)
cols[0].metric("Cells", f"{len(study.cells)}", help=", ".join(f"{k}: {len(v)} values" for k, v in study.grid))
cols[1].metric("Steps cached", f"{sum(row[s] == 'cached' for row in statuses for s in steps)} of {len(statuses) * len(steps)}")
if missing and left is not None:
    seconds, bound = left
    cols[2].metric("Training left", ("at most " if bound else "") + approximate_duration(seconds).removeprefix("about "),
                   help=f"{len(missing)} models on {workers} local one-thread workers, at the training speed measured on this CPU"
                        + (" with more threads, counted as if no thread helped another" if bound else " with one thread")
                        + "; the detectors come on top.")
else:
    cols[2].metric("Training left", "–" if not missing else "not measured",
                   help="Every model is cached." if not missing else "Training this network has not been measured on this CPU yet.")
cols[3].metric("Detectors", ", ".join(study.detectors) or "none", help="; ".join(f"{d}: {DETECTORS[d]}" for d in study.detectors))

address = st.text_input("Ray cluster address (empty: a local runtime on this machine)", key="study_address",
                        help="e.g. HEAD:6379 (the head's GCS port) or ray://HEAD:10001 (Ray client); every node must have this project at the same path and share the cache folder.")
process = study_process(study)
run, stop, _ = st.columns([1, 1, 4])
if run.button("Run the study", type="primary", disabled=process is not None or not (missing or any(
        row[s] != "cached" for row in statuses for s in steps))):
    start_study(study, address.strip() or None, session_device())
    st.rerun()
if stop.button("Stop", disabled=process is None, help="Finished steps stay in the cache; running it again computes the rest."):
    stop_study(study)
    st.rerun()
st.caption("The same on the command line: `python -m core study run my-study.toml` with this text in `my-study.toml`; "
           "`python -m core study table my-study.toml --format csv` prints the table below.")


@st.fragment(run_every=2.0 if process is not None else None)
def cell_grid() -> None:
    """Each cell's steps, refreshed every two seconds while the study runs."""
    rows = study_status(study, data)
    done = sum(row[s] == "cached" for row in rows for s in steps)
    if study_process(study) is not None:
        st.progress(done / max(len(rows) * len(steps), 1), text=f"Running: {done} of {len(rows) * len(steps)} steps cached")
    elif process is not None:  # it ended since the page was drawn: draw the results
        st.rerun()
    frame = pd.DataFrame([{**{k: row[k] for k in study.axes}, **{s: row[s] for s in steps}} for row in rows])
    st.dataframe(frame.style.map(STATE_COLOURS.get, subset=steps), hide_index=True, height=min(35 * (len(rows) + 1) + 3, 400))
    log = study_log(study).strip().splitlines()
    failed = study_failures(study)
    if failed:
        st.error(f"{len(failed)} step{'s' if len(failed) > 1 else ''} failed in the last run; the others went on.\n\n"
                 + "\n".join(f"- {step}: {error}" for step, error in list(failed.items())[:8]) + ("\n- …" if len(failed) > 8 else ""))
    other = [line for line in log if line.startswith("error: ") and not any(line.startswith(f"error: {step}:") for step in failed)]
    if other:
        st.error(f"The study stopped: {other[-1].removeprefix('error: ')}")


st.subheader("Cells")
cell_grid()

table = pd.DataFrame(study_table(study, data))
st.subheader("Results")
if table.empty or table.get("clean_accuracy n", pd.Series([0])).sum() == 0:
    st.info("No cell has finished yet: the charts appear as the cells do.")
    st.stop()
for fig in (line_chart(table, study, ["attack_success_rate"], "Attack success rate (mean ± std over training seeds)", "attack success rate"),
            line_chart(table, study, ["clean_accuracy"], "Clean test accuracy (mean ± std over training seeds)", "clean accuracy")):
    if fig is not None:
        st.plotly_chart(fig, width="stretch")
if study.cleanse:
    fig = line_chart(table, study, [f"{d} ASR after cleansing" for d in study.detectors],
                     "Attack success rate after removing what each detector flags and retraining (mean ± std over training seeds)",
                     "attack success rate")
    if fig is not None:
        st.plotly_chart(fig, width="stretch")
for detector in study.detectors:
    fig = line_chart(table, study, [f"{detector} accuracy", f"{detector} tpr"],
                     f"{DETECTORS[detector][0].upper()}{DETECTORS[detector][1:]} on the target class (mean ± std over training seeds)", "share")
    if fig is not None:
        st.plotly_chart(fig, width="stretch")
st.dataframe(table, hide_index=True)
st.download_button("Download the table (CSV)", table_csv(study_table(study, data)), file_name=f"{study.name}.csv", mime="text/csv")
