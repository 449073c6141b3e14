"""Each experiment parameter declared once, beside its field, and everything generated from it.

A field of `PoisonConfig` or `TrainConfig` is declared with `parameter(default, ...)`: its kind
(how it is written as text), its command-line flag, its key in a link, its label and help, its
valid range, and how the Poison page's form shows it. From those declarations come the
`python -m core` options and their parsing, the link's round trip, the command lines the pages
print and the Home page's table, so a new parameter is one new field and nothing else.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from . import options as options_module
from .errors import ConfigError
from .validation import one_of, real_number, true_or_false, whole_number


@dataclass(frozen=True)
class Kind:
    """How values of one type are written in links, on the command line and in tables."""

    name: str
    to_text: Callable[[Any], str]
    from_text: Callable[[str], Any]
    to_tokens: Callable[[Any], List[str]]
    """The command-line words after the flag."""
    show: Callable[[Any], str]


def _hex_colour(text: str) -> Tuple[int, int, int]:
    digits = text.lstrip("#")
    if len(digits) != 6:
        raise ValueError(f"colour {text!r} is not six hex digits")
    return tuple(int(digits[i : i + 2], 16) for i in (0, 2, 4))


def _window(text: str) -> Tuple[int, int]:
    first, _, last = text.partition("-")
    return (int(first), int(last))


def window_option(text: str) -> Tuple[int, int]:
    """A FIRST-LAST pair from the command line (commas and spaces work too), each in 0 … 31."""
    parts = text.replace(",", " ").replace("-", " ").split()
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected two numbers like 16-17, got {text!r}")
    try:
        pair = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two whole numbers like 16-17, got {text!r}") from None
    if any(not 0 <= v < WINDOW_LIMIT for v in pair) or text.strip().startswith("-"):
        raise argparse.ArgumentTypeError(f"{text!r} is out of range: both numbers must be in 0 … {WINDOW_LIMIT - 1}")
    return pair


WINDOW_LIMIT = 32
"""Sticker windows are pixel positions of the 32-pixel image."""


WHOLE = Kind("whole", str, int, lambda v: [str(v)], str)
REAL = Kind("real", repr, float, lambda v: [repr(v)], lambda v: f"{v:g}")
NAME = Kind("name", str, str, lambda v: [str(v)], str)
COLOUR = Kind("colour", lambda v: "%02x%02x%02x" % tuple(v), _hex_colour, lambda v: [str(c) for c in v],
              lambda v: "#%02x%02x%02x = (%d, %d, %d)" % (*v, *v))
WINDOW = Kind("window", lambda v: f"{v[0]}-{v[1]}", _window, lambda v: [f"{v[0]}-{v[1]}"], lambda v: f"{v[0]}–{v[1]}")
def _switch(text: str) -> bool:
    if text not in ("0", "1"):
        raise ValueError("it is not 1 (yes) or 0 (no)")
    return text == "1"


SWITCH = Kind("switch", lambda v: "1" if v else "0", _switch, lambda v: [], lambda v: "yes" if v else "no")
"""A true/false parameter whose flag turns it off (`--no-augment`): the flag appears when it is false."""


@dataclass(frozen=True)
class Param:
    """One experiment parameter as the world outside its dataclass sees it."""

    kind: Kind
    flag: str
    label: str
    help: str
    key: Optional[str] = None
    """Its key in a link (experiment parameters; a view's own fields are declared by the page)."""
    choices: Tuple[Any, ...] = ()
    low: Optional[float] = None
    high: Optional[float] = None
    open_low: bool = False
    open_high: bool = False
    widget: Optional[Tuple[Any, ...]] = None
    """How the Poison page's form shows it: ("class",), ("slider", low, high, step), ("number", low, high),
    ("options", values), ("checkbox",), ("colour",), ("window", low, high); None keeps it off the form."""

    def check(self, name: str, value: Any) -> Any:
        """The generic check for this kind and range (fields with their own messages check themselves)."""
        if self.kind is WHOLE:
            return whole_number(name, value, self.low, self.high)
        if self.kind is REAL:
            return real_number(name, value, self.low, self.high, open_low=self.open_low, open_high=self.open_high)
        if self.kind is SWITCH:
            return true_or_false(name, value)
        if self.choices:
            return one_of(name, value, self.choices)
        return value

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


def parameter(default: Any, kind: Kind, flag: str, label: str, help: str, **spec: Any) -> Any:
    """A dataclass field that carries its `Param`."""
    return dataclasses.field(default=default, metadata={"param": Param(kind, flag, label, help, **spec)})


def params_of(config_type: type) -> Iterator[Tuple[str, Param, Any]]:
    """(field name, Param, default) of every declared field, in declaration order."""
    for item in dataclasses.fields(config_type):
        if "param" in item.metadata:
            yield item.name, item.metadata["param"], item.default


def check_declared(config: Any) -> None:
    """Check and normalise every declared field of a frozen config by its Param."""
    for name, param, _ in params_of(type(config)):
        object.__setattr__(config, name, param.check(name, getattr(config, name)))


def _sections(experiment_type: type) -> Iterator[Tuple[str, type]]:
    for item in dataclasses.fields(experiment_type):
        yield item.name, item.default_factory


def experiment_params(experiment_type: type) -> Iterator[Tuple[str, str, Param, Any]]:
    """(section, field, Param, default) of every experiment parameter."""
    for section, config_type in _sections(experiment_type):
        for name, param, default in params_of(config_type):
            yield section, name, param, default


# --- the link ----------------------------------------------------------------------------------


def to_query(experiment: Any) -> Dict[str, str]:
    return {param.key: param.kind.to_text(getattr(getattr(experiment, section), name))
            for section, name, param, _ in experiment_params(type(experiment))}


def from_query(experiment_type: type, query: Mapping[str, str]) -> Any:
    """Parse `to_query`'s output; absent keys take defaults, malformed ones raise ConfigError."""
    values: Dict[str, Dict[str, Any]] = {section: {} for section, _ in _sections(experiment_type)}
    for section, name, param, _ in experiment_params(experiment_type):
        if param.key in query:
            text = str(query[param.key])
            try:
                values[section][name] = param.kind.from_text(text)
            except ValueError as exc:
                shown = repr(text if len(text) <= 30 else text[:30] + "…")
                plain = str(exc) if "invalid literal" not in str(exc) and "could not convert" not in str(exc) else (
                    "it is not a whole number" if param.kind is WHOLE else "it is not a number")
                raise ConfigError(f"{param.key} = {shown} ({param.label}): {plain}") from None
    return experiment_type(**{section: config_type(**values[section]) for section, config_type in _sections(experiment_type)})


# --- the command line ---------------------------------------------------------------------------


def add_options(parser: Any, config_type: type) -> None:
    """One option per declared field of `config_type`, documented with its default."""
    for _, param, default in params_of(config_type):
        if param.kind is SWITCH:
            parser.add_argument(param.flag, action="store_true", help=param.help.replace("%", "%%"))
            continue
        shown = param.kind.show(default) if param.kind is REAL else " ".join(param.kind.to_tokens(default))
        help_text = f"{param.help} (default {shown})".replace("%", "%%")  # argparse formats help with %
        options: Dict[str, Any] = {"help": help_text, "default": default}
        if param.kind is COLOUR:
            options.update(type=options_module.whole(0, 255), nargs=3, metavar=("R", "G", "B"))
        elif param.kind is WINDOW:
            options.update(type=window_option, metavar="FIRST-LAST")
        elif param.kind is WHOLE:
            options.update(type=options_module.whole(param.low, param.high))
        elif param.kind is REAL:
            options.update(type=options_module.real(param.low, param.high, open_low=param.open_low, open_high=param.open_high))
        if param.choices:
            options.update(choices=param.choices)
        parser.add_argument(param.flag, **options)


def config_from_args(config_type: type, args: argparse.Namespace, **undeclared: Any) -> Any:
    """The config the options of `add_options` describe; `undeclared` sets the fields they leave out."""
    values = dict(undeclared)
    for name, param, default in params_of(config_type):
        value = getattr(args, param.dest)  # a switch's flag turns its default around
        values[name] = ((not default) if value else default) if param.kind is SWITCH else tuple(value) if isinstance(value, list) else value
    return config_type(**values)


def command_options(config: Any, changed_only: bool = False) -> List[str]:
    """The options that set `config`'s declared fields (or those that differ from the defaults)."""
    words = []
    for name, param, default in params_of(type(config)):
        value = getattr(config, name)
        if changed_only and value == default:
            continue
        if param.kind is SWITCH:
            words += [] if value == default else [param.flag]
        else:
            words.append(" ".join([param.flag, *param.kind.to_tokens(value)]))
    return words


def add_experiment_options(parser: argparse.ArgumentParser, experiment_type: type, titles: Mapping[str, str]) -> None:
    for section, config_type in _sections(experiment_type):
        add_options(parser.add_argument_group(titles.get(section, section)), config_type)


def experiment_from_args(experiment_type: type, args: argparse.Namespace) -> Any:
    return experiment_type(**{section: config_from_args(config_type, args) for section, config_type in _sections(experiment_type)})


def experiment_options(experiment: Any) -> List[str]:
    """The options that set every parameter of `experiment`, as `add_experiment_options` reads them."""
    return [word for section, _ in _sections(type(experiment)) for word in command_options(getattr(experiment, section))]


# --- tables -------------------------------------------------------------------------------------


def parameter_rows(experiment: Any) -> List[Dict[str, str]]:
    """(label, value as text) of every parameter, for a table whose columns hold one type each."""
    return [{"parameter": param.label, "value": param.kind.show(getattr(getattr(experiment, section), name))}
            for section, name, param, _ in experiment_params(type(experiment))]


def widget_params(config_type: type) -> Sequence[Tuple[str, Param]]:
    """The fields the Poison page's form shows, in declaration order."""
    return [(name, param) for name, param, _ in params_of(config_type) if param.widget is not None]


