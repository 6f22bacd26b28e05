"""Records for PID 1: what `dataclasses` gives the boot, at a fraction of its cost.

A `@dataclass` writes the source of `__init__`, `__repr__`, `__eq__` (and
`__hash__`, `__setattr__` for a frozen one) per class and compiles it with
exec(); about 0.6 ms a class natively, so about 20 ms for the 33 records
of the boot, and 15 times that under TCG before the first state
(docs/testing.md, "Python's own work on the boot path"). Here the methods
are shared functions that read the class's field table: the 33 records
cost 0.55 ms together, and an instance one loop over its fields (about
as fast as a dataclass's).

`@frozen` and `@mutable` are marked with `typing.dataclass_transform`
(PEP 681): mypy checks constructors, defaults and frozen-ness as for a
dataclass. What they keep of dataclasses, and what the code relies on:
fields in annotation order (bases' first), defaults and
`field(default_factory=...)`, `field(compare=False, repr=False)`,
`__post_init__`, equality by type and fields, hashing of frozen records
(mutable ones are unhashable), `FrozenInstanceError` (an AttributeError)
on assignment to a frozen one, `replace()` and `as_dict()`. Not kept:
ClassVar/InitVar, init=False, kw_only, order, slots, `__signature__`.

Nothing is imported at run time: `typing` only for the type checker.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar, dataclass_transform

    C = TypeVar("C", bound=type)
    R = TypeVar("R")
else:

    def dataclass_transform(**_kwargs: object) -> object:
        return lambda decorated: decorated


class FrozenInstanceError(AttributeError):
    """An assignment to (or deletion of) a field of a frozen record."""


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class Field:
    """What `field()` declares about one field."""

    __slots__ = ("name", "default", "default_factory", "compare", "repr")

    def __init__(
        self,
        default: object,
        default_factory: Callable[[], object] | None,
        compare: bool,
        repr: bool,
    ) -> None:
        self.name = ""
        self.default = default
        self.default_factory = default_factory
        self.compare = compare
        self.repr = repr

    @property
    def required(self) -> bool:
        return self.default is MISSING and self.default_factory is None


def field(
    *,
    default: Any = MISSING,
    default_factory: Callable[[], Any] | None = None,
    compare: bool = True,
    repr: bool = True,
) -> Any:
    """A field with a default or a default factory, or left out of ==, hash or repr."""
    if default is not MISSING and default_factory is not None:
        raise ValueError("a field takes a default or a default_factory, not both")
    return Field(default, default_factory, compare, repr)


def _fields(cls: type) -> tuple[Field, ...]:
    """The fields of `cls`: its bases' records first, then its own annotations."""
    inherited: dict[str, Field] = {}
    for base in reversed(cls.__mro__[1:]):
        for f in base.__dict__.get("__record_fields__", ()):
            inherited[f.name] = f
    for name in cls.__dict__.get("__annotations__", {}):
        value = cls.__dict__.get(name, MISSING)
        if isinstance(value, Field):
            declared = value
        else:
            declared = Field(value, None, True, True)
        declared.name = name
        if declared.default is MISSING and name in cls.__dict__:
            delattr(cls, name)  # a factory's Field object must not stay a class attribute
        elif declared.default is not MISSING:
            setattr(cls, name, declared.default)
        inherited.pop(name, None)
        inherited[name] = declared
    fields = tuple(inherited.values())
    seen_default = None
    for f in fields:
        if not f.required:
            seen_default = f.name
        elif seen_default is not None:
            raise TypeError(
                f"{cls.__qualname__}: field {f.name!r} has no default but follows "
                f"{seen_default!r}, which has one"
            )
    return fields


