"""Bad command lines generated from the parser itself, and an in-process runner for them.

Every sub-command and every option of `core.cli.build_parser()` is visited; what an option must
refuse follows from its type (a `core.options.Number` knows its range, a `PathOption` its role),
its choices and its nargs. The few options that take free text name their bad values in
`TEXT_CASES`, and a test fails when a new free-text option has none, so nothing is left out.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from core.options import DESTINATION, FOLDER, NEW_FOLDER, READ, WRITE, Number, PathOption

ROOT = Path(__file__).resolve().parent.parent
STUDIES = sorted((ROOT / "studies").glob("*.toml"))


@dataclass(frozen=True)
class Case:
    label: str
    argv: List[str]
    bad: Optional[str] = None
    """Text the one-line error must quote (the bad value, or the bad option)."""
    may_pass: bool = False
    """A damaged file that may still be valid (a study cut at a line end): going on is right too."""


class Reached(Exception):
    """Raised by a guard: the command got past its checks to real work, so it accepted the input."""


@dataclass
class Outcome:
    code: Optional[int]
    out: str
    err: str
    escaped: Optional[str] = None  # the traceback of an exception that escaped main()
    reached: Optional[str] = None  # the guarded step that was reached

    def problem(self, case: Case) -> Optional[str]:
        """Why this outcome is not a clean refusal, or None."""
        if self.escaped:
            return "traceback:\n" + self.escaped
        if case.may_pass and (self.reached or self.code == 0):
            return None
        if self.reached:
            return f"accepted: reached {self.reached}"
        if self.code not in (1, 2):
            return f"exit code {self.code}"
        lines = self.err.strip().splitlines()
        if len(lines) != 1 or not lines[0].startswith("error: "):
            return f"not one error line: {self.err!r}"
        if "Traceback" in self.err or self.out:
            return f"stray output: {self.out!r} {self.err!r}"
        if case.bad is not None and case.bad not in lines[0]:
            return f"the error does not quote {case.bad!r}: {lines[0]}"
        return None


def run_cli(argv: Sequence[str]) -> Outcome:
    """`python -m core ARGV` in this process; POISONLAB_TRACEBACK=1 lets a defect escape main()."""
    from core.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse: --help, usage errors
            code = exc.code
        except Reached as exc:
            return Outcome(None, out.getvalue(), err.getvalue(), reached=str(exc))
        except BaseException:  # noqa: BLE001 - what a user would see as a traceback
            return Outcome(None, out.getvalue(), err.getvalue(), escaped=traceback.format_exc())
    return Outcome(code, out.getvalue(), err.getvalue())


def subcommands(parser: argparse.ArgumentParser) -> Dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def options_of(sub: argparse.ArgumentParser) -> List[argparse.Action]:
    return [a for a in sub._actions if not isinstance(a, argparse._HelpAction)]


class Files:
    """The files and folders the path cases point at, made once in `folder`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.missing = str(folder / "no-such-file")
        self.in_missing_folder = str(folder / "no-such-folder" / "out.csv")
        self.empty = folder / "empty"
        self.empty.write_bytes(b"")
        self.garbage = folder / "garbage.png"
        self.garbage.write_bytes(bytes(range(256)) * 4)
        self.truncated_png = folder / "truncated.png"
        self.truncated_png.write_bytes(_png_bytes()[:60])
        self.full_folder = folder / "full"
        self.full_folder.mkdir(exist_ok=True)
        (self.full_folder / "something").write_text("x")
        self.empty_folder = folder / "empty-folder"
        self.empty_folder.mkdir(exist_ok=True)
        self.output = str(folder / "out.csv")

    def for_role(self, role: str) -> Dict[str, str]:
        """label -> path text that a `PathOption(role)` must refuse at parse time."""
        common = {"empty text": "", "blank text": "   "}
        if role == READ:
            return {**common, "missing file": self.missing, "a folder": str(self.folder)}
        if role == FOLDER:
            return {**common, "missing folder": self.missing, "a file": str(self.garbage)}
        if role == WRITE:
            return {**common, "in a missing folder": self.in_missing_folder, "a folder": str(self.folder)}
        if role == NEW_FOLDER:
            return {**common, "a file": str(self.garbage), "a folder that is not empty": str(self.full_folder)}
        if role == DESTINATION:
            return {**common, "a file": str(self.garbage)}
        raise AssertionError(role)


