"""The `python -m core` command lines that reproduce what a page shows.

Pages print them beside their numbers, so a user can rerun the same computation headless; they
live apart from the command-line parser so that the pages need not import it. Each spells out
every experiment option, and the tests parse them back into the same configuration.
"""

from __future__ import annotations

from typing import List, Optional

from .defense import DefenseConfig
from .params import command_options, experiment_options, params_of
from .evasion import ATTACKS


def train_command(config) -> str:
    """The `python -m core train` invocation that reproduces `config`'s numbers."""
    return " ".join(["python -m core train", *experiment_options(config)])


def _defense_flags(defense: DefenseConfig) -> List[str]:
    return command_options(defense, changed_only=True)


def inspect_command(experiment, model: str, source: str, attack_config, defense: DefenseConfig, sensitivity: Optional[str] = None) -> str:
    """The `python -m core inspect` invocation that reproduces the Defense page's numbers;
    `source` is "--test-index N …" or "--image FILE"."""
    parts = [train_command(experiment).replace("python -m core train", "python -m core inspect", 1), source, f"--model {model}",
             f"--attack {attack_config.name}", f"--eps {attack_config.budget!r}", f"--attack-seed {attack_config.seed}",
             *_defense_flags(defense)]
    if sensitivity:
        parts.append(f"--sensitivity {sensitivity}")
    return " ".join(parts)


def defend_command(experiment, model: str, robustness) -> str:
    """The `python -m core defend` invocation that reproduces the Defense page's table."""
    parts = [train_command(experiment).replace("python -m core train", "python -m core defend", 1), f"--models {model}",
             f"--images {robustness.images}", f"--eps-linf {robustness.eps_linf!r}", f"--eps-l2 {robustness.eps_l2!r}",
             f"--sample-seed {robustness.seed}", *_defense_flags(robustness.defense)]
    if tuple(robustness.attacks) != tuple(ATTACKS):
        parts.append("--attacks " + " ".join(robustness.attacks))
    return " ".join(parts)


def spatial_command(experiment, transforms) -> str:
    """The `python -m core spatial` invocation that reproduces the Defense page's spatial table
    (for the clean model, `experiment` is its clean twin)."""
    return " ".join([train_command(experiment).replace("python -m core train", "python -m core spatial", 1),
                     "--transforms", *(t.text for t in transforms)])


def cleanse_command(experiment, methods) -> str:
    """The `python -m core cleanse` invocation that reproduces a detection view's cleansing table."""
    return " ".join([train_command(experiment).replace("python -m core train", "python -m core cleanse", 1), "--method", *methods])


def _gw_relevance_options(lrp) -> list:
    """The relevance options of `detect`, which starts from GW's own default (core.presets.GW_RELEVANCE)."""
    from .lrp import LRPConfig
    from .presets import GW_RELEVANCE

    words = []
    for name, param, _ in params_of(LRPConfig):
        value = getattr(lrp, name)
        if value == getattr(GW_RELEVANCE, name):
            continue
        if name == "positive":  # the one switch; detect's --signed turns it off
            words.append("--positive" if value else "--signed")
        else:
            words.append(" ".join([param.flag, *param.kind.to_tokens(value)]))
    return words


def detect_command(experiment, class_id: int, lrp, gw) -> str:
    """The `python -m core detect --method gw` invocation that reproduces the GW page's numbers."""
    relevance = _gw_relevance_options(lrp)
    parts = [train_command(experiment).replace("python -m core train", f"python -m core detect --method gw --class {class_id}", 1),
             *relevance, *command_options(gw, changed_only=True)]
    if gw.epsilon_init != gw.epsilon:
        parts.append(f"--eps-init {gw.epsilon_init!r}")
    return " ".join(parts)


def export_command(experiment, class_id: int, virelay_classes=None, lrp=None) -> str:
    """The `python -m core export` invocation that writes the Export page's files."""
    parts = [train_command(experiment).replace("python -m core train", "python -m core export", 1), f"--class {class_id}",
             *(command_options(lrp, changed_only=True) if lrp is not None else []), "--csv detections.csv --json experiment.json"]
    if virelay_classes:
        parts.append("--virelay poisonlab-virelay --virelay-classes " + " ".join(str(c) for c in sorted(set(virelay_classes))))
    return " ".join(parts)
