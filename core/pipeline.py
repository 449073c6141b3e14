"""Where the active experiment stands: each step of the pipeline and its artifact's state.

Read from file headers and locks only, so the home page can draw it on every rerun.
A step is "cached" when its artifact is on disk, "running" while some process (this
server, another one, or the CLI) holds the artifact's lock, "ready" when it is computed
on the page from cached inputs in seconds, and otherwise "not yet computed".
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import List, Optional

from .cache import WAITING, artifact_meta, locked_elsewhere, progress_elsewhere
from .errors import ArtifactError
from .experiment import ExperimentConfig, model_path, training_estimate
from .detectors import detection_path
from .gw_kmeans import GWConfig
from .heatmaps import heatmaps_path
from .jobs import RUNNER
from .lrp import LRPConfig
from .models import ARCHITECTURE_LABELS
from .presets import GW_RELEVANCE
from .progress import approximate_duration
from .robustness import RobustnessConfig, table_path


@dataclass(frozen=True)
class Step:
    name: str
    page: str  # the url path of the view that shows it
    state: str  # cached, running, ready, not yet computed
    detail: str
    artifact: Optional[str] = None


def _state(path: Path) -> str:
    job = RUNNER.get(path.name)
    if (job is not None and job.active) or locked_elsewhere(path.name):
        return "running"
    return "cached" if path.is_file() else "not yet computed"


def running_detail(key: str) -> Optional[str]:
    """What the computation of `key` reports, in this process or another (None if it is not running)."""
    job = RUNNER.get(key)
    event = job.progress if job is not None and job.active else None
    if event is None or event.message == WAITING:
        computing = progress_elsewhere(key)
        if computing is None:
            return None if job is None or not job.active else "starting"
        if computing.progress is None:
            return "starting in another process"
        where = "" if computing.pid == os.getpid() else f" (process {computing.pid})"
        event = computing.progress
    else:
        where = ""
    share = f" {100 * event.fraction:.0f} %" if event.total > 0 else ""
    return f"running{where}:{share} {event.message or event.task}".rstrip()


def _expected(seconds: Optional[float]) -> str:
    return "not yet measured on this CPU" if seconds is None else f"{approximate_duration(seconds)} on this CPU"


def _meta(path: Path) -> dict:
    try:
        return artifact_meta(path)
    except (ArtifactError, FileNotFoundError):
        return {}


def pipeline_status(experiment: ExperimentConfig, data, lrp: LRPConfig = LRPConfig(), gw: GWConfig = GWConfig(),
                    robustness: RobustnessConfig = RobustnessConfig(), gw_lrp: LRPConfig = GW_RELEVANCE) -> List[Step]:
    """The six steps for the experiment's target class, with the views' default settings (GW k-means
    reads its own heatmaps, `gw_lrp`)."""
    p = experiment.poison
    model = model_path(data, experiment)
    heatmaps = heatmaps_path(model.name, p.target, lrp)
    detection = detection_path(heatmaps_path(model.name, p.target, gw_lrp).name, gw)
    table = table_path(model.name, robustness)
    metrics = _meta(model).get("metrics", {})
    trained = _state(model)
    explained = _state(heatmaps)
    network = ARCHITECTURE_LABELS[experiment.train.architecture]
    steps = [
        Step("Poison", "poison", "ready", f"{p.describe()}; poisoned on the fly from the decoded data set"),
        Step("Train", "poison", trained,
             (f"clean accuracy {100 * metrics['clean_accuracy']:.1f} %, attack success rate {100 * metrics['attack_success_rate']:.1f} %"
              if metrics else f"{network}: {_expected(training_estimate(experiment, data))}"), model.name),
        Step("Explain", "heatmaps", explained, f"LRP heatmaps of class {p.target} ({lrp.describe()})", heatmaps.name),
        Step("Cluster", "spectral", "ready" if explained == "cached" else "not yet computed",
             "spectral clustering of the heatmaps, computed on the page from the cached heatmaps"),
        Step("Detect", "detect", _state(detection), _detection_detail(detection), detection.name),
        Step("Defend", "defense", _state(table), f"AA/BA table of {robustness.images} test images, "
             f"{len(robustness.attacks)} attacks, defense {robustness.defense.marginals}", table.name),
    ]
    return [replace(step, detail=running_detail(step.artifact) or step.detail) if step.state == "running" else step for step in steps]


def _detection_detail(path: Path) -> str:
    meta = _meta(path)
    if not meta.get("iterations"):
        return "Gromov–Wasserstein k-means with the GW page's default settings"
    counts = meta["iterations"][-1]["counts"]
    return "GW k-means: tn, fp, fn, tp = {tn}, {fp}, {fn}, {tp}".format(**counts)
