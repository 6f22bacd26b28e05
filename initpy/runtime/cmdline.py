"""The kernel command line: /proc/cmdline to a frozen, typed `BootConfig`.

Tokenising follows the kernel's own rules (lib/cmdline.c `next_arg`):
parameters are separated by spaces; double quotes group spaces and are
removed; a word without `=` is a flag; for a repeated key the last one wins;
everything after a lone `--` belongs to init, not to parameters; dashes and
underscores in a name are the same.

Which parameters exist, and their types, come from the hooks' declarations
(`initpy.runtime.hook.Parameter`), so this module holds the mechanism and the core
parameters only. The parser never raises: every problem (an unknown
`buildos.*`/`initpy.*` name, a bad value, an unclosed quote) becomes a line
in `BootConfig.problems` that says what was expected.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from enum import Enum
from typing import Generic, TypeVar, cast

from initpy.runtime.record import field, frozen

T = TypeVar("T")
# A Parameter is frozen, its value only read: a Parameter[float] is a
# Parameter[object], so hooks can list parameters of different types.
T_co = TypeVar("T_co", covariant=True)

OWN_PREFIXES = ("buildos.", "initpy.")


class BadValue(ValueError):
    """A parameter's value does not parse; the text says what was expected."""


@frozen
class Parameter(Generic[T_co]):
    """One command-line parameter: its name, type, default and meaning."""

    name: str
    parse: Callable[[str | None], T_co]
    default: T_co
    help: str
    example: str = ""

    @property
    def key(self) -> str:
        return normalise(self.name)


@frozen
class BootConfig:
    """The parsed command line. Values are looked up by `Parameter`."""

    values: Mapping[str, object] = field(default_factory=dict)
    problems: tuple[str, ...] = ()
    raw: Mapping[str, str | None] = field(default_factory=dict)
    init_args: tuple[str, ...] = ()
    cmdline: str = ""

    def value(self, parameter: Parameter[T]) -> T:
        if parameter.key in self.values:
            return cast(T, self.values[parameter.key])
        return parameter.default

    def given(self, parameter: Parameter[object]) -> bool:
        return parameter.key in self.values

    def as_report(self) -> dict[str, object]:
        return {
            "cmdline": self.cmdline,
            "parameters": {k: _jsonable(v) for k, v in sorted(self.values.items())},
            "init_args": list(self.init_args),
            "warnings": list(self.problems),
        }


def _jsonable(value: object) -> object:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return str(value)


def normalise(name: str) -> str:
    return name.replace("-", "_")


def tokenize(cmdline: str) -> tuple[list[tuple[str, str | None]], list[str], list[str]]:
    """Split a command line as the kernel does.

    Returns the (key, value) pairs (value None for a flag), the words after
    `--`, and any problems (an unclosed quote). The words after `--` are
    what the kernel hands init as arguments (set_init_arg): the same
    quoting rules, quotes removed, `key=value` joined again.
    """
    problems: list[str] = []
    pairs: list[tuple[str, str | None]] = []
    after_dashes: list[str] | None = None
    text = cmdline.replace("\n", " ").replace("\t", " ")
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] == " ":
            i += 1
        if i >= n:
            break
        start, in_quote, equals = i, False, -1
        while i < n and (in_quote or text[i] != " "):
            if text[i] == '"':
                in_quote = not in_quote
            elif text[i] == "=" and equals < 0:
                equals = i
            i += 1
        word = text[start:i]
        if in_quote:
            problems.append(
                f"unclosed double quote in {word[:60]!r}: the value runs to the end of "
                "the command line; close the quote in the boot loader's append line"
            )
        if word == "--" and after_dashes is None:
            after_dashes = []
            continue
        key: str
        value: str | None
        if equals < 0:
            key, value = word.replace('"', ""), None
        else:
            key = word[: equals - start].replace('"', "")
            value = word[equals - start + 1 :]
            if value.startswith('"'):
                value = value[1:]
                if value.endswith('"'):
                    value = value[:-1]
            elif word.startswith('"') and value.endswith('"'):
                value = value[:-1]
        if after_dashes is not None:
            after_dashes.append(key if value is None else f"{key}={value}")
        else:
            pairs.append((key, value))
    return pairs, after_dashes or [], problems


