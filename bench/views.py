"""Benchmark: the server time of each interaction an analyst makes while tuning by hand, on the
default experiment (its model and class-5 heatmaps must be cached: `python -m core heatmaps`).

    GTSRB_DIR=../shared/data/gtsrb python bench/views.py [--repeats N] [--only PAGE ...]

Each page runs in Streamlit's AppTest, which executes the page script as the server would (no
browser), so the time of `run()` is the server time of one interaction. An interaction is a
change of one widget; it is timed from the second time onwards (warm: the page's caches filled
by the first), the median of N back-and-forth changes. The reference is a plain rerun of the same
page with nothing changed, measured in the same run: the ratio says how much of an interaction is
the page's fixed cost. The target is 1 s per warm interaction on a 2-core AVX2 CPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streamlit.testing.v1 import AppTest  # noqa: E402

from core.arithmetic import describe_machine  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TARGET_SECONDS = 1.0


def open_page(page: str, query: Dict[str, str]) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=900)
    for key, value in query.items():
        at.query_params[key] = value
    at.switch_page(page)
    at.run()
    if at.exception:
        raise SystemExit(f"{page}: {at.exception[0].message}")
    return at


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def widget(at: AppTest, key: str):
    for kind in ("slider", "select_slider", "selectbox", "radio", "number_input", "checkbox", "toggle"):
        try:
            return getattr(at, kind)(key=key)
        except KeyError:
            continue
    raise SystemExit(f"no widget with key {key!r} on this page")


def interaction(at: AppTest, key: str, values: Tuple, repeats: int) -> Tuple[float, float]:
    """(first change, median of the warm changes) in seconds, alternating between `values`."""
    first = timed(lambda: widget(at, key).set_value(values[1]).run())
    warm = []
    for i in range(repeats):
        value = values[i % 2]
        warm.append(timed(lambda: widget(at, key).set_value(value).run()))
        if at.exception:
            raise SystemExit(f"{key}: {at.exception[0].message}")
    return first, statistics.median(warm)


# page → interactions: (label, widget key, (back, forth) values)
INTERACTIONS: Dict[str, List[Tuple[str, str, Tuple]]] = {
    "pages/heatmaps.py": [
        ("threshold t (left)", "hm_t1", (0.99, 0.90)),
        ("threshold t (right)", "hm_t2", (0.5, 0.4)),
        ("sample", "hm_position", (1, 2)),
        ("filter", "hm_filter", ("all", "poisoned")),
        ("sort", "hm_sort", ("lowest first", "highest first")),
    ],
    "pages/spectral.py": [
        ("colour", "sp_colour", ("cluster", "ground truth")),
        ("number of clusters", "sp_clusters", (2, 3)),
        ("neighbours k", "sp_k", (10, 11)),
        ("embedding: t-SNE", "sp_embedding", ("spectral", "tsne")),
        ("embedding: UMAP", "sp_embedding", ("spectral", "umap")),
    ],
    "pages/detect.py": [
        ("mass threshold t", "gw_threshold", (0.99, 0.95)),
    ],
    "pages/defense.py": [
        ("attack", "df_attack", ("fgsm", "pgd-linf")),
        ("budget", "df_eps_linf", (8.0, 4.0)),
        ("marginals", "df_marginals", ("B6", "B4")),
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=4, help="warm changes per interaction (default 4)")
    parser.add_argument("--only", nargs="*", default=None, help="page names, e.g. heatmaps spectral")
    args = parser.parse_args()
    if not os.environ.get("GTSRB_DIR"):
        raise SystemExit("set GTSRB_DIR to the GTSRB folder")
    print(f"machine: {describe_machine()}")
    print(f"{'page':10s} {'interaction':22s} {'first s':>8s} {'warm s':>8s} {'rerun s':>8s} {'warm/rerun':>10s} {'≤ 1 s':>6s}")
    for page, items in INTERACTIONS.items():
        name = Path(page).stem
        if args.only and name not in args.only:
            continue
        at = open_page(page, {})
        rerun = statistics.median(timed(at.run) for _ in range(args.repeats))
        for label, key, values in items:
            first, warm = interaction(at, key, values, args.repeats)
            ok = "yes" if warm <= TARGET_SECONDS else "no"
            print(f"{name:10s} {label:22s} {first:8.2f} {warm:8.2f} {rerun:8.2f} {warm / rerun:10.1f} {ok:>6s}", flush=True)
            widget(at, key).set_value(values[0]).run()


if __name__ == "__main__":
    main()
