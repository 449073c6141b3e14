"""Studies: one attack and training setting swept over a grid, every cell an ordinary experiment.

A study is declared in a small TOML file (or built from flags):

    name = "sticker size against poisoned share"
    detectors = ["spectral", "activation"]   # scored on each cell's target class

    [base]          # experiment parameters every cell shares, as in a link (`python -m core train --help`)
    epochs = 6
    subset = 8000

    [grid]          # every combination of these values is a cell
    size = [1, 2, 3]
    pp = [0.0025, 0.01, 0.33]
    seed = [0, 1, 2]

Each cell's model, heatmaps and detection scores are the same cached artifacts the other views
use, so a cell one of them computed is not computed again, and the reverse. `run_study` hands
the cells to Ray: one task per cell to train, one per detector that starts when its cell's
model is ready. Finished steps are files in the cache (written whole, by a rename), so a study
that is stopped and started again only computes what is missing; two studies that share a
cell compute it once (the artifact lock).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import statistics
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from .cache import cache_dir, cached, config_hash, locked_elsewhere
from .detectors import DETECTORS, detector_settings
from .errors import ClusterError, ConfigError
from .experiment import ExperimentConfig
from .progress import ProgressCallback, report

ROOT = Path(__file__).resolve().parent.parent
MAX_CELLS = 1000
_SCORE_VERSION = 1


@dataclass(frozen=True)
class Study:
    """A grid of experiments: `base` parameters, the `grid` axes (parameter → values) and the
    detectors scored on each cell, all as the link parameters of `ExperimentConfig.to_query`."""

    name: str = "study"
    base: Tuple[Tuple[str, str], ...] = ()
    grid: Tuple[Tuple[str, Tuple[str, ...]], ...] = ()
    detectors: Tuple[str, ...] = ()
    cleanse: bool = False
    """Also remove what each detector flags and retrain (core.cleanse): the ASR after cleansing."""
    cells: Tuple[ExperimentConfig, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip() or len(self.name) > 200:
            raise ConfigError(f"a study's name must be text of 1 … 200 characters, got {self.name!r}")
        known = set(ExperimentConfig().to_query()) | {"recipe"}
        for key, _ in self.base:
            if key not in known:
                raise ConfigError(f"[base] {key}: not an experiment parameter (one of {', '.join(sorted(known))})")
        for key, values in self.grid:
            if key not in known:
                raise ConfigError(f"[grid] {key}: not an experiment parameter (one of {', '.join(sorted(known))})")
            if not values:
                raise ConfigError(f"[grid] {key}: give at least one value")
        for name in self.detectors:
            if name not in DETECTORS:
                raise ConfigError(f"detectors: {name!r} is not one of {', '.join(DETECTORS)}")
        if not isinstance(self.cleanse, bool):
            raise ConfigError(f"cleanse must be true or false, got {self.cleanse!r}")
        if self.cleanse and not self.detectors:
            raise ConfigError("cleanse = true needs detectors: it retrains without what each of them flags")
        count = math.prod(len(values) for _, values in self.grid)
        if count > MAX_CELLS:
            raise ConfigError(f"the grid has {count:,} cells; at most {MAX_CELLS:,} are allowed in one study")
        cells = []
        for combination in itertools.product(*(values for _, values in self.grid)):
            query = {**dict(self.base), **{key: value for (key, _), value in zip(self.grid, combination)}}
            try:
                cells.append(ExperimentConfig.from_query(query))
            except ConfigError as exc:
                shown = ", ".join(f"{k} = {v}" for (k, _), v in zip(self.grid, combination))
                raise ConfigError(f"cell {shown}: {exc}") from None
        object.__setattr__(self, "cells", tuple(cells))

    @property
    def axes(self) -> Tuple[str, ...]:
        return tuple(key for key, _ in self.grid)

    @property
    def steps(self) -> Tuple[str, ...]:
        """Each cell's steps: train, each detector, and with `cleanse` each detector's retraining."""
        return ("train", *self.detectors, *(f"cleanse {d}" for d in self.detectors if self.cleanse))

    def key(self) -> str:
        return config_hash(1, self.base, self.grid, self.detectors, *(["cleanse"] if self.cleanse else []))

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "detectors": list(self.detectors), "base": dict(self.base),
                "grid": {key: list(values) for key, values in self.grid}, **({"cleanse": True} if self.cleanse else {})}


def _text(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise ConfigError(f"{where}: {value!r} is not a number or a word")


def study_from_dict(value: Mapping[str, Any]) -> Study:
    """A study from the parsed TOML: its sections checked, its values taken as link text."""
    if not isinstance(value, Mapping):
        raise ConfigError("a study is a table with name, detectors, [base] and [grid]")
    unknown = set(value) - {"name", "detectors", "cleanse", "base", "grid"}
    if unknown:
        raise ConfigError(f"unknown entries {', '.join(sorted(unknown))}: a study has name, detectors, cleanse, [base] and [grid]")
    base, grid = value.get("base", {}), value.get("grid", {})
    if not isinstance(base, Mapping) or not isinstance(grid, Mapping):
        raise ConfigError("[base] and [grid] must be tables")
    if not grid:
        raise ConfigError("[grid] is empty: give at least one parameter with its values, e.g. pp = [0.01, 0.33]")
    detectors = value.get("detectors", [])
    if isinstance(detectors, str) or not isinstance(detectors, Sequence):
        raise ConfigError("detectors must be a list, e.g. [\"spectral\", \"activation\"]")
    axes = []
    for key, values in grid.items():
        values = values if isinstance(values, list) else [values]
        axes.append((key, tuple(_text(v, f"[grid] {key}") for v in values)))
    return Study(name=str(value.get("name", "study")), base=tuple((k, _text(v, f"[base] {k}")) for k, v in base.items()),
                 grid=tuple(axes), detectors=tuple(str(d) for d in detectors), cleanse=value.get("cleanse", False))


def load_study(path: Path) -> Study:
    """A study from its TOML file; any problem is one line naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a TOML file (TOML is UTF-8 text; byte {exc.start} is {exc.object[exc.start:exc.start + 1]!r})") from None
    try:
        return study_from_dict(tomllib.loads(text))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


