"""nsbox._record: @record, @record(frozen=True) and as_dict, the dataclasses stand-ins."""

from __future__ import annotations

import pytest

from nsbox._record import as_dict, record


@record
class Inner:
    name: str
    tags: list[str] = list


@record
class Outer:
    title: str
    inner: Inner
    items: list[Inner] = list
    pair: tuple[int, int] = (1, 2)
    table: dict[str, Inner] = dict
    note: str | None = None


@record(frozen=True)
class Point:
    x: int
    y: int = 0


def test_record_fields_defaults_and_factories() -> None:
    a, b = Inner("a"), Inner("b")
    assert Inner.__record_fields__ == ("name", "tags")
    assert a.tags == [] and a.tags is not b.tags  # a fresh list per instance
    assert Inner("a", ["x"]) == Inner(name="a", tags=["x"])
    assert Inner("a") != Inner("b")
    assert repr(Inner("a", ["x"])) == "Inner(name='a', tags=['x'])"
    with pytest.raises(TypeError):
        hash(a)  # mutable records are unhashable, like dataclasses
    with pytest.raises(TypeError):
        Inner()
    with pytest.raises(TypeError):
        Inner("a", bogus=1)


def test_frozen_record_is_immutable_and_hashable() -> None:
    p = Point(1, 2)
    assert p == Point(x=1, y=2) and Point(3).y == 0
    assert hash(p) == hash(Point(1, 2)) == hash((1, 2))
    assert {p, Point(1, 2)} == {p}
    with pytest.raises(AttributeError):
        p.x = 5
    with pytest.raises(AttributeError):
        del p.y
    assert repr(p) == "Point(x=1, y=2)"


def test_as_dict_recurses_like_dataclasses_asdict() -> None:
    obj = Outer("t", Inner("i", ["a"]), items=[Inner("j")], table={"k": Inner("l")})
    assert as_dict(obj) == {
        "title": "t",
        "inner": {"name": "i", "tags": ["a"]},
        "items": [{"name": "j", "tags": []}],
        "pair": (1, 2),
        "table": {"k": {"name": "l", "tags": []}},
        "note": None,
    }
    converted = as_dict(obj)
    assert converted["inner"]["tags"] is not obj.inner.tags  # containers are rebuilt
    assert as_dict(Point(1)) == {"x": 1, "y": 0}
    assert as_dict([Point(1), (Point(2),)]) == [{"x": 1, "y": 0}, ({"x": 2, "y": 0},)]
    assert as_dict("plain") == "plain"


def test_engine_records_round_trip() -> None:
    from nsbox.engine.containers import spec_from_json, spec_to_json
    from nsbox.engine.model import ContainerSpec, MountSpec, RestartPolicy

    spec = ContainerSpec(image="busybox", command=["true"], env={"A": "é"},
                         mounts=[MountSpec(type="bind", target="/m", source="/tmp", read_only=True)],
                         restart=RestartPolicy("on-failure", 3), ulimits={"nofile": (1, 2)})
    assert ContainerSpec("x").restart == RestartPolicy() and ContainerSpec("x").mounts == []
    assert ContainerSpec("x").restart is not ContainerSpec("y").restart
    assert spec_from_json(spec_to_json(spec)) == spec
    assert set(ContainerSpec.__record_fields__) >= {"image", "mounts", "restart", "runtime"}


def test_arguments_by_position_keyword_and_factory():
    from nsbox._record import record

    @record
    class Point:
        x: int
        y: int = 0
        tags: list = list

    assert Point(1) == Point(x=1) == Point(1, 0) and Point(1).tags == []
    assert Point(1).tags is not Point(1).tags  # a factory, called for each instance
    assert Point(2, y=3).y == 3
    for bad in (lambda: Point(), lambda: Point(1, 2, [], 4), lambda: Point(1, x=2),
                lambda: Point(1, z=2)):
        try:
            bad()
        except TypeError:
            continue
        raise AssertionError("accepted bad arguments")
