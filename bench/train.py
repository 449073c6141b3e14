"""Benchmark: train the default poisoned model to its early-stopping point and compare the
time per epoch with a plain PyTorch training loop on the same data, measured in the same run.

    GTSRB_DIR=../shared/data/gtsrb python bench/train.py [--reference-batches N]

The reference is the textbook loop: a Dataset whose __getitem__ returns one float image and
its label, a DataLoader with batch size 128 and shuffling, the same network, Adam at 1e-3,
default torch thread settings. Our epoch includes its validation pass and augmentation; the
reference epoch is training only, so the ratio does not flatter our loop.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.options import OneLineParser, run_script, whole  # noqa: E402
from core.arithmetic import describe_machine  # noqa: E402
from core.data import load_gtsrb  # noqa: E402
from core.experiment import ExperimentConfig, poisoned_data, train_or_load  # noqa: E402
from core.models import build_model  # noqa: E402

REFERENCE_BATCH = 128
REFERENCE_LR = 1e-3


class PlainDataset(Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i].float() / 255, self.labels[i]


def time_reference_epoch(images: torch.Tensor, labels: torch.Tensor, architecture: str, batches: int) -> tuple:
    """Seconds for one epoch of the plain loop (extrapolated from `batches` batches if > 0)."""
    torch.manual_seed(0)
    model = build_model(architecture)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=REFERENCE_LR)
    loader = DataLoader(PlainDataset(images, labels), batch_size=REFERENCE_BATCH, shuffle=True)
    total = len(loader)
    limit = total if batches <= 0 else min(batches, total)
    done = 0
    started = time.perf_counter()
    for x, y in loader:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        done += 1
        if done == limit:
            break
    seconds = time.perf_counter() - started
    return seconds * total / done, done, total


def warm_up(architecture: str) -> None:
    """A few throwaway steps at both batch sizes, so that neither timing pays for the
    first-call costs of the CPU kernels (a few seconds, which would favour whichever runs second)."""
    torch.manual_seed(0)
    model = build_model(architecture)
    optimizer = torch.optim.Adam(model.parameters())
    for batch in (REFERENCE_BATCH, 256) * 3:
        loss = F.cross_entropy(model(torch.rand(batch, 3, 32, 32)), torch.randint(0, 43, (batch,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def main(argv=None) -> int:
    parser = OneLineParser(prog=f"python bench/{Path(__file__).name}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference-batches", type=whole(0, 100_000), default=0, metavar="N",
                        help="time only N batches of the plain loop and extrapolate to a full epoch (default: a full epoch)")
    args = parser.parse_args(argv)
    print(describe_machine())

    data = load_gtsrb()  # run_script makes a missing data folder one line
    config = ExperimentConfig()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f} at start")

    warm_up(config.train.architecture)

    # Epoch ends are reported through the progress callback; the last one marks the end of
    # training proper, before the final evaluation on the test set.
    epoch_ends = []

    def on_progress(event) -> None:
        if event.task == "train" and "validation loss" in event.message:
            epoch_ends.append(time.perf_counter())

    started = time.perf_counter()
    trained = train_or_load(config, data, progress=on_progress, use_cache=False)
    wall = time.perf_counter() - started
    m = trained.metrics
    ours_per_epoch = (epoch_ends[-1] - started) / m["epochs"]

    print(f"data: {m['n_train']:,} training images ({m['n_poisoned']} poisoned), "
          f"{len(data.val):,} validation, {len(data.test):,} test")
    print(f"ours: {m['epochs']} epochs (best {m['best_epoch']}), wall time {wall:.1f} s, "
          f"{ours_per_epoch:.2f} s per epoch (training with augmentation + validation pass)")
    print(f"clean accuracy: {m['clean_accuracy']:.4f}")
    print(f"attack success rate: {m['attack_success_rate']:.4f}")

    train = poisoned_data(data, config).train
    reference, done, total = time_reference_epoch(train.images, train.labels, config.train.architecture, args.reference_batches)
    how = "a full epoch" if done == total else f"{done} of {total} batches, extrapolated"
    print(f"plain loop: {reference:.2f} s per epoch ({how}; batch {REFERENCE_BATCH}, Adam lr {REFERENCE_LR:g})")
    print(f"epoch time ratio (plain loop / ours): {reference / ours_per_epoch:.2f}")
    print("arithmetic paths: training and inference run in float32 only (no bfloat16 kernel is used, whatever "
          "POISONLAB_ARITHMETIC says), so these figures are those of the float32 path on this CPU")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_script(main))