# ------------------------------------------------------------------ one cell's steps

def score_path(config: ExperimentConfig, detector: str, data) -> Path:
    """Where a cell's detector score is cached (beside its model, named by the model's artifact)."""
    from .experiment import model_path

    model = model_path(data, config).name
    return cache_dir() / f"score-{detector}-{config_hash(_SCORE_VERSION, model, detector, config.poison.target, *detector_settings(detector))}.safetensors"


def step_path(config: ExperimentConfig, step: str, data) -> Path:
    """The cached file that a finished step leaves: the model, a detector's score, or the model
    retrained without what the detector flagged."""
    from .cleanse import cleansed_path
    from .experiment import model_path

    if step == "train":
        return model_path(data, config)
    if step.startswith("cleanse "):
        return cleansed_path(config, step.removeprefix("cleanse "), data)
    return score_path(config, step, data)


def train_cell(config: ExperimentConfig, data=None, progress: Optional[ProgressCallback] = None) -> Dict[str, Any]:
    """The cell's model (trained, or loaded from the cache) and its clean accuracy and ASR."""
    from .experiment import train_or_load

    metrics = train_or_load(config, data, progress=progress).metrics
    return {k: metrics[k] for k in ("clean_accuracy", "attack_success_rate", "source_accuracy", "n_poisoned", "n_train")}


def detect_cell(config: ExperimentConfig, detector: str, data=None, progress: Optional[ProgressCallback] = None) -> Dict[str, Any]:
    """One detector's score on the cell's target class, cached."""
    from .data import load_gtsrb

    data = data if data is not None else load_gtsrb(progress=progress)
    started = time.perf_counter()

    def compute():
        from .detectors import detect

        found = detect(config, detector, config.poison.target, data, progress=progress)
        return {**found.score.as_dict(), "seconds": round(time.perf_counter() - started, 3)}, found.flagged

    def encode(result):
        score, flagged = result
        return {"flagged": torch.as_tensor(flagged, dtype=torch.bool)}, {"score": score, "detector": detector,
                                                                         "experiment": config.to_dict()}

    if detector not in DETECTORS:
        raise ConfigError(f"unknown detector {detector!r}; choose one of {', '.join(DETECTORS)}")
    score, _ = cached(score_path(config, detector, data), compute, encode, lambda tensors, meta: (meta["score"], None),
                      progress=progress)
    return score


