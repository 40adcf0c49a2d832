"""The Broker checks a job's arguments against its task's signature before enqueue;
the common all-positional case is checked by counting, the rest by `Signature.bind`."""

from __future__ import annotations

from typing import Any

import pytest

from gotask import App
from gotask._errors import InvalidArguments

app = App("arguments")


@app.task(name="plain")
def plain(x: int, y: int = 1) -> None:
    """Two positional-or-keyword parameters, one optional."""


@app.task(name="starred")
def starred(x: int, *rest: int, flag: bool = False, **extra: Any) -> None:
    """Every kind of parameter."""


@app.task(name="keyword_only")
def keyword_only(*, name: str) -> None:
    """A required keyword-only parameter."""


@pytest.mark.parametrize(("task", "args", "kwargs"), [
    ("plain", [1], {}),
    ("plain", [1, 2], {}),
    ("plain", [], {"x": 1}),
    ("plain", [1], {"y": 2}),
    ("starred", [1, 2, 3], {"flag": True, "other": 4}),
    ("keyword_only", [], {"name": "n"}),
])
def test_fitting_arguments_pass(task: str, args: list[Any], kwargs: dict[str, Any]) -> None:
    app.get(task).bind_check(args, kwargs)


@pytest.mark.parametrize(("task", "args", "kwargs", "message"), [
    ("plain", [], {}, "missing a required argument: 'x'"),
    ("plain", [1, 2, 3], {}, "too many positional arguments"),
    ("plain", [1], {"x": 2}, "multiple values for argument 'x'"),
    ("plain", [1], {"z": 2}, "got an unexpected keyword argument 'z'"),
    ("starred", [], {}, "missing a required argument: 'x'"),
    ("keyword_only", ["n"], {}, "too many positional arguments"),
    ("keyword_only", [], {}, "missing a required argument: 'name'"),
])
def test_arguments_that_do_not_fit_are_refused(
    task: str, args: list[Any], kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidArguments, match=f"task '{task}': {message}"):
        app.get(task).bind_check(args, kwargs)


def test_only_plain_signatures_are_checked_by_counting() -> None:
    assert app.get("plain").positional == (1, 2)
    assert app.get("starred").positional is None
    assert app.get("keyword_only").positional is None
