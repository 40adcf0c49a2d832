from __future__ import annotations

import gotask
import gotask.client
import gotask.runtime


def test_every_public_name_resolves() -> None:
    for module in (gotask, gotask.runtime, gotask.client):
        for name in module.__all__:
            assert getattr(module, name) is not None, f"{module.__name__}.{name}"


def test_public_api_names_are_sorted_and_unique() -> None:
    for module in (gotask, gotask.runtime):
        assert len(set(module.__all__)) == len(module.__all__)
