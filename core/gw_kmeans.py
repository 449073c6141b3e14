"""Gromov–Wasserstein k-means (thesis section 6.5, table 2): find the poisoned group of a class.

Every heatmap becomes a weighted point cloud; k-means with k = 2 runs in the space of
metric-measure spaces: k-means++ seeding with entropic GW distances, assignment to the
nearest barycenter, entropic GW barycenters (10 points, uniform weights) as the new centres,
until the assignment repeats. The smaller cluster is flagged as poisoned.

Two solvers run the same algorithm with the same random draws: the batched grid solver of
`core.gromov` with the barycenters of `core.gw_barycenter` (the default), and POT called one
pair at a time, as the thesis did (the reference in `bench/gromov.py` and the tests).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch

from .detection import DetectionScore, flag_smaller_cluster, score_detection
from .errors import ConfigError
from .grid_clouds import GridClouds
from .gromov import GridGW, Plans
from .gw_barycenter import gw_barycenter, random_structure
from .params import NAME, REAL, SWITCH, WHOLE, check_declared, parameter
from .pointcloud import check_threshold
from .progress import ProgressCallback, report
from .validation import real_number, whole_number


@dataclass(frozen=True)
class GWConfig:
    """Thesis defaults: threshold 0.99, ε = 5e-4 for seeding and updates, barycenters of 10 points."""

    threshold: float = parameter(0.99, REAL, "--threshold", label="mass threshold t", help="mass threshold t of the point clouds",
                                 low=0.0, high=1.0, open_low=True)
    epsilon: float = parameter(5e-4, REAL, "--eps", label="ε", help="entropic regularisation for barycenters and assignments",
                               low=0.0, high=10.0, open_low=True)
    epsilon_init: float = 5e-4  # on the command line, --eps-init defaults to --eps
    barycenter_size: int = parameter(10, WHOLE, "--barycenter-size", label="barycenter points",
                                     help="support points of each barycenter", low=2, high=100)
    max_iter: int = parameter(10, WHOLE, "--max-iter", label="iterations at most", help="k-means iterations at most", low=1, high=100)
    seed: int = parameter(0, WHOLE, "--cluster-seed", label="seed", help="seed of the k-means++ seeding", low=0, high=2**32 - 1)
    barycenter_updates: int = 30
    barycenter_tol: float = 1e-3
    warm_start: bool = parameter(True, SWITCH, "--no-warm-start", label="warm starts",
                                 help="start every GW solve from the product coupling in float64, as POT does "
                                      "(much slower; default: warm starts)")
    seeding: str = parameter("distance", NAME, "--seeding", label="second seed drawn", choices=("distance", "squared"),
                             help="k-means++ draws the second seed with probability proportional to its GW distance to the first "
                                  "(distance) or to that distance squared (squared: the thesis's code)")
    barycenter: str = parameter("entropic", NAME, "--barycenter", label="barycenters", choices=("entropic", "exact"),
                                help="entropic GW barycenters at ε, warm-started (entropic), or exact ones from a fresh random "
                                     "start each iteration, by POT's gromov_barycenters (exact: the thesis's code; minutes per iteration)")

    def __post_init__(self) -> None:
        check_threshold(self.threshold)
        check_declared(self)
        for name in ("epsilon_init", "barycenter_tol"):
            real_number(name, getattr(self, name), 0.0, 10.0, open_low=True)
        whole_number("barycenter_updates", self.barycenter_updates, 1, 1000)


@dataclass
class GWIteration:
    assignments: np.ndarray  # (N,) cluster 0/1
    counts: Optional[Dict[str, int]]  # tn, fp, fn, tp of flagging the smaller cluster, if the truth is known
    seconds: float
    barycenter_updates: List[int] = field(default_factory=list)
    objective: Optional[float] = None  # mean GW distance of the samples to their centres: k-means lowers it every step


@dataclass
class GWResult:
    config: GWConfig
    iterations: List[GWIteration]  # iteration 0: assignment to the k-means++ seeds
    distances: np.ndarray  # (N, 2) GW distances to the final centres
    barycenters: np.ndarray  # (2, m, m) final centres
    seeds: List[int]
    seconds: float
    converged: bool

    @property
    def assignments(self) -> np.ndarray:
        return self.iterations[-1].assignments

    @property
    def flagged(self) -> np.ndarray:
        return flag_smaller_cluster(self.assignments)

    @property
    def suspicion(self) -> np.ndarray:
        """Continuous score for ROC-AUC: how much closer a sample is to the flagged cluster's centre."""
        small = int(np.bincount(self.assignments, minlength=2).argmin())
        return self.distances[:, 1 - small] - self.distances[:, small]

    def score(self, truth) -> DetectionScore:
        return score_detection(truth, self.flagged, self.suspicion)


