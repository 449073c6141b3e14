"""Every sub-command answers --help, and every bad command line is one error line.

The cases are generated from the parser (tests/cli_cases.py): a new sub-command or option is
covered without anyone adding it here. Each must end with exit code 2 (usage) or 1 (the run),
exactly one line `error: …` on stderr that quotes what was wrong, nothing on stdout, no
traceback, and the cache exactly as it was.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import cli_cases
from cli_cases import BEFORE_DATA, Case, Files, cache_listing, guarded, reach, run_cli, subcommands

from core.cli import build_parser


@pytest.fixture
def quiet_cli(monkeypatch):
    """No progress bars, and a defect escapes main() as the traceback it is, so that it is counted."""
    monkeypatch.setenv("POISONLAB_NO_PROGRESS", "1")
    monkeypatch.setenv("POISONLAB_TRACEBACK", "1")


def test_every_sub_command_answers_help(quiet_cli):
    commands = subcommands(build_parser())
    assert len(commands) >= 14
    for name in [None, *commands]:
        outcome = run_cli([name, "--help"] if name else ["--help"])
        assert outcome.escaped is None, outcome.escaped
        assert outcome.code == 0, (name, outcome.err)
        assert outcome.out.startswith("usage: python -m core") and outcome.err == "", (name, outcome.err)
        if name is None:
            listed = {line.split()[0] for line in outcome.out.splitlines() if line.startswith("    ") and line.split()}
            assert listed >= set(commands), outcome.out
            continue
        squeezed = "".join(outcome.out.split())
        for action in commands[name]._actions:  # every option is in the help, with its text
            assert action.help, (name, action.dest)
            assert "".join(action.help.replace("%%", "%").split()) in squeezed, (name, action.dest)
            assert all(flag in outcome.out for flag in action.option_strings), (name, action.option_strings)
    for name, command in commands.items():
        assert command.description, f"{name} --help has no description"


def test_every_free_text_option_has_bad_values():
    assert cli_cases.free_text_options() == sorted(cli_cases.TEXT_CASES)


def _problems(cases, cache: Path):
    before = cache_listing(cache)
    problems = [f"{case.label}: {case.argv}\n  {problem}" for case in cases if (problem := run_cli(case.argv).problem(case))]
    assert cache_listing(cache) == before, "the cache changed"
    return problems


def test_each_commands_base_is_accepted(tmp_path, tmp_cache, quiet_cli):
    """The control: without the bad value, each case's command line goes on to load the data (or
    finishes), so the refusals below come from the values under test."""
    files = Files(tmp_path / "files")
    with guarded(BEFORE_DATA):
        for command in subcommands(build_parser()):
            outcome = run_cli([command, *cli_cases.base_argv(command, files)])
            assert outcome.escaped is None, outcome.escaped
            assert outcome.reached or outcome.code == 0, (command, outcome.err)


def test_generated_bad_command_lines_are_refused_in_one_line(tmp_path, tmp_cache, quiet_cli):
    files = Files(tmp_path / "files")
    cases = cli_cases.parse_cases(files)
    assert len(cases) >= 1000
    assert {case.argv[0] for case in cases if case.argv} >= set(subcommands(build_parser()))
    with guarded(BEFORE_DATA):
        problems = _problems(cases, tmp_cache)
    assert not problems, f"{len(problems)} of {len(cases)} cases:\n" + "\n".join(problems[:40])


def _bad_data_folders(root: Path) -> dict:
    from trees import make_class_folder_tree, write_image

    folders = {"missing": root / "missing", "empty": root / "empty", "stray files": root / "stray"}
    folders["empty"].mkdir(parents=True)
    folders["stray files"].mkdir()
    (folders["stray files"] / "notes.txt").write_text("not GTSRB")
    (folders["stray files"] / "image.jpeg").write_bytes(b"\xff\xd8 not really a jpeg")
    tree = folders["a class missing"] = root / "a-class-missing"
    make_class_folder_tree(tree, per_class=1)
    for image in (tree / "Training" / "00007").iterdir():
        image.unlink()
    (tree / "Training" / "00007").rmdir()
    tree = folders["a corrupt image"] = root / "corrupt-image"
    make_class_folder_tree(tree, per_class=1)
    next((tree / "Validation" / "00003").iterdir()).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    tree = folders["no Testing"] = root / "no-testing"
    make_class_folder_tree(tree, per_class=1)
    for image in (tree / "Testing").rglob("*.png"):
        image.unlink()
    for folder in sorted((tree / "Testing").iterdir()):
        folder.rmdir()
    (tree / "Testing").rmdir()
    tree = folders["a wrong class folder"] = root / "wrong-class-folder"
    make_class_folder_tree(tree, per_class=1)
    write_image(tree / "Training" / "00099" / "0.png", (1, 2, 3))
    folders["a file"] = root / "a-file"
    folders["a file"].write_text("x")
    return folders


def test_bad_data_folders_are_refused_in_one_line(tmp_path, tmp_cache, quiet_cli, monkeypatch):
    """--gtsrb-dir and GTSRB_DIR that point nowhere, at a file, or at the wrong files: the data step
    refuses them (training is guarded, so a folder that slipped through shows)."""
    folders = _bad_data_folders(tmp_path / "data")
    guards = {"core.experiment.fit": reach("training"), "core.study.run_study": reach("run_study")}
    cases = []
    for label, folder in folders.items():
        for argv in (["data"], ["train", "--subset", "40"], ["study", "status", *cli_cases.STUDY_GRID]):
            cases.append(Case(f"--gtsrb-dir {label}: {argv[0]}", [*argv, "--gtsrb-dir", str(folder)]))
    problems = []
    with guarded(guards):
        problems += _problems(cases, tmp_cache)
        for label, folder in folders.items():  # the same through the environment
            monkeypatch.setenv("GTSRB_DIR", str(folder))
            problems += _problems([Case(f"GTSRB_DIR {label}", ["data"])], tmp_cache)
    assert len(cases) >= 24
    assert not problems, "\n".join(problems)


@pytest.fixture
def tiny_tree(tmp_path_factory) -> Path:
    """A generated 43-class tree with 3 images per class: loads and trains in about a second."""
    from trees import make_class_folder_tree

    root = tmp_path_factory.mktemp("tree") / "gtsrb"
    make_class_folder_tree(root, per_class=3)
    return root


NEEDS = {"cache": set(), "train": {"gtsrb", "model"}, "heatmaps": {"gtsrb", "model", "heatmaps"}}
"""The artifacts each command reads (a damaged one must be rebuilt); a measurement store it does not read may stay as it is."""
TINY = ["--subset", "129", "--epochs", "1", "--batch-size", "64", "--no-augment", "--fraction", "0.25"]


def _damages(content: bytes) -> dict:
    header = int.from_bytes(content[:8], "little")
    middle = min(8 + header + (len(content) - 8 - header) // 2, len(content) - 1)  # some artifacts hold no tensors
    flip = lambda at: content[:at] + bytes([content[at] ^ 0xFF]) + content[at + 1:]  # noqa: E731
    return {"empty": b"", "7 bytes": content[:7], "the header cut": content[: 8 + header // 2], "the tensors cut": content[:middle],
            "the last byte gone": content[:-1], "a byte flipped in the header": flip(8 + header // 2),
            "a byte flipped in the tensors": flip(middle), "a huge header length": (2**62).to_bytes(8, "little") + content[8:],
            "garbage": bytes(range(256)) * 8, "another artifact's bytes": None}


@pytest.mark.training
def test_damaged_cache_entries_are_rebuilt_or_refused(tiny_tree, tmp_cache, quiet_cli, monkeypatch):
    """Every artifact the commands below read, damaged each way: the command rebuilds it (exit 0
    and a readable artifact in its place) or refuses in one line, never a traceback, and leaves no
    partial file."""
    from core.cache import artifact_meta

    monkeypatch.setenv("GTSRB_DIR", str(tiny_tree))
    commands = [["train", *TINY], ["heatmaps", "--class", "5", *TINY]]
    for argv in commands:
        first = run_cli(argv)
        assert first.code == 0, first.err + (first.escaped or "")
    artifacts = sorted(p for p in tmp_cache.iterdir() if p.suffix == ".safetensors")
    kinds = {p.name.split("-")[0] for p in artifacts}
    assert {"gtsrb", "model", "heatmaps"} <= kinds, kinds
    originals = {p: p.read_bytes() for p in artifacts}
    cases = 0
    for path, content in originals.items():
        other = next(c for p, c in originals.items() if p != path)
        for label, damaged in _damages(content).items():
            for argv in [["cache", "list"], *commands]:
                path.write_bytes(other if damaged is None else damaged)
                outcome = run_cli(argv)
                cases += 1
                where = f"{path.name} with {label}, then {' '.join(argv[:2])}"
                assert outcome.escaped is None, f"{where}:\n{outcome.escaped}"
                if outcome.code == 0:
                    if path.name.split("-")[0] in NEEDS[argv[0]]:
                        assert artifact_meta(path), where  # read, found damaged and rebuilt whole
                else:
                    assert outcome.code in (1, 2) and len(outcome.err.strip().splitlines()) == 1, (where, outcome.err)
                assert not [p.name for p in tmp_cache.iterdir() if p.name.endswith(".tmp")], where
            path.write_bytes(content)
    assert cases >= 90


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_bad_values_that_need_the_data_are_refused_in_one_line(gtsrb, seeded_cache, quiet_cli, tmp_path):
    """Values only the data can refute: a test index past the test split, a sample larger than it, a
    source class too small for the poison fraction."""
    files = Files(tmp_path / "files")
    test_size = len(gtsrb.test)
    cases = [
        Case("inspect --test-index past the split", ["inspect", "--test-index", "0", str(test_size)], str(test_size)),
        Case("defend --images beyond the split", ["defend", "--images", str(test_size + 1), "--models", "poisoned"], str(test_size + 1)),
        Case("train source class 0 at pp 0.33", ["train", "--source", "0"], "180"),
        Case("detect source class 0 at pp 0.33", ["detect", "--source", "0"], "180"),
        Case("defend source class 0 at pp 0.33", ["defend", "--source", "0"], "180"),
        Case("export source class 0", ["export", "--source", "0", "--csv", files.output], "180"),
        Case("study status with a cell too small", ["study", "status", "--grid", "source=0,1"], None),
    ]
    guards = {"core.data.load_gtsrb": lambda *a, **k: gtsrb, "core.experiment.fit": reach("training"),
              "core.evasion.attack": reach("an attack"), "core.study.run_study": reach("run_study")}
    with guarded(guards):
        outcomes = {case.label: run_cli(case.argv) for case in cases}
    problems = {label: outcome.problem(case) for case, (label, outcome) in zip(cases, outcomes.items())}
    # a study lists a cell it cannot poison as failed rather than stopping: it is not refused
    study = outcomes.pop("study status with a cell too small")
    problems.pop("study status with a cell too small")
    assert study.escaped is None and study.code in (0, 1, 2), study.err
    assert not {k: v for k, v in problems.items() if v}, problems