# ------------------------------------------------------------------ Ray

CELLS_PER_GPU = 4
"""Steps that share one GPU at a time: a cell's ThesisNet uses a small part of one, and a study's
cells are many; Ray hands each step this share of a GPU."""


def _worker_environment(device: str = "auto") -> Dict[str, str]:
    """What a Ray worker needs to find the project, the data and this cache, and where it computes
    (a step given no GPU share is held to the CPU, even on a node with GPUs)."""
    env = {"PYTHONPATH": str(ROOT), "POISONLAB_CACHE": str(cache_dir()), "POISONLAB_NO_PROGRESS": "1"}
    if device == "cpu":
        env["POISONLAB_DEVICE"] = "cpu"
    if os.environ.get("GTSRB_DIR"):
        env["GTSRB_DIR"] = str(Path(os.environ["GTSRB_DIR"]).resolve())
    return env


def _train_task(query: Dict[str, str]) -> Dict[str, Any]:
    started = time.perf_counter()
    return {**train_cell(ExperimentConfig.from_query(query)), "step seconds": round(time.perf_counter() - started, 2)}


def _detect_task(query: Dict[str, str], detector: str, _model_ready: Any) -> Dict[str, Any]:
    return detect_cell(ExperimentConfig.from_query(query), detector)


def _cleanse_task(query: Dict[str, str], detector: str, _detected: Any) -> Dict[str, Any]:
    from .cleanse import cleanse

    return cleanse(ExperimentConfig.from_query(query), detector)


def _auth_token_available() -> bool:
    """Whether this process has a Ray token (Ray's own places for it, in its order)."""
    return bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                or (Path.home() / ".ray" / "auth_token").is_file())


def check_cluster_address(address: str) -> None:
    """Refuse a malformed or unreachable address at once: Ray itself retries an absent cluster
    for minutes before it gives up."""
    import socket

    if address == "auto":
        return
    host, _, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"Ray address {address!r}: give HOST:PORT (the head's GCS port, 6379 by default), "
                          "ray://HOST:PORT (Ray client, 10001) or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        raise ClusterError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


_STARTED: Dict[str, Any] = {}  # what this process's Ray runtime was started with


def start_ray(address: Optional[str] = None, device: str = "auto"):
    """A local Ray runtime sized to this machine (its GPUs included), or a connection to the cluster
    at `address` (whose nodes must see this project at the same path and share the cache folder)."""
    if address and "RAY_AUTH_MODE" not in os.environ and _auth_token_available():
        # `ray start` turns token authentication on by default (Ray 2.59 on), and a token-mode
        # client joins a cluster without it as well, so a token found here is offered. Ray reads
        # the mode when it is imported.
        os.environ["RAY_AUTH_MODE"] = "token"
    import ray

    environment = _worker_environment(device)
    if ray.is_initialized():
        if _STARTED.get("environment") == environment and _STARTED.get("address") == address:
            return ray
        ray.shutdown()  # its workers were given another cache folder (or it is another cluster)
    _STARTED.update(environment=environment, address=address)
    options = dict(runtime_env={"env_vars": environment}, include_dashboard=False, logging_level="ERROR",
                   log_to_driver=False)
    if not address:
        ray.init(num_cpus=os.cpu_count() or 1, object_store_memory=128 * 1024 ** 2, **options)
        return ray
    check_cluster_address(address)
    try:
        ray.init(address=address, **options)
    except Exception as exc:  # Ray's ConnectionError or AuthenticationError, with a long story
        detail = _one_line(exc)
        if "auth" in f"{type(exc).__name__} {exc.__cause__!r} {detail}".lower():
            detail = ("it requires token authentication: make its token available here (~/.ray/auth_token, "
                      "RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN) and set RAY_AUTH_MODE=token")
        raise ClusterError(f"cannot join the Ray cluster at {address}: {detail}") from None
    return ray


