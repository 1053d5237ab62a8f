"""The daemon's malloc tuning applies on glibc (the till's Linux) and is a no-op elsewhere."""

from __future__ import annotations

import platform

import pytest

from agetool.edge_runtime.memory import tune_malloc_for_long_run


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt tuning is glibc-only")
def test_malloc_tuning_is_applied_on_glibc():
    assert tune_malloc_for_long_run() is True
