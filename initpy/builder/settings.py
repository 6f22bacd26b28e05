"""One row per command-line setting, from which the parser and the docs come.

Owned by the builder's commands (mkinitrd, pxe-layout), after mkosi's
`SETTINGS`: a setting is written once, as a `Setting` row, and the
argparse arguments, the defaults (initpy.builder.options.Options takes its
own from the rows) and the options table in docs/builder.md are all
derived from the rows (tests/unit/test_mkinitrd.py checks the docs).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from initpy import cli

# A setting's parsed value -> the fields it sets (when not just {dest: value}).
Fields = Callable[[Any], Mapping[str, object]]


@dataclass(frozen=True)
class Setting:
    """One option of a command.

    `dest` names the value (an Options field, unless `fields` maps the
    value to several, or `option` is False: a switch only the command reads).
    `default` is the value in the command's terms: a string is parsed with
    `parse`, as argparse parses what the user types.
    """

    flags: tuple[str, ...]  # ("-o", "--output"), or ("OUTDIR",) for a positional
    dest: str
    help: str
    metavar: str | None = None
    default: object = None
    required: bool = False
    repeatable: bool = False  # --include A --include B: a tuple of the values
    switch: bool = False  # present or not
    choices: tuple[str, ...] = ()
    parse: Callable[[str], object] | None = None  # argparse's type=; ValueError is a usage error
    fields: Fields | None = None
    exclusive: str | None = None  # settings with the same name exclude each other
    shown_default: str | None = None  # the docs' wording of a computed default
    option: bool = True

    @property
    def positional(self) -> bool:
        return not self.flags[0].startswith("-")

    def value_of(self, given: object) -> Mapping[str, object]:
        """The fields this setting sets from its parsed value."""
        if self.repeatable:
            given = tuple(cast(Iterable[object], given or ()))
        return self.fields(given) if self.fields else {self.dest: given}

    def default_value(self) -> Mapping[str, object]:
        default = self.default
        if isinstance(default, str) and self.parse is not None:
            default = self.parse(default)
        return self.value_of(default)


DEBUG = Setting(
    (cli.DEBUG_FLAG,),
    "debug",
    "on an error, show the traceback too",
    switch=True,
    option=False,
)


def default_of(settings: Sequence[Setting], name: str) -> Any:
    """The default of field `name`, from the row that sets it (for dataclass fields)."""
    for setting in settings:
        if setting.option:
            values = setting.default_value()
            if name in values:
                return values[name]
    raise KeyError(f"no setting sets {name!r}")


def parser(prog: str, description: str, settings: Sequence[Setting]) -> argparse.ArgumentParser:
    """A command's whole parser, from its table."""
    made = argparse.ArgumentParser(prog=prog, description=description)
    add_arguments(made, settings)
    return made


def add_arguments(parser: argparse.ArgumentParser, settings: Sequence[Setting]) -> None:
    groups: dict[str, argparse._MutuallyExclusiveGroup] = {}
    for setting in settings:
        target: argparse.ArgumentParser | argparse._MutuallyExclusiveGroup = parser
        if setting.exclusive:
            if setting.exclusive not in groups:
                groups[setting.exclusive] = parser.add_mutually_exclusive_group()
            target = groups[setting.exclusive]
        kwargs: dict[str, Any] = {"help": _help(setting)}
        if setting.switch:
            kwargs["action"] = "store_true"
        else:
            kwargs["metavar"] = setting.metavar
            kwargs["default"] = [] if setting.repeatable else setting.default
            if setting.repeatable:
                kwargs["action"] = "append"
            if setting.choices:
                kwargs["choices"] = setting.choices
            if setting.parse is not None:
                kwargs["type"] = _usage_error(setting.parse)
        if setting.positional:
            target.add_argument(setting.dest, **kwargs)
        else:
            target.add_argument(
                *setting.flags, dest=setting.dest, required=setting.required, **kwargs
            )


def _usage_error(parse: Callable[[str], object]) -> Callable[[str], object]:
    """A parser whose ValueError (or BuildError) argparse reports as a usage error."""

    def parse_argument(text: str) -> object:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse_argument.__name__ = getattr(parse, "__name__", "value")
    return parse_argument


def values(ns: argparse.Namespace, settings: Sequence[Setting]) -> dict[str, object]:
    """The fields of every option setting, as parsed from the command line."""
    found: dict[str, object] = {}
    for setting in settings:
        if setting.option:
            found.update(setting.value_of(getattr(ns, setting.dest)))
    return found


def _shown_default(setting: Setting) -> str:
    if setting.shown_default is not None:
        return setting.shown_default
    if setting.required or setting.positional:
        return "required"
    if setting.switch or setting.repeatable or setting.default is None:
        return ""
    return f"`{setting.default}`"


def _help(setting: Setting) -> str:
    shown = _shown_default(setting).replace("`", "")
    if shown and shown != "required":
        return f"{setting.help} (default: {shown})"
    return setting.help


def docs_table(settings: Sequence[Setting]) -> str:
    """The markdown table of the options, as docs/builder.md shows it."""
    rows = ["| option | default | meaning |", "| --- | --- | --- |"]
    for setting in settings:
        flags = (
            f"`{setting.metavar or setting.dest}`"
            if setting.positional
            else "`"
            + ", ".join(setting.flags)
            + ("" if setting.switch else f" {setting.metavar or setting.dest.upper()}")
            + "`"
        )
        if setting.repeatable:
            flags += " (repeatable)"
        cells = (flags, _shown_default(setting), setting.help)
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"