def _init(self: Any, *args: object, **kwargs: object) -> None:
    cls = type(self)
    fields: tuple[Field, ...] = cls.__record_fields__
    if len(args) > len(fields):
        raise TypeError(
            f"{cls.__qualname__}() takes {len(fields)} positional arguments "
            f"but {len(args)} were given"
        )
    values = self.__dict__
    for f, value in zip(fields, args, strict=False):
        values[f.name] = value
    if kwargs:
        names = cls.__record_names__
        for name, value in kwargs.items():
            if name not in names:
                raise TypeError(f"{cls.__qualname__}() got an unexpected keyword argument {name!r}")
            if name in values:
                raise TypeError(f"{cls.__qualname__}() got multiple values for argument {name!r}")
            values[name] = value
    if len(values) < len(fields):
        for f in fields[len(args) :]:
            if f.name in values:
                continue
            if f.default_factory is not None:
                values[f.name] = f.default_factory()
            elif f.default is not MISSING:
                values[f.name] = f.default
            else:
                raise TypeError(f"{cls.__qualname__}() missing required argument: {f.name!r}")
    post_init = getattr(self, "__post_init__", None)
    if post_init is not None:
        post_init()


def _compared(self: Any) -> tuple[object, ...]:
    values = self.__dict__
    return tuple([values[name] for name in type(self).__record_compared__])


def _eq(self: Any, other: object) -> object:
    if other.__class__ is not self.__class__:
        return NotImplemented
    return self is other or _compared(self) == _compared(other)


def _hash(self: Any) -> int:
    return hash(_compared(self))


def _repr(self: Any) -> str:
    values = self.__dict__
    shown = ", ".join(
        f"{f.name}={values.get(f.name, MISSING)!r}" for f in type(self).__record_fields__ if f.repr
    )
    return f"{type(self).__qualname__}({shown})"


def _frozen_setattr(self: Any, name: str, value: object) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _frozen_delattr(self: Any, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r}")


def _make(cls: C, frozen: bool) -> C:
    fields = _fields(cls)
    cls.__record_fields__ = fields  # type: ignore[attr-defined]
    cls.__record_names__ = frozenset(f.name for f in fields)  # type: ignore[attr-defined]
    cls.__record_compared__ = tuple(f.name for f in fields if f.compare)  # type: ignore[attr-defined]
    cls.__match_args__ = tuple(f.name for f in fields)  # type: ignore[attr-defined, misc]
    own = cls.__dict__
    if "__init__" not in own:
        cls.__init__ = _init  # type: ignore[misc]
    if "__repr__" not in own:
        cls.__repr__ = _repr  # type: ignore[assignment, method-assign]
    if "__eq__" not in own:
        cls.__eq__ = _eq  # type: ignore[assignment, method-assign]
    if "__hash__" not in own or own["__hash__"] is None:
        # As dataclasses: hashable by value when frozen, unhashable when mutable.
        cls.__hash__ = _hash if frozen else None  # type: ignore[assignment, method-assign]
    if frozen:
        cls.__setattr__ = _frozen_setattr  # type: ignore[assignment, method-assign]
        cls.__delattr__ = _frozen_delattr  # type: ignore[assignment, method-assign]
    return cls


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def frozen(cls: C) -> C:
    """A record whose fields are set once, by its constructor (or __post_init__)."""
    return _make(cls, frozen=True)


@dataclass_transform(field_specifiers=(field,))
def mutable(cls: C) -> C:
    """A record whose fields may change after construction (unhashable)."""
    return _make(cls, frozen=False)


def replace(record: R, **changes: object) -> R:
    """A copy of `record` with some fields changed, built by its constructor."""
    cls = type(record)
    values = {f.name: record.__dict__[f.name] for f in cls.__record_fields__}  # type: ignore[attr-defined]
    for name in changes:
        if name not in values:
            raise TypeError(f"{cls.__qualname__} has no field {name!r}")
    values.update(changes)
    return cls(**values)


def as_dict(record: object) -> dict[str, object]:
    """The fields of `record` by name (not recursive: values are kept as they are)."""
    return {f.name: record.__dict__[f.name] for f in type(record).__record_fields__}  # type: ignore[attr-defined]