def _objective(distances: np.ndarray, assignments: np.ndarray) -> float:
    return float(distances[np.arange(len(assignments)), assignments].mean())


def _counts(truth: Optional[np.ndarray], assignments: np.ndarray) -> Optional[Dict[str, int]]:
    if truth is None:
        return None
    s = score_detection(truth, flag_smaller_cluster(assignments))
    return {"tn": s.tn, "fp": s.fp, "fn": s.fn, "tp": s.tp}


class GridSolver:
    """The batched solver, keeping every (cloud, centre) plan as the next solve's warm start."""

    def __init__(self, clouds: GridClouds, config: GWConfig) -> None:
        self.clouds = clouds
        self.config = config
        # POT-style runs (no warm starts) reproduce the POT loop, which needs float64: in a few
        # dozen clouds, float32 rounding alone can tip a k-means run into another outcome.
        dtype = torch.float32 if config.warm_start else torch.float64
        self.solvers = {eps: GridGW(clouds, eps, dtype=dtype) for eps in {config.epsilon, config.epsilon_init}}
        self.plans: Dict[int, Optional[Plans]] = {0: None, 1: None}
        self.seed_plans: Dict[int, Optional[Plans]] = {0: None, 1: None}  # a seed cloud's plan against its centre

    def distances(self, centre: np.ndarray, slot: int, epsilon: float) -> np.ndarray:
        n = len(self.clouds)
        everyone = torch.arange(n)
        warm = self.plans[slot] if self.config.warm_start else None
        if warm is None and self.config.warm_start and self.seed_plans[slot] is not None:
            warm = self.solvers[epsilon].transferred(self.seed_plans[slot], everyone)
        # The stored plans are replaced by the result: it may be written over them.
        result = self.solvers[epsilon].solve(everyone, torch.from_numpy(centre).expand(n, -1, -1), warm=warm, out=warm)
        self.plans[slot] = result
        return result.values.numpy()

    def barycenter(self, members: np.ndarray, start: np.ndarray, slot: int, epsilon: float, fresh: bool) -> tuple:
        solver = self.solvers[epsilon]
        idx = torch.from_numpy(members)
        stored = None if fresh or not self.config.warm_start else self.plans[slot]
        fresh_updates = (3 if fresh else 0) if self.config.warm_start else self.config.barycenter_updates
        structure, plans, updates = gw_barycenter(solver, idx, torch.from_numpy(start), None if stored is None else stored.select(idx),
                                                  max_updates=self.config.barycenter_updates, tol=self.config.barycenter_tol,
                                                  fresh_updates=fresh_updates)
        if stored is not None:
            stored.update(idx, plans)  # the members' plans are the best start for the next distances
        if fresh and self.config.warm_start and len(members) == 1:
            self.seed_plans[slot] = plans  # the start of every cloud's first solve against it
        return structure.numpy(), updates

    def forget(self, slot: int) -> None:
        self.plans[slot] = None
        self.seed_plans[slot] = None


class PotSolver:
    """POT one pair at a time (`entropic_gromov_wasserstein2`, `entropic_gromov_barycenters`)."""

    def __init__(self, clouds: GridClouds, config: GWConfig, subset: Optional[np.ndarray] = None) -> None:
        self.config = config
        self.structures = [tuple(t.numpy() for t in clouds.structure(i)) for i in range(len(clouds))]

    def distances(self, centre: np.ndarray, slot: int, epsilon: float) -> np.ndarray:
        import warnings

        import ot

        q = ot.unif(len(centre))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.array([ot.gromov.entropic_gromov_wasserstein2(c, centre, p, q, epsilon=epsilon) for c, p in self.structures])

    def barycenter(self, members: np.ndarray, start: np.ndarray, slot: int, epsilon: float, fresh: bool) -> tuple:
        import warnings

        import ot

        m = len(start)
        cs = [self.structures[i][0] for i in members]
        ps = [self.structures[i][1] for i in members]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure, log = ot.gromov.entropic_gromov_barycenters(
                m, cs, ps, ot.unif(m), [1.0 / len(cs)] * len(cs), epsilon=epsilon, init_C=start,
                max_iter=self.config.barycenter_updates, tol=self.config.barycenter_tol * np.linalg.norm(start), log=True)
        return structure, len(log["err"])

    def forget(self, slot: int) -> None:
        pass


