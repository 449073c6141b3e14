"""Benchmark: the first t-SNE and UMAP of a class in a fresh process, as a server's first request
meets them, with and without compiling UMAP's kernels beforehand (`compile_umap_in_background`,
which the Spectral view starts when it opens).

    GTSRB_DIR=../shared/data/gtsrb python bench/embeddings.py [--class 5]

Needs the default experiment's heatmaps of the class (`python -m core heatmaps --class 5`).
Each measurement runs in its own Python process, so numba's in-memory compilations do not carry
over (its on-disk cache does, as on a user's machine after the first start). Prints the seconds
of each step and the ratio of the cold first UMAP fit to the first fit after the compile.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.options import OneLineParser, run_script, whole  # noqa: E402
from core.arithmetic import describe_machine  # noqa: E402

MEASURE = """
import json, sys, time
sys.path.insert(0, {root!r})
from core.detectors import heatmap_features
from core.experiment import ExperimentConfig
from core.heatmaps import experiment_heatmaps
from core.lrp import LRPConfig
from core.spectral import compile_umap_in_background, embed_2d
features = heatmap_features(experiment_heatmaps(ExperimentConfig(), {class_id}, LRPConfig()))
out = {{"samples": len(features)}}
if {compile_first}:
    start = time.perf_counter()
    compile_umap_in_background().join()
    out["compile"] = time.perf_counter() - start
start = time.perf_counter()
embed_2d(features, {method!r}, 0)
out["fit"] = time.perf_counter() - start
print(json.dumps(out))
"""


def fresh_process(method: str, class_id: int, compile_first: bool) -> dict:
    code = MEASURE.format(root=str(ROOT), class_id=class_id, method=method, compile_first=compile_first)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ)
    if done.returncode != 0:
        raise SystemExit(done.stderr.strip().splitlines()[-1])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = OneLineParser(prog=f"python bench/{Path(__file__).name}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--class", dest="class_id", type=whole(0, 42), default=5, help="the class whose heatmaps are embedded (default 5)")
    args = parser.parse_args()
    if not os.environ.get("GTSRB_DIR"):
        parser.error("GTSRB_DIR is not set: set it to the folder that holds GTSRB")
    print(f"machine: {describe_machine()}")
    tsne = fresh_process("tsne", args.class_id, False)
    cold = fresh_process("umap", args.class_id, False)
    warmed = fresh_process("umap", args.class_id, True)
    print(f"class {args.class_id}: {cold['samples']:,} samples, 1,024 features each (normalised heatmaps)")
    print(f"t-SNE, first fit in a fresh process:                  {tsne['fit']:6.1f} s")
    print(f"UMAP, first fit in a fresh process (reference):       {cold['fit']:6.1f} s")
    print(f"UMAP, compiling its kernels on a tiny set beforehand: {warmed['compile']:6.1f} s (in the background when the view opens)")
    print(f"UMAP, first fit after that:                           {warmed['fit']:6.1f} s")
    print(f"cold / compiled first fit: {cold['fit'] / warmed['fit']:.2f}")


if __name__ == "__main__":
    raise SystemExit(run_script(main))
