"""The daemon's malloc tuning applies on glibc (the till's Linux) and is a no-op elsewhere."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from agetool.edge_runtime.memory import tune_malloc_for_long_run


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt tuning is glibc-only")
def test_malloc_tuning_is_applied_on_glibc():
    assert tune_malloc_for_long_run() is True


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc-only")
def test_release_free_heap_hands_freed_pages_back():
    # In a child: 150 MB of 100 KB blocks freed below one block still in use stay resident (free()
    # only trims the heap's top) until release_free_heap().
    probe = (
        "import ctypes\n"
        "from agetool.edge_runtime.memory import release_free_heap\n"
        "libc = ctypes.CDLL('libc.so.6'); libc.malloc.restype = ctypes.c_void_p\n"
        "def rss(): return int([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1]) // 1024\n"
        "blocks = [libc.malloc(100_000) for _ in range(1500)]\n"
        "for b in blocks: ctypes.memset(b, 1, 100_000)\n"
        "for b in blocks[:-1]: libc.free(ctypes.c_void_p(b))\n"
        "before = rss(); ok = release_free_heap(); print(ok, before, rss())\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    ok, before_mb, after_mb = result.stdout.split()
    assert ok == "True" and int(before_mb) - int(after_mb) > 100
