"""Benchmark: the time of one training epoch under the thesis's recipe against the default recipe,
on the default experiment's poisoned training images, measured in the same run.

    GTSRB_DIR=../shared/data/gtsrb python bench/recipes.py [--architecture thesis_net] [--batches 60]

Each recipe runs `--batches` training steps (augmentation, forward, backward, Adam) at its own
batch size; the epoch time is the time per image times the training split. The augmentation's
share is measured separately on the same batches. The thesis's recipe then needs at least 21
epochs (patience 20), the default 10.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.arithmetic import describe_machine  # noqa: E402
from core.options import OneLineParser, run_script, whole  # noqa: E402
from core.data import load_gtsrb  # noqa: E402
from core.experiment import ExperimentConfig, poisoned_data  # noqa: E402
from core.models import ARCHITECTURES, build_model  # noqa: E402
from core.recipes import RECIPES  # noqa: E402
from core.train import Augmenter, TrainConfig  # noqa: E402


def seconds_per_image(architecture: str, train: TrainConfig, images: torch.Tensor, labels: torch.Tensor, batches: int):
    torch.manual_seed(0)
    model = build_model(architecture)
    layout = torch.channels_last if getattr(model, "channels_last", False) else torch.contiguous_format
    model.to(memory_format=layout).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=train.learning_rate)
    augmenter = Augmenter(train.augmentation, torch.Generator().manual_seed(0))
    size = train.batch_size
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    picks = [order[(i * size) % (len(images) - size):][:size] for i in range(batches + 3)]
    step_time = augment_time = 0.0
    for i, index in enumerate(picks):
        batch, target = images[index], labels[index]
        started = time.perf_counter()
        batch = augmenter(batch).contiguous(memory_format=layout)
        augmented = time.perf_counter()
        loss = F.cross_entropy(model(batch), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= 3:  # warm-up steps are not counted
            step_time += time.perf_counter() - started
            augment_time += augmented - started
    return step_time / (batches * size), augment_time / (batches * size)


def main(argv=None) -> int:
    parser = OneLineParser(prog=f"python bench/{Path(__file__).name}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--architecture", choices=tuple(ARCHITECTURES), default="thesis_net")
    parser.add_argument("--batches", type=whole(1, 100_000), default=60, help="timed training steps per recipe (default 60)")
    args = parser.parse_args(argv)
    data = load_gtsrb()  # run_script makes a missing data folder one line
    print(describe_machine())
    train = poisoned_data(data, ExperimentConfig()).train
    images, labels = train.images.float().div_(255.0), train.labels
    results = {}
    for name, recipe in RECIPES.items():
        config = recipe.apply(TrainConfig(architecture=args.architecture))
        per_image, augment = seconds_per_image(args.architecture, config, images, labels, args.batches)
        epoch = per_image * len(images)
        least = config.patience + 1 if config.schedule == "constant" else config.max_epochs
        results[name] = epoch
        print(f"{name:8s} batch {config.batch_size:4d}: {epoch:7.1f} s an epoch of {len(images):,} images "
              f"(augmentation {100 * augment / per_image:4.1f} %), at least {least} epochs: {least * epoch / 60:6.1f} min")
    print(f"thesis / default, one epoch: {results['thesis'] / results['default']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_script(main))
