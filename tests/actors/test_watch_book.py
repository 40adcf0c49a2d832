"""The shared watch book: registration, bounds, and every way a watch ends."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gotask.actors._watch import WatchBook


def test_watch_and_lookup() -> None:
    book: WatchBook[str] = WatchBook()
    book.watch(["a", "b"], "w1")
    book.watch(["b"], "w2")
    assert book.watchers("a") == {"w1"}
    assert book.watchers("b") == {"w1", "w2"}
    assert book.watchers("c") == frozenset()
    assert "a" in book and "c" not in book
    assert len(book) == 2
    assert book.ids_of("w1") == {"a", "b"}


def test_unwatch_reports_ids_nobody_watches() -> None:
    book: WatchBook[str] = WatchBook()
    book.watch(["a", "b"], "w1")
    book.watch(["b"], "w2")
    assert book.unwatch(["a", "b", "zz"], "w1") == ["a"]
    assert book.watchers("b") == {"w2"}
    assert book.ids_of("w1") == frozenset()
    assert book.unwatch(["b"], "w2") == ["b"]
    assert not book


def test_drop_forgets_a_watcher_everywhere() -> None:
    book: WatchBook[str] = WatchBook()
    book.watch(["a", "b"], "w1")
    book.watch(["b"], "w2")
    assert sorted(book.drop("w1")) == ["a"]
    assert book.watchers("b") == {"w2"}
    assert book.drop("w1") == []


def test_settle_ends_every_watch_of_a_job() -> None:
    book: WatchBook[str] = WatchBook()
    book.watch(["a", "b"], "w1")
    book.watch(["a"], "w2")
    assert book.settle("a") == {"w1", "w2"}
    assert "a" not in book
    assert book.ids_of("w2") == frozenset()
    assert book.ids_of("w1") == {"b"}
    assert book.settle("a") == frozenset()


def test_bounds_refuse_whole_registrations() -> None:
    book: WatchBook[str] = WatchBook(ids_max=3, per_watcher_max=2)
    book.watch(["a", "b"], "w1")
    with pytest.raises(ValueError, match="one watcher"):
        book.watch(["c"], "w1")
    book.watch(["a", "b"], "w1")  # already watched: no growth
    book.watch(["c"], "w2")
    with pytest.raises(ValueError, match="limit 3"):
        book.watch(["d"], "w3")
    assert "d" not in book and book.ids_of("w3") == frozenset()


@given(st.lists(st.tuples(st.sampled_from(["watch", "unwatch", "drop", "settle"]),
                          st.sampled_from(["w1", "w2", "w3"]),
                          st.lists(st.sampled_from("abcde"), max_size=3))))
def test_both_indexes_always_agree(ops: list[tuple[str, str, list[str]]]) -> None:
    book: WatchBook[str] = WatchBook()
    model: dict[str, set[str]] = {}
    for op, watcher, ids in ops:
        if op == "watch":
            book.watch(ids, watcher)
            for i in ids:
                model.setdefault(i, set()).add(watcher)
        elif op == "unwatch":
            before = {i for i in ids if model.get(i) == {watcher}}
            assert set(book.unwatch(ids, watcher)) == before
            for i in ids:
                model.get(i, set()).discard(watcher)
        elif op == "drop":
            book.drop(watcher)
            for subs in model.values():
                subs.discard(watcher)
        else:
            for i in ids:
                assert book.settle(i) == model.pop(i, set())
        model = {i: s for i, s in model.items() if s}
        assert {i: set(book.watchers(i)) for i in model} == model
        assert len(book) == len(model)
        for w in ("w1", "w2", "w3"):
            assert book.ids_of(w) == {i for i, s in model.items() if w in s}
