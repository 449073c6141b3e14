"""Export view: take the results away as CSV, JSON and a ViRelAy project."""

from __future__ import annotations

import streamlit as st

from core.commands import export_command
from core.data import CLASS_NAMES, NUM_CLASSES
from core.export import detection_frame, experiment_json, experiment_record, virelay_zip
from core.lrp import LRPConfig
from ui.common import active_experiment, data_or_stop, job_result, run_through_app
from ui.relevance import relevance_controls, relevance_fields
from ui.url_state import Choice, remember_view, restore_view


run_through_app()
st.title("Export")
st.caption("Per-sample detection results as CSV, the experiment and its metrics as JSON, and the heatmaps with their "
           "spectral embeddings as a project for the ViRelAy viewer. The same files: the `python -m core export` command below.")
experiment = active_experiment()
VIEW = {"export_class": Choice(tuple(range(NUM_CLASSES)), experiment.poison.target), **relevance_fields("export", experiment.train.architecture)}
restore_view(VIEW)
data = data_or_stop()
p = experiment.poison
class_id = st.selectbox("Class", range(NUM_CLASSES), format_func=lambda c: f"{c} · {CLASS_NAMES[c]}", key="export_class", persist_state="session",
                        help="The class whose training images are scored; the attack's target class holds the poisoned images.")
with st.expander("Heatmaps: rule and layer"):
    rule, layer, positive = relevance_controls("export", experiment.train.architecture)
remember_view(VIEW)
lrp = LRPConfig(rule=rule, layer=layer, positive=positive)
st.subheader("Detection results and experiment")
key = f"export-frame:{experiment.to_query()}:{class_id}:{lrp.short_name}"
frame = job_result(key, "Detection table", lambda progress: detection_frame(experiment, class_id, lrp, data=data, progress=progress),
                   "Heatmaps, spectral clustering and the three baselines on the class (the model and the heatmaps first, "
                   "if they are not cached yet); the bar follows each step.", "Score every method on the class")
if frame is not None:
    record = experiment_record(experiment, data, frame, class_id, lrp)
    methods = record["detection"]["methods"]
    st.dataframe([{"method": name, **{k: scores[k] for k in ("tp", "fp", "tn", "fn", "tpr", "tnr", "auc")}} for name, scores in methods.items()],
                 hide_index=True, column_config={k: st.column_config.NumberColumn(format="%.3f") for k in ("tpr", "tnr", "auc")})
    left, right = st.columns(2)
    left.download_button(f"Download the {len(frame)} rows as CSV", frame.to_csv(index=False), file_name=f"detections-class{class_id:02d}.csv",
                         mime="text/csv", icon=":material/table:")
    right.download_button("Download the experiment as JSON", experiment_json(record), file_name="experiment.json",
                          mime="application/json", icon=":material/data_object:")
    st.caption("Columns: train_index (position in the poisoned training split), poisoned (truth), and per method a flag "
               "(1: flagged as poisoned) and a suspicion score (higher: more suspicious). GW k-means appears once its result with the default settings "
               "is computed on the GW detection page.")

st.subheader("ViRelAy project")
classes = st.multiselect("Classes", range(NUM_CLASSES), sorted({p.source, p.target}), format_func=lambda c: f"{c} · {CLASS_NAMES[c]}",
                         key="export_virelay_classes", persist_state="session")
if not classes:
    st.error("No class is chosen: choose at least one class for the ViRelAy project.")
else:
    key = f"export-virelay:{experiment.to_query()}:{sorted(classes)}:{lrp.short_name}"
    archive = job_result(key, "ViRelAy export", lambda progress: virelay_zip(experiment, classes, lrp, data=data, progress=progress),
                         "Heatmaps, spectral analysis and t-SNE of every chosen class, written as HDF5; the bar follows each class.",
                         "Build the ViRelAy project")
    if archive is not None:
        st.download_button(f"Download the project ({len(archive) / 1e6:.1f} MB zip)", archive, file_name="poisonlab-virelay.zip",
                           mime="application/zip", icon=":material/download:")
        st.caption("Unzip, then `pip install virelay` (in its own environment: it needs pillow < 11) and "
                   "`virelay poisonlab-virelay/project.yaml`; it serves the heatmaps, the spectral and t-SNE embeddings and "
                   "the clusterings (spectral, poison truth, GW k-means when cached) on http://localhost:8000.")
st.code(export_command(experiment, class_id, classes, lrp), language="bash")
