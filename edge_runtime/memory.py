"""Keep a long-running daemon's resident memory near what it uses (glibc only).

By default glibc gives every thread its own heap arena (up to 8 per core); the daemon's threads
(readers, processing, HTTP, writers) each kept one. Measured with `agetool serve` on one 5 fps lane
(2-core Xeon, 2026-12-02, ONNX Runtime, 15 s windows): two arenas took RSS 165 -> 162 MB (budget)
and 169 -> 166 MB (per-frame detection) at the same CPU. Also tried and left out: a 1 MB trim
threshold and a fixed 256 KB mmap threshold save ~10 MB more but cost 45-55 % more CPU on
per-frame detection (freed pages are handed back and faulted in again for every frame). A
malloc_trim off the frame path instead (5 s after warm-up, then every 30 s) costs nothing per
frame: with ONNX Runtime, RSS went from its start-up peak of 163 MB to 139 MB by the end of a 30 s
window, two runs of `python -m agetool.benchmarks.daemon_lane MODEL 30 budget --runtime
onnxruntime` (2026-12-02); with OpenVINO, whose memory is its live compiled model, 204 -> 202 MB."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # mallopt(3) parameter number, from glibc's malloc.h
ARENA_MAX = 2


def _glibc():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018 - raises AttributeError outside glibc (musl, macOS)
    except (OSError, AttributeError):
        return None
    return libc


def release_free_heap() -> bool:
    """Hand the heap's free pages back to the system (glibc's malloc_trim); False outside glibc.
    glibc keeps what start-up, model loading and the first frames freed; the daemon calls this
    after warm-up and then every TRIM_INTERVAL_S."""
    libc = _glibc()
    return libc is not None and libc.malloc_trim(0) == 1


TRIM_INTERVAL_S = 30.0
FIRST_TRIM_S = 5.0


def tune_malloc_for_long_run() -> bool:
    """Cap glibc's heap arenas; False where the C library is not glibc (nothing changed). Call
    before the daemon starts its threads."""
    libc = _glibc()
    if libc is None:
        return False
    applied = libc.mallopt(M_ARENA_MAX, ARENA_MAX) == 1
    log.debug("malloc arenas capped at %d: %s", ARENA_MAX, applied)
    return applied