@dataclass
class StudyRun:
    """What one run of a study did: per step, computed here, found in the cache, or failed."""

    computed: List[str] = field(default_factory=list)
    cached: List[str] = field(default_factory=list)
    failed: Dict[str, str] = field(default_factory=dict)
    workers: int = 0
    gpus: float = 0.0
    """GPUs the steps shared (0: they ran on the CPU)."""
    seconds: float = 0.0

    def as_dict(self) -> Dict[str, Any]:
        return {"computed": self.computed, "cached": self.cached, "failed": self.failed, "workers": self.workers,
                "gpus": self.gpus, "seconds": round(self.seconds, 1)}


def step_name(config: ExperimentConfig, study: Study, step: str) -> str:
    shown = ", ".join(f"{k}={config.to_query()[k]}" for k in study.axes)
    return f"{step} [{shown}]"


def failures_path(study: Study) -> Path:
    return cache_dir() / f"study-{study.key()}.json"


def task_resources(cluster: Mapping[str, float], device: str = "auto") -> Dict[str, float]:
    """What each step asks of Ray: one CPU, and a share of a GPU where the cluster has GPUs and the
    device setting allows one (auto or cuda); cuda on a cluster without a GPU is a ConfigError."""
    from .device import check_device

    device = check_device(device)
    gpus = float(cluster.get("GPU", 0))
    if device.startswith("cuda") and gpus <= 0:
        raise ConfigError(f"device {device!r}: the Ray cluster has no GPU (use auto or cpu)")
    if device == "cpu" or gpus <= 0:
        return {"num_cpus": 1}
    return {"num_cpus": 1, "num_gpus": 1 / CELLS_PER_GPU}


def run_study(study: Study, data=None, address: Optional[str] = None, progress: Optional[ProgressCallback] = None,
              device: str = "auto") -> StudyRun:
    """Every missing step of the study, on Ray; finished steps are only counted. A failed step is
    recorded with its error and the others go on (a cell's detectors are skipped if its model failed).
    Steps take a share of a GPU where the cluster has one (`task_resources`)."""
    from .data import load_gtsrb
    from .experiment import model_path

    started = time.perf_counter()
    data = data if data is not None else load_gtsrb(progress=progress)
    run = StudyRun()
    pending: Dict[Any, str] = {}
    remote: Dict[str, Any] = {}
    needs: Dict[str, str] = {}  # a detector step → its cell's training step

    def submit(task, *args):
        if not remote:  # Ray starts only when there is something to compute
            ray = start_ray(address, device)
            resources = task_resources(ray.cluster_resources(), device)
            remote.update(ray=ray, resources=resources,
                          train=ray.remote(max_retries=0, **resources)(_train_task),
                          detect=ray.remote(max_retries=0, **resources)(_detect_task),
                          cleanse=ray.remote(max_retries=0, **resources)(_cleanse_task))
        return remote[task].remote(*args)

    for config in study.cells:
        query = config.to_query()
        model_ready: Any = True
        train = step_name(config, study, "train")
        if model_path(data, config).is_file():
            run.cached.append(train)
        else:
            model_ready = submit("train", query)
            pending[model_ready] = train
        for detector in study.detectors:
            detected: Any = True
            if score_path(config, detector, data).is_file():
                run.cached.append(step_name(config, study, detector))
            else:
                detected = submit("detect", query, detector, model_ready)
                pending[detected] = step_name(config, study, detector)
                needs[pending[detected]] = train
            if not study.cleanse:
                continue
            name = step_name(config, study, f"cleanse {detector}")
            if step_path(config, f"cleanse {detector}", data).is_file():
                run.cached.append(name)
            else:
                step = submit("cleanse", query, detector, detected)
                pending[step] = name
                needs[name] = step_name(config, study, detector) if detected is not True else train
    total = len(pending)
    ray = remote.get("ray")
    if ray is not None:
        run.workers = int(ray.cluster_resources().get("CPU", 0))
        run.gpus = float(ray.cluster_resources().get("GPU", 0)) if "num_gpus" in remote["resources"] else 0.0
    where = f"{run.workers} Ray workers" + (f" sharing {run.gpus:g} GPU{'s' * (run.gpus != 1)}" if run.gpus else "")
    report(progress, "study", 0, total, f"{total} steps to compute, {len(run.cached)} cached, on {where}")
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        name = pending.pop(done[0])
        try:
            ray.get(done[0])
            run.computed.append(name)
        except Exception as exc:  # the task's own error, or its model's: recorded, and the study goes on
            run.failed[name] = _one_line(exc)
        finished = total - len(pending)
        report(progress, "study", finished, total, f"{name}: {'failed' if name in run.failed else 'done'}")
    for name in list(run.failed):  # a step whose input failed says which, not that step's error again
        root = needs.get(name)
        if root in run.failed:
            while needs.get(root) in run.failed:
                root = needs[root]
            run.failed[name] = f"not run: {root} failed"
    run.seconds = time.perf_counter() - started
    failures_path(study).write_text(json.dumps({"study": study.to_dict(), "failed": run.failed, "finished": time.time()}))
    return run


