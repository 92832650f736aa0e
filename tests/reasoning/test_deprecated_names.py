"""The reasoning modules' old public names still resolve, with a DeprecationWarning."""

from __future__ import annotations

import pytest

import mmsb_jax as mm


@pytest.mark.parametrize("old,new", [("constraints", "_constraints"), ("logic", "_logic"),
                                     ("structure", "_structure")])
def test_old_module_name_warns_and_gives_the_same_functions(old, new):
    with pytest.warns(DeprecationWarning, match=f"mmsb_jax.reasoning.{old} is deprecated"):
        module = getattr(mm.reasoning, old)
    assert module.__name__ == f"mmsb_jax.reasoning.{new}"
    for name in mm.reasoning.__all__:
        if hasattr(module, name):
            assert getattr(module, name) is getattr(mm.reasoning, name)


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        mm.reasoning.nonexistent  # noqa: B018