def _png_bytes() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


def number_values(kind: Number) -> Dict[str, str]:
    """label -> text that `kind` must refuse."""
    values = {"letters": "abc", "empty": "", "hex": "0x10", "nan": "nan", "words": "1 2"}
    if kind.whole:
        values.update({"fraction": "1.5", "exponent": "1e3", "huge": "9" * 30, "huge negative": "-" + "9" * 30, "infinity": "inf"})
    else:
        values.update({"inf": "inf", "-inf": "-inf", "overflow": "1e400", "-overflow": "-1e400", "comma": "1,5"})
    if kind.low is not None:
        below = kind.low - 1 if kind.whole else kind.low - max(1.0, abs(kind.low))
        values["below the range"] = str(int(below) if kind.whole else below)
        if kind.open_low:
            values["the open low end"] = repr(float(kind.low))
    if kind.high is not None:
        above = kind.high + 1 if kind.whole else kind.high * 10 + 1
        values["above the range"] = str(int(above) if kind.whole else above)
        if kind.open_high:
            values["the open high end"] = repr(float(kind.high))
    return {label: text for label, text in values.items() if _refuses(kind, text)}


def quoting(values: Dict[str, str]) -> Dict[str, Tuple[str, Optional[str]]]:
    """Each value with itself as what the error must quote (blank text cannot be seen in a message)."""
    return {label: (text, text if text.strip() else None) for label, text in values.items()}


def _refuses(kind: Number, text: str) -> bool:
    try:
        kind(text)
    except argparse.ArgumentTypeError:
        return True
    return False


# Free-text options: what each must refuse (the parser cannot say what text means), and what the
# error must quote of it.
TEXT_CASES: Dict[str, Dict[str, Tuple[str, Optional[str]]]] = {
    "--relevance-layer": {"unknown layer": ("no-such-layer", "no-such-layer"), "empty": ("", None)},
    "--transforms": {"unknown transformation": ("spin=3", "spin=3"), "scale out of range": ("scale=9", "scale=9"),
                     "rotate not a number": ("rotate=abc", "rotate=abc"), "shift with one number": ("shift=3", "shift=3"),
                     "empty": ("", None)},
    "--device": {"unknown device": ("gpu", "gpu"), "a GPU this machine lacks": ("cuda:7", "cuda:7"), "empty": ("", None)},
    "--method": {"unknown method": ("no-such-method", "no-such-method"), "empty": ("", None)},
    "--grid": {"no equals sign": ("pp", "pp"), "no values": ("pp=", "pp"), "unknown key": ("no-such-key=1,2", "no-such-key"),
               "bad value": ("pp=abc", "abc"), "out of range": ("pp=7", "7")},
    "--base": {"no equals sign": ("epochs", "epochs"), "unknown key": ("no-such-key=1", "no-such-key"),
               "bad value": ("epochs=abc", "abc"), "out of range": ("epochs=0", "0")},
    "--name": {"empty": ("", None), "blank": ("  ", None), "too long": ("n" * 300, "n" * 300)},
    "--address": {"no port": ("localhost", "localhost"), "port out of range": ("127.0.0.1:99999", "127.0.0.1:99999"),
                  "nobody listening": ("127.0.0.1:9", "127.0.0.1:9"), "empty": ("", None)},
    "names": {"not in the cache": ("no-such-artifact.safetensors", "no-such-artifact.safetensors"), "a path": ("../README.md", "../README.md")},
}


# The argv each command needs besides the option under test (argparse cannot say "one of these").
STUDY_GRID = ["--grid", "pp=0.1,0.2"]


def base_argv(command: str, files: Files, action: Optional[argparse.Action] = None) -> List[str]:
    if command == "export":
        return ["--csv", files.output]
    if command == "inspect":
        return [] if action is not None and action.dest in ("test_index", "image") else ["--test-index", "0"]
    if command == "download":
        return [] if action is not None and action.dest == "dest" else ["--dest", str(files.folder / "download")]
    if command == "cache":
        return ["delete"] if action is not None and action.dest == "names" else ["list"]
    if command == "study":
        if action is not None and action.dest == "file":
            return ["status"]
        if action is not None and action.dest == "address":
            return ["run", *STUDY_GRID]
        return ["status", *STUDY_GRID]
    return []


def _flag(action: argparse.Action) -> Optional[str]:
    return action.option_strings[0] if action.option_strings else None