def training_left(study: Study, data, workers: int) -> Optional[Tuple[float, bool]]:
    """Seconds the study's missing models take on `workers` one-thread Ray workers, and whether
    that is an upper bound: from the one-thread speed measured here, or else from the speed
    measured with this process's n threads times n (a thread is at most n times slower alone).
    None if neither was measured."""
    from .experiment import model_path, training_estimate

    threads = torch.get_num_threads()
    total, bound = 0.0, False
    for config in study.cells:
        if model_path(data, config).is_file():
            continue
        seconds = training_estimate(config, data, threads=1)
        if seconds is None:
            seconds = training_estimate(config, data, threads=threads)
            if seconds is None:
                return None
            seconds, bound = seconds * threads, bound or threads > 1
        total += seconds
    return total / max(workers, 1), bound


def _one_line(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc
    lines = [line for line in str(cause).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(cause).__name__


# ------------------------------------------------------------------ status and results

def study_failures(study: Study) -> Dict[str, str]:
    """The steps that failed in the study's last run, with their errors."""
    try:
        return dict(json.loads(failures_path(study).read_text()).get("failed", {}))
    except (OSError, ValueError, AttributeError):
        return {}


def study_status(study: Study, data) -> List[Dict[str, Any]]:
    """Each cell's steps: cached, running (its lock is held, in any process), failed (the last
    run's error) or waiting."""
    failed = study_failures(study)
    rows = []
    for config in study.cells:
        query = config.to_query()
        row = {key: query[key] for key in study.axes}
        for step in study.steps:
            path = step_path(config, step, data)
            name = step_name(config, study, step)
            row[step] = ("cached" if path.is_file() else "running" if locked_elsewhere(path.name)
                         else "failed" if name in failed else "waiting")
        rows.append(row)
    return rows


def study_results(study: Study, data) -> List[Dict[str, Any]]:
    """One row per cell with what is cached: clean accuracy, ASR and each detector's scores."""
    from .cache import load_artifact
    from .experiment import model_path

    rows = []
    for config in study.cells:
        query = config.to_query()
        row: Dict[str, Any] = {key: query[key] for key in study.axes}
        try:
            metrics = load_artifact(model_path(data, config))[1]["metrics"]
            row.update(clean_accuracy=metrics["clean_accuracy"], attack_success_rate=metrics["attack_success_rate"])
        except FileNotFoundError:
            pass
        for detector in study.detectors:
            try:
                score = load_artifact(score_path(config, detector, data))[1]["score"]
            except FileNotFoundError:
                continue
            for measure in ("accuracy", "tpr", "tnr", "auc"):
                row[f"{detector} {measure}"] = score.get(measure)
        for detector in study.detectors if study.cleanse else ():
            try:
                after = load_artifact(step_path(config, f"cleanse {detector}", data))[1]["metrics"]
            except FileNotFoundError:
                continue
            row[f"{detector} ASR after cleansing"] = after["attack_success_rate"]
            row[f"{detector} clean accuracy after cleansing"] = after["clean_accuracy"]
        rows.append(row)
    return rows


def study_table(study: Study, data, over: str = "seed") -> List[Dict[str, Any]]:
    """The results with the cells that differ only in `over` (the training seed) folded into
    mean and standard deviation, and the number of cells that had a value."""
    rows = study_results(study, data)
    groups: Dict[Tuple, List[Dict[str, Any]]] = {}
    keys = [k for k in study.axes if k != over]
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    measures = [m for m in ("clean_accuracy", "attack_success_rate") + tuple(
        f"{d} {m}" for d in study.detectors for m in ("accuracy", "tpr", "tnr", "auc")) + tuple(
        f"{d} {m} after cleansing" for d in study.detectors if study.cleanse for m in ("ASR", "clean accuracy"))]
    table = []
    for group_key, members in groups.items():
        line: Dict[str, Any] = dict(zip(keys, group_key))
        line["cells"] = len(members)
        for measure in measures:
            values = [r[measure] for r in members if isinstance(r.get(measure), (int, float)) and math.isfinite(r[measure])]
            line[f"{measure} mean"] = statistics.fmean(values) if values else None
            line[f"{measure} std"] = statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)
            line[f"{measure} n"] = len(values)
        table.append(line)
    return table


def table_csv(table: List[Dict[str, Any]]) -> str:
    import csv
    import io

    out = io.StringIO()
    columns = list(dict.fromkeys(k for row in table for k in row))
    writer = csv.DictWriter(out, columns)
    writer.writeheader()
    for row in table:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})
    return out.getvalue()