def gw_kmeans(clouds: GridClouds, config: GWConfig = GWConfig(), truth=None, solver: str = "grid",
              progress: Optional[ProgressCallback] = None) -> GWResult:
    """k-means (k = 2) of the clouds with entropic GW distances and GW barycenters as centres.

    Seeding (k-means++): a random first seed; the second drawn with probability proportional
    to the GW distance to the first (GW is already a squared discrepancy); each seed's centre
    is the barycenter of that one cloud, started from a random structure. A cluster that
    empties is re-seeded the same way from the samples' distances to the other centre. It
    stops when an assignment repeats any earlier one: numerical ties can make a few samples
    swap back and forth forever, and a cycle will not end by itself.
    """
    if not isinstance(config, GWConfig):
        raise ConfigError("config must be a GWConfig")
    n = len(clouds)
    if n < 2:
        raise ConfigError(f"k-means needs at least 2 samples, got {n}")
    truth = None if truth is None else np.asarray(truth, dtype=bool)
    if truth is not None and truth.shape != (n,):
        raise ConfigError(f"truth must have one flag per sample ({n}), got shape {truth.shape}")
    backend = {"grid": GridSolver, "pot": PotSolver}.get(solver)
    if backend is None:
        raise ConfigError(f"solver must be 'grid' or 'pot', got {solver!r}")
    engine = backend(clouds, config)
    rng = np.random.default_rng(config.seed)
    m = config.barycenter_size
    started = time.perf_counter()
    steps = 2 + config.max_iter
    report(progress, "GW k-means", 0, steps, "seeding: first centre")

    def seed_centre(index: int, slot: int) -> np.ndarray:
        draw_seed = int(rng.integers(2**31))
        engine.forget(slot)
        if config.barycenter == "exact":
            return exact_barycenter(clouds, np.array([index]), m, draw_seed, config.barycenter_updates)[0]
        centre, _ = engine.barycenter(np.array([index]), random_structure(m, draw_seed).numpy(), slot, config.epsilon_init, fresh=True)
        return centre

    def draw(weights: np.ndarray) -> int:
        w = np.clip(np.nan_to_num(weights, nan=0.0), 0.0, None)
        return int(rng.choice(n, p=w / w.sum())) if w.sum() > 0 else int(rng.integers(n))

    seeds = [int(rng.integers(n))]
    centres = [seed_centre(seeds[0], 0), None]
    distances = np.zeros((n, 2))
    distances[:, 0] = engine.distances(centres[0], 0, config.epsilon_init)
    report(progress, "GW k-means", 1, steps, "seeding: second centre")
    seeds.append(draw(distances[:, 0] ** 2 if config.seeding == "squared" else distances[:, 0]))
    centres[1] = seed_centre(seeds[1], 1)
    distances[:, 1] = engine.distances(centres[1], 1, config.epsilon_init)
    assignments = distances.argmin(axis=1)
    iterations = [GWIteration(assignments, _counts(truth, assignments), round(time.perf_counter() - started, 3),
                              objective=_objective(distances, assignments))]
    report(progress, "GW k-means", 2, steps, "iteration 0", info=iterations[-1].counts or {})
    converged = False
    seen = {assignments.tobytes()}
    for it in range(1, config.max_iter + 1):
        tick = time.perf_counter()
        updates = []
        for k in (0, 1):
            members = np.flatnonzero(assignments == k)
            if len(members) == 0:  # re-seed from the samples farthest from the other centre
                index = draw(distances[:, 1 - k] ** 2 if config.seeding == "squared" else distances[:, 1 - k])
                seeds.append(index)
                centres[k] = seed_centre(index, k)
                updates.append(0)
            elif config.barycenter == "exact":
                centres[k], count = exact_barycenter(clouds, members, m, int(rng.integers(2**31)), config.barycenter_updates)
                updates.append(count)
            else:
                centres[k], count = engine.barycenter(members, centres[k], k, config.epsilon, fresh=False)
                updates.append(count)
        for k in (0, 1):
            distances[:, k] = engine.distances(centres[k], k, config.epsilon)
        new = distances.argmin(axis=1)
        iterations.append(GWIteration(new, _counts(truth, new), round(time.perf_counter() - tick, 3), updates, _objective(distances, new)))
        report(progress, "GW k-means", 2 + it, steps, f"iteration {it}", info=iterations[-1].counts or {})
        if new.tobytes() in seen:  # the assignment repeats (or cycles back to an earlier one)
            converged = True
            break
        seen.add(new.tobytes())
        assignments = new
    return GWResult(config, iterations, distances.copy(), np.stack(centres), seeds, round(time.perf_counter() - started, 3), converged)