def _valid_token(action: argparse.Action) -> str:
    if isinstance(action.type, Number):
        return next(text for text in ("0", "1", "2", "0.5", "5") if not _refuses(action.type, text))
    return str(list(action.choices)[0])


def value_cases(command: str, action: argparse.Action, files: Files) -> Iterator[Case]:
    """Each bad value of one option, placed where it would be read."""
    flag = _flag(action)
    base = base_argv(command, files, action)
    name = flag or action.dest

    def place(tokens: List[str]) -> List[str]:
        if flag:
            return [command, *base, flag, *tokens]
        if action.dest in ("action",):
            return [command, *tokens, *base[1:]]
        return [command, *base, *tokens]

    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        yield Case(f"{command} {flag}=1 (a switch takes no value)", [command, *base, f"{flag}=1"], flag)
        return
    bad: Dict[str, Tuple[str, Optional[str]]] = {}
    if isinstance(action.type, Number):
        bad = quoting(number_values(action.type))
    elif isinstance(action.type, PathOption):
        bad = quoting(files.for_role(action.type.role))
    elif action.choices:
        first = str(list(action.choices)[0])
        bad = quoting({"not a choice": "no-such-choice", "empty": "", "wrong case": first.upper() if first.upper() != first else first + "X"})
    elif name in TEXT_CASES:
        bad = TEXT_CASES[name]
    for label, (text, quoted) in bad.items():
        if action.nargs == 3:  # RGB: one bad component among good ones, and the wrong count
            yield Case(f"{command} {name} {label} as a component", place(["0", "0", text]), quoted)
        elif action.nargs in ("+", "*") and (action.choices or isinstance(action.type, Number)):
            yield Case(f"{command} {name} {label} after a good value", place([_valid_token(action), text]), quoted)
        elif flag and action.nargs is None and text.startswith("-"):  # "-inf" would be read as an option
            yield Case(f"{command} {name} {label}", [command, *base, f"{flag}={text}"], quoted)
        else:
            yield Case(f"{command} {name} {label}", place([text]), quoted)
    if flag and action.nargs not in (0, "?", "*"):
        yield Case(f"{command} {flag} without its value", [command, *base, flag], flag)
    if action.nargs == 3:
        yield Case(f"{command} {flag} with two values", [command, *base, flag, "1", "2"], flag)


def _ambiguous_prefix(sub: argparse.ArgumentParser) -> Optional[str]:
    flags = sorted(f for a in sub._actions for f in a.option_strings if f.startswith("--"))
    for flag in flags:
        for length in range(3, len(flag)):
            prefix = flag[:length]
            matches = [f for f in flags if f.startswith(prefix)]
            if len(matches) > 1 and prefix not in flags:
                return prefix
    return None


def command_cases(command: str, sub: argparse.ArgumentParser, files: Files) -> Iterator[Case]:
    """What any sub-command must refuse, whatever its options."""
    base = base_argv(command, files)
    yield Case(f"{command} unknown option", [command, *base, "--no-such-option"], "--no-such-option")
    yield Case(f"{command} unknown option with a value", [command, *base, "--no-such-option=3"], "--no-such-option=3")
    yield Case(f"{command} single-dash option", [command, *base, "-x"], "-x")
    positional = [a for a in options_of(sub) if not a.option_strings]
    if not any(a.nargs in ("*", "?") for a in positional):
        yield Case(f"{command} a stray word", [command, *base, "stray-word"], "stray-word")
    prefix = _ambiguous_prefix(sub)
    if prefix:
        yield Case(f"{command} ambiguous {prefix}", [command, *base, prefix, "1"], prefix)
    for action in options_of(sub):
        if action.required and action.option_strings:
            yield Case(f"{command} without the required {action.option_strings[0]}", [command], action.option_strings[0])


