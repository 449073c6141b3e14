"""Where the active experiment stands: each step of the pipeline and its artifact's state.

Read from file headers and locks only, so the home page can draw it on every rerun.
A step is "cached" when its artifact is on disk, "running" while some process (this
server, another one, or the CLI) holds the artifact's lock, "ready" when it is computed
on the page from cached inputs in seconds, and otherwise "not yet computed".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from .cache import artifact_meta, locked_elsewhere
from .errors import ArtifactError
from .experiment import ExperimentConfig, model_path
from .detectors import detection_path
from .gw_kmeans import GWConfig
from .heatmaps import heatmaps_path
from .jobs import RUNNER
from .lrp import LRPConfig
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


def _meta(path: Path) -> dict:
    try:
        return artifact_meta(path)
    except (ArtifactError, FileNotFoundError):
        return {}


def pipeline_status(experiment: ExperimentConfig, data, lrp: LRPConfig = LRPConfig(), gw: GWConfig = GWConfig(),
                    robustness: RobustnessConfig = RobustnessConfig()) -> List[Step]:
    """The six steps for the experiment's target class, with the views' default settings."""
    p = experiment.poison
    model = model_path(data, experiment)
    heatmaps = heatmaps_path(model.name, p.target, lrp)
    detection = detection_path(heatmaps.name, gw)
    table = table_path(model.name, robustness)
    metrics = _meta(model).get("metrics", {})
    trained = _state(model)
    explained = _state(heatmaps)
    steps = [
        Step("Poison", "poison", "ready", f"{p.describe()}; poisoned on the fly from the decoded data set"),
        Step("Train", "poison", trained,
             (f"clean accuracy {100 * metrics['clean_accuracy']:.1f} %, attack success rate {100 * metrics['attack_success_rate']:.1f} %"
              if metrics else "the network of thesis appendix A.1, 2–3 minutes on two cores (the quick experiment: under a minute)"), model.name),
        Step("Explain", "heatmaps", explained, f"LRP heatmaps of class {p.target} ({lrp.describe()})", heatmaps.name),
        Step("Cluster", "spectral", "ready" if explained == "cached" else "not yet computed",
             "spectral clustering of the heatmaps, computed on the page in seconds"),
        Step("Detect", "detect", _state(detection), _detection_detail(detection), detection.name),
        Step("Defend", "defense", _state(table), f"AA/BA table of {robustness.images} test images, "
             f"{len(robustness.attacks)} attacks, defense {robustness.defense.marginals}", table.name),
    ]
    return steps


def _detection_detail(path: Path) -> str:
    meta = _meta(path)
    if not meta.get("iterations"):
        return "Gromov–Wasserstein k-means with the thesis's settings (minutes)"
    counts = meta["iterations"][-1]["counts"]
    return "GW k-means: tn, fp, fn, tp = {tn}, {fp}, {fn}, {tp}".format(**counts)