def parse(cmdline: str, parameters: Iterable[Parameter[object]]) -> BootConfig:
    """Parse a command line against the declared parameters. Never raises."""
    table = {p.key: p for p in parameters}
    try:
        pairs, init_args, problems = tokenize(cmdline)
    except Exception as exc:  # pragma: no cover - tokenize is total
        return BootConfig(problems=(f"command line not parsed: {exc}",), cmdline=cmdline)
    raw: dict[str, str | None] = {}
    for key, value in pairs:
        raw[normalise(key)] = value  # the last one wins, as in the kernel
    values: dict[str, object] = {}
    for key, value in raw.items():
        if not key.startswith(OWN_PREFIXES):
            continue
        parameter = table.get(key)
        if parameter is None:
            if key.split("=")[0] in ("buildos.state", "buildos.machines"):
                hint = "these are disk labels, not parameters"
            else:
                hint = "known: " + ", ".join(sorted(p.name for p in table.values()))
            problems.append(f"unknown parameter {key!r} ignored ({hint})")
            continue
        try:
            values[key] = parameter.parse(value)
        except BadValue as exc:
            problems.append(
                f"{parameter.name}: {exc}; using the default {_describe(parameter.default)}"
            )
        except Exception as exc:  # a hook's parser must not break the boot
            problems.append(f"{parameter.name}: value {value!r} rejected ({exc})")
    return BootConfig(
        values=values,
        problems=tuple(problems),
        raw=raw,
        init_args=tuple(init_args),
        cmdline=cmdline.strip(),
    )


def _describe(value: object) -> str:
    if value is None:
        return "(none)"
    # A closed set's member reads as the word the command line takes ('shell').
    return repr(value.value if isinstance(value, Enum) else value)


# -- value parsers: each turns the raw text (None for a bare flag) into a value


def text(what: str, pattern: str | None = None) -> Callable[[str | None], str | None]:
    """A required non-empty string, optionally matching `pattern`.

    The pattern is compiled when a value is first checked (re's cache), not
    when a hook declares its parameter at import.
    """

    def parse_text(raw: str | None) -> str | None:
        if raw is None or raw == "":
            raise BadValue(f"expected {what}, got no value")
        if pattern and not re.fullmatch(pattern, raw):
            raise BadValue(f"expected {what}, got {raw!r}")
        return raw

    return parse_text


def url(*schemes: str) -> Callable[[str | None], str | None]:
    """A URL of one of `schemes` (any case), in visible ASCII only.

    Visible ASCII, not \\S, which would let ESC and other controls through.
    A caller names the schemes its reader speaks, so that a typo is a
    warning at boot, not a failure at the first fetch.
    """
    names = "|".join(re.escape(s) for s in schemes)
    return text(f"a URL ({', '.join(schemes)})", rf"(?i:{names})://[\x21-\x7e]*")


def flag(raw: str | None) -> bool:
    if raw is None:
        return True
    lowered = raw.lower()
    if lowered in ("1", "y", "yes", "true", "on"):
        return True
    if lowered in ("0", "n", "no", "false", "off"):
        return False
    raise BadValue(f"expected a flag (bare, or =1/=0), got {raw!r}")


def choice(*options: str) -> Callable[[str | None], str]:
    def parse_choice(raw: str | None) -> str:
        if raw not in options:
            raise BadValue(f"expected one of {'|'.join(options)}, got {raw!r}")
        return raw

    return parse_choice


def seconds(minimum: float = 0.0, maximum: float = 86400.0) -> Callable[[str | None], float]:
    def parse_seconds(raw: str | None) -> float:
        try:
            value = float(raw.removesuffix("s")) if raw is not None else None
        except ValueError:
            value = None
        if value is None or not (minimum <= value <= maximum) or value != value:
            raise BadValue(f"expected seconds between {minimum:g} and {maximum:g}, got {raw!r}")
        return value

    return parse_seconds


# A duration's units, in seconds: `90`, `90s`, `15m`, `1h`, `1d`.
DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(raw: str, minimum: float, maximum: float) -> float:
    """Seconds from `90`, `90s`, `15m`, `1.5h` or `1d`, between the bounds (else BadValue)."""
    number = raw.rstrip("smhd")
    unit = raw[len(number) :]
    try:
        value = float(number) * DURATION_UNITS[unit] if number.strip() == number else None
    except (ValueError, KeyError):
        value = None
    if value is None or not (minimum <= value <= maximum):
        raise BadValue(
            f"expected a duration from {spoken(minimum)} to {spoken(maximum)}, as 90s, 15m, "
            f"1h or 1d, got {raw!r}"
        )
    return value


def spoken(seconds: float) -> str:
    """A duration for the console: `20 s`, `15 min`, `1.5 h`, `2 d`."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and (seconds % size == 0 or unit != "d"):
            return f"{round(seconds / size, 2):g} {unit}"
    return f"{round(seconds, 2):g} s"


def absolute_path(raw: str | None) -> str:
    if raw is None or not raw.startswith("/") or "\0" in raw:
        raise BadValue(f"expected an absolute path, got {raw!r}")
    return raw


def words(what: str) -> Callable[[str | None], tuple[str, ...]]:
    """A comma-separated list."""

    def parse_words(raw: str | None) -> tuple[str, ...]:
        if not raw:
            raise BadValue(f"expected {what} separated by commas, got no value")
        return tuple(w for w in raw.split(",") if w)

    return parse_words