def exact_barycenter(clouds: GridClouds, members: np.ndarray, size: int, seed: int, max_updates: int) -> tuple:
    """Exact (non-entropic) square-loss GW barycenter of the member clouds, uniform weights, from a
    random start: POT's `gromov_barycenters`, as the thesis's code called it, with at most
    `max_updates` structure updates. About 30 ms per member and update on a 550-point cloud."""
    import warnings

    import ot

    cs, ps = zip(*(tuple(t.numpy() for t in clouds.structure(int(i))) for i in members))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structure, log = ot.gromov.gromov_barycenters(size, list(cs), list(ps), ot.unif(size), [1.0 / len(cs)] * len(cs),
                                                      loss_fun="square_loss", max_iter=max_updates, tol=1e-9, log=True,
                                                      random_state=seed)
    return np.asarray(structure), len(log["err"])


@dataclass
class TruthCentres:
    """Nearest-centre assignment when the two centres are the barycenters of the true groups."""

    score: DetectionScore  # of flagging the samples nearer the poisoned group's centre
    objective_truth: float  # mean GW distance of each sample to its own group's centre
    objective_nearest: float  # the same to the nearer centre: k-means lowers this one
    seconds: float


def truth_centres(clouds: GridClouds, config: GWConfig, truth, refinements: int = 3) -> TruthCentres:
    """What any 2-centre GW k-means can reach on these clouds: the barycenters of the truly poisoned
    and the truly clean clouds (as k-means computes its centres, each refined `refinements` times),
    and every sample assigned to the nearer one. When this falls short of a target, no seeding or
    iteration count will reach it; when objective_nearest < objective_truth, k-means prefers a
    split other than the truth and drifts away from it as its objective falls. Always the batched
    solver's entropic, warm-started barycenters at `config.epsilon`, whatever `config.barycenter` says."""
    truth = np.asarray(truth, dtype=bool)
    if truth.shape != (len(clouds),) or truth.all() or not truth.any():
        raise ConfigError("truth must flag some but not all samples, one flag per cloud")
    engine = GridSolver(clouds, config)
    started = time.perf_counter()
    distances = np.zeros((len(truth), 2))
    for k, members in enumerate((np.flatnonzero(~truth), np.flatnonzero(truth))):
        centre, _ = engine.barycenter(members, random_structure(config.barycenter_size, config.seed + k).numpy(), k,
                                      config.epsilon, fresh=True)
        for _ in range(refinements):
            distances[:, k] = engine.distances(centre, k, config.epsilon)
            centre, _ = engine.barycenter(members, centre, k, config.epsilon, fresh=False)
        distances[:, k] = engine.distances(centre, k, config.epsilon)
    nearer = distances.argmin(axis=1)
    return TruthCentres(score_detection(truth, nearer == 1, distances[:, 0] - distances[:, 1]),
                        _objective(distances, truth.astype(int)), _objective(distances, nearer),
                        round(time.perf_counter() - started, 3))


def result_summary(result: GWResult, truth=None) -> Dict[str, object]:
    """The JSON the CLI prints and the page shows."""
    out = {"config": asdict(result.config), "seconds": result.seconds, "converged": result.converged, "seeds": result.seeds,
           "iterations": [{"iteration": i, "seconds": it.seconds, "barycenter_updates": it.barycenter_updates, **(it.counts or {}),
                           **({} if it.objective is None else {"objective": it.objective})}
                          for i, it in enumerate(result.iterations)],
           "cluster_sizes": np.bincount(result.assignments, minlength=2).tolist()}
    if truth is not None:
        out["score"] = result.score(truth).as_dict()
    return out


def mds_embedding(structure, seed: int = 0) -> np.ndarray:
    """A barycenter, which is only a distance matrix, drawn in the plane by metric MDS (thesis figure 5)."""
    from sklearn.manifold import MDS

    d = np.asarray(structure, dtype=float)
    if d.ndim != 2 or d.shape[0] != d.shape[1] or not np.isfinite(d).all():
        raise ConfigError("a barycenter structure must be a finite square matrix")
    d = np.clip((d + d.T) / 2, 0.0, None)
    np.fill_diagonal(d, 0.0)
    mds = MDS(n_components=2, metric="precomputed", metric_mds=True, n_init=4, init="random", random_state=seed)
    return mds.fit_transform(d)
