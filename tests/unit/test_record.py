"""initpy.runtime.record: the dataclass behaviour the boot's records rely on."""

from __future__ import annotations

import subprocess
import sys

import pytest

from initpy.runtime.record import (
    FrozenInstanceError,
    as_dict,
    field,
    frozen,
    mutable,
    replace,
)


@frozen
class Point:
    x: int
    y: int = 0
    tags: tuple[str, ...] = ()
    note: str = field(default="", compare=False, repr=False)


@mutable
class Bag:
    name: str
    items: list[str] = field(default_factory=list)


@frozen
class Normalised:
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(n.lower() for n in self.names))


def test_a_frozen_record_takes_positional_and_keyword_arguments_and_defaults() -> None:
    p = Point(1, tags=("a",))
    assert (p.x, p.y, p.tags, p.note) == (1, 0, ("a",), "")
    assert repr(p) == "Point(x=1, y=0, tags=('a',))"
    assert Point.__match_args__ == ("x", "y", "tags", "note")


def test_a_frozen_record_refuses_assignment_and_deletion() -> None:
    p = Point(1)
    with pytest.raises(FrozenInstanceError):
        p.x = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del p.x
    assert p.x == 1


def test_equality_and_hash_follow_the_compared_fields() -> None:
    assert Point(1, 2) == Point(1, 2, note="other")
    assert hash(Point(1, 2)) == hash(Point(1, 2, note="other"))
    assert Point(1, 2) != Point(2, 1)
    same_values: object = (1, 0, ())
    assert Point(1) != same_values
    assert len({Point(1), Point(1), Point(2)}) == 2


def test_a_mutable_record_is_unhashable_and_each_gets_its_own_default() -> None:
    a, b = Bag("a"), Bag("b")
    a.items.append("x")
    assert b.items == []
    a.name = "renamed"
    assert a == Bag("renamed", ["x"])
    with pytest.raises(TypeError):
        hash(a)


def test_post_init_runs_after_the_fields_are_set() -> None:
    assert Normalised(("A", "b")).names == ("a", "b")


def test_replace_builds_a_new_record_through_the_constructor() -> None:
    p = Point(1, 2, note="kept")
    q = replace(p, y=5)
    assert (q.x, q.y, q.note, p.y) == (1, 5, "kept", 2)
    assert replace(Normalised(("x",)), names=("Y",)).names == ("y",)
    with pytest.raises(TypeError, match="no field 'z'"):
        replace(p, z=1)


def test_as_dict_lists_every_field_in_order() -> None:
    assert as_dict(Point(1, note="n")) == {"x": 1, "y": 0, "tags": (), "note": "n"}


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((), {}, "missing required argument: 'x'"),
        ((1, 2, (), "", 5), {}, "takes 4 positional arguments but 5 were given"),
        ((1,), {"x": 2}, "multiple values for argument 'x'"),
        ((1,), {"z": 2}, "unexpected keyword argument 'z'"),
    ],
)
def test_bad_constructor_calls_are_type_errors(
    args: tuple[object, ...], kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        Point(*args, **kwargs)  # type: ignore[arg-type]


def test_a_field_without_default_after_one_with_is_refused() -> None:
    with pytest.raises(TypeError, match="'b' has no default but follows 'a'"):

        @frozen
        class Bad:
            a: int = 0
            b: int  # type: ignore[misc]


def test_records_import_nothing() -> None:
    code = (
        "import sys; before = set(sys.modules); import initpy.runtime.record; "
        "print(sorted(set(sys.modules) - before))"
    )
    out = subprocess.run(
        [sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "['__future__', 'initpy', 'initpy.runtime', 'initpy.runtime.record']"