# ------------------------------------------------------------------ a study in the background

def to_toml(study: Study) -> str:
    """The study as the TOML file `load_study` reads (values kept as the link text they are)."""
    def text(value: str) -> str:
        return json.dumps(value)  # a JSON string is a valid TOML basic string

    lines = [f"name = {text(study.name)}", f"detectors = [{', '.join(text(d) for d in study.detectors)}]",
             *(["cleanse = true"] if study.cleanse else []), "", "[base]"]
    lines += [f"{key} = {text(value)}" for key, value in study.base]
    lines += ["", "[grid]"] + [f"{key} = [{', '.join(text(v) for v in values)}]" for key, values in study.grid]
    return "\n".join(lines) + "\n"


def study_folder() -> Path:
    path = cache_dir() / "studies"
    path.mkdir(exist_ok=True)
    return path


_PROCESSES: Dict[str, Any] = {}


def start_study(study: Study, address: Optional[str] = None, device: str = "auto"):
    """`python -m core study run` on the study's file, in a process (and session) of its own, so that
    it neither waits for nor blocks this process's jobs; its output goes to a log beside the file."""
    import subprocess
    import sys

    running = study_process(study)
    if running is not None:
        return running
    folder = study_folder()
    path = folder / f"study-{study.key()}.toml"
    path.write_text(to_toml(study))
    command = ([sys.executable, "-m", "core", "study", "run", str(path), "--quiet", "--device", device.partition(":")[0]]
               + (["--address", address] if address else []))
    log = open(folder / f"study-{study.key()}.log", "w")
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "POISONLAB_CACHE": str(cache_dir())}, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    _PROCESSES[study.key()] = process
    return process


def study_process(study: Study):
    """The running process this one started for `study`, if any."""
    process = _PROCESSES.get(study.key())
    return process if process is not None and process.poll() is None else None


def study_log(study: Study) -> str:
    path = study_folder() / f"study-{study.key()}.log"
    return path.read_text() if path.is_file() else ""


def stop_study(study: Study) -> bool:
    """Stop the study's process and the Ray runtime it started; finished steps stay in the cache."""
    import signal

    process = study_process(study)
    if process is None:
        return False
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except Exception:
        os.killpg(process.pid, signal.SIGKILL)
    return True


def preset_studies() -> Dict[str, Path]:
    """The study files that come with the project (`studies/`), by their names."""
    found = {}
    for path in sorted((ROOT / "studies").glob("*.toml")):
        found[load_study(path).name] = path
    return found
