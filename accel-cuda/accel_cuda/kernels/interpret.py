"""Triton's interpreter (TRITON_INTERPRET=1: the kernels run on CPU tensors, as the CPU tests run them) and one fix
for it: Triton 3.6 holds a kernel's scalar arguments as 1-element arrays and turns them into Python ints with
int(array), which NumPy 2.4 no longer allows for arrays of ndim > 0, so every loop over a runtime bound
(`tl.range(STEPS)`) failed with "only 0-dimensional arrays can be converted to Python scalars"."""

from __future__ import annotations

import os

import numpy as np

__all__ = ["INTERPRET", "patch_scalar_index"]

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _int_of_one_element_array_fails() -> bool:
    try:
        int(np.ones(1, dtype=np.int32))
    except TypeError:
        return True
    return False


def patch_scalar_index() -> bool:
    """Have the interpreter's tensors index by their one element (`.item()`), where NumPy refuses int() of a
    1-element array; a no-op elsewhere. Returns whether the patch is in place."""
    if not _int_of_one_element_array_fails():
        return False
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "accel_patched", False):
        return True

    def patched(tensor, scope) -> None:  # type: ignore[no-untyped-def]
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

    patched.accel_patched = True  # type: ignore[attr-defined]
    interpreter._patch_lang_tensor = patched
    return True


if INTERPRET:
    patch_scalar_index()
