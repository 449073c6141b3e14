"""The layers: core computes and never imports streamlit; pages show and never import the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set:
    """Every module a file imports, at any depth (function-level imports included), as written."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add("." * node.level + node.module)
    return names


@pytest.mark.parametrize("path", sorted((ROOT / "core").glob("*.py")), ids=lambda p: p.name)
def test_core_never_imports_streamlit(path):
    assert not {name for name in imported_modules(path) if name.split(".")[0] == "streamlit"}


# The step layer: each of these turns an experiment and its parameters into a cached artifact.
STEPS = {"data", "experiment", "heatmaps", "detectors", "robustness", "cleanse"}
# What runs the steps or keeps their files: the store, jobs, the pipeline's status, export, studies and the command line.
RUNNERS = {"cache", "jobs", "pipeline", "export", "study", "cli", "commands", "download", "__main__", "__init__", "arithmetic", "durations"}
ALGORITHMS = sorted(path for path in (ROOT / "core").glob("*.py") if path.stem not in STEPS | RUNNERS)


@pytest.mark.parametrize("path", ALGORITHMS, ids=lambda p: p.name)
def test_algorithms_take_tensors_not_paths(path):
    """An algorithm module never reaches for the cache or for a step: its inputs are tensors and
    configurations, so a page, the command line and the export can only get its numbers through a step."""
    # core.data also defines the data set's constants and split type, which algorithms use
    forbidden = (STEPS - {"data"}) | {"cache", "jobs", "pipeline", "export", "cli", "commands"}
    upward = {name for name in imported_modules(path) if name.lstrip(".").split(".")[-1] in forbidden}
    assert not upward
    assert "cache_dir" not in path.read_text()


@pytest.mark.parametrize("path", [ROOT / "app.py", *sorted((ROOT / "pages").glob("*.py")), *sorted((ROOT / "ui").glob("*.py"))],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_pages_never_import_the_command_line(path):
    assert not {name for name in imported_modules(path) if name in ("core.cli", "cli")}


def test_pages_holds_only_the_scripts_app_registers():
    """Streamlit lists every file in `pages/` when it falls back to its classic multipage mode:
    helpers live in `ui/`, so that listing never offers one of them as a page."""
    registered = {node.args[0].value for node in ast.walk(ast.parse((ROOT / "app.py").read_text()))
                  if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "Page"
                  and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)}
    assert registered == {f"pages/{path.name}" for path in (ROOT / "pages").glob("*.py")}


def test_the_pages_command_lines_parse_back_into_the_same_experiment():
    from core.cli import build_parser, experiment_from_args
    from core.commands import train_command
    from core.experiment import ExperimentConfig, quick_experiment

    for config in (ExperimentConfig(), quick_experiment()):
        assert experiment_from_args(build_parser().parse_args(train_command(config).split()[3:])) == config