def study_file_cases(files: Files) -> Iterator[Case]:
    """Empty, truncated and corrupted copies of every study file the project ships."""
    folder = files.folder / "studies"
    folder.mkdir(exist_ok=True)
    cases = {"empty": b"", "binary": bytes(range(256)), "not toml": b"name = \n[grid\n", "a list": b"grid = [1, 2]\n",
             "grid not a table": b'name = "x"\ngrid = 3\n', "empty grid": b'name = "x"\n[grid]\n',
             "unknown entry": b'name = "x"\nfoo = 1\n[grid]\npp = [0.1]\n',
             "bad detector": b'name = "x"\ndetectors = ["nope"]\n[grid]\npp = [0.1]\n',
             "bad value": b'name = "x"\n[grid]\npp = ["abc"]\n', "out of range": b'name = "x"\n[grid]\nepochs = [0]\n',
             "unknown key": b'name = "x"\n[grid]\nno_such_key = [1]\n', "utf-16": '[grid]\npp = [0.1]\n'.encode("utf-16")}
    for study in STUDIES:
        text = study.read_bytes()
        for share in (0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 0.95):
            cut = int(len(text) * share)
            cases[f"{study.stem} truncated at {share:.0%}"] = text[:cut]
        for share in (0.2, 0.5, 0.8):
            at = int(len(text) * share)
            cases[f"{study.stem} with a NUL byte at {share:.0%}"] = text[:at] + b"\x00" + text[at + 1:]
            cases[f"{study.stem} with a bad byte at {share:.0%}"] = text[:at] + b"\xff\xfe" + text[at + 2:]
    for label, content in cases.items():
        path = folder / (label.replace(" ", "-").replace("%", "pc") + ".toml")
        path.write_bytes(content)
        for action in ("status", "table", "run"):
            yield Case(f"study {action} {label}", ["study", action, str(path)], None, may_pass="truncated" in label)


def image_cases(files: Files) -> Iterator[Case]:
    for label, path in {"empty image": files.empty, "garbage image": files.garbage, "truncated PNG": files.truncated_png}.items():
        yield Case(f"inspect --image {label}", ["inspect", "--image", str(path)], None)


def positional_cases() -> Iterator[Case]:
    """Words where a command takes none."""
    yield Case("cache list with a name", ["cache", "list", "stray-word"], "stray-word")
    yield Case("cache delete without a name", ["cache", "delete"], None)
    yield Case("study table with two files", ["study", "table", str(STUDIES[0]), str(STUDIES[0])], str(STUDIES[0]))
    yield Case("study without a file or a grid", ["study", "status"], None)
    yield Case("study with a file and a grid", ["study", "status", str(STUDIES[0]), *STUDY_GRID], None)


def top_level_cases() -> Iterator[Case]:
    yield Case("no command", [], None)
    yield Case("unknown command", ["trian"], "trian")
    yield Case("unknown option before the command", ["--no-such-option", "train"], "--no-such-option")


def parse_cases(files: Files) -> List[Case]:
    """Every case that must be refused before the data is loaded."""
    from core.cli import build_parser

    cases = list(top_level_cases())
    for command, sub in subcommands(build_parser()).items():
        cases += command_cases(command, sub, files)
        for action in options_of(sub):
            cases += value_cases(command, action, files)
    cases += study_file_cases(files)
    cases += image_cases(files)
    cases += positional_cases()
    return cases


def free_text_options() -> List[str]:
    """Options whose values the parser cannot check by type or choices (they need TEXT_CASES)."""
    from core.cli import build_parser

    names = set()
    for sub in subcommands(build_parser()).values():
        for action in options_of(sub):
            if action.nargs == 0 or action.choices or isinstance(action.type, (Number, PathOption)) or action.type is not None:
                continue
            names.add(_flag(action) or action.dest)
    return sorted(names)


@contextlib.contextmanager
def guarded(targets: Dict[str, Callable]):
    """Replace each `module.attribute` in `targets` by a function that raises Reached."""
    import importlib

    saved = []
    try:
        for dotted in targets:
            module_name, attribute = dotted.rsplit(".", 1)
            module = importlib.import_module(module_name)
            saved.append((module, attribute, getattr(module, attribute)))
            setattr(module, attribute, targets[dotted])
        yield
    finally:
        for module, attribute, original in reversed(saved):
            setattr(module, attribute, original)


def reach(name: str) -> Callable:
    def reached(*args, **kwargs):
        raise Reached(name)

    return reached


BEFORE_DATA = {"core.data.load_gtsrb": reach("load_gtsrb"), "core.download.download_official": reach("download_official"),
               "core.study.run_study": reach("run_study")}
"""The guards of the parse-time cases: loading the data (every computing command does that first),
downloading, and starting Ray."""


def cache_listing(folder: Path) -> List[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def with_env(**values: str):
    saved = {k: os.environ.get(k) for k in values}

    @contextlib.contextmanager
    def manager():
        os.environ.update(values)
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    return manager()
