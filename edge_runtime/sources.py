"""Frame sources (camera, URL, video file, image folder, image file) and per-lane capture threads.

A reader thread per lane fills a small queue that drops the OLDEST frame when full: the decision
must be about the shopper standing there now, not a backlog. A watchdog reopens dead or stalled
sources with exponential backoff. Frames live only in memory."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Protocol

import numpy as np

from agetool.errors import AgetoolError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg")
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")


class SourceError(Exception):
    """A source could not be opened or stopped giving frames (the watchdog retries)."""


def mask_url(source: int | str) -> str:
    """The source as it may appear in logs and API answers: URL credentials replaced by ***."""
    return _URL_CREDENTIALS.sub(lambda m: f"{m.group('scheme')}***@", str(source))


@dataclass
class Frame:
    """One captured frame; `captured_s` is time.monotonic() at capture (for latency)."""

    lane: str
    index: int
    image_bgr: np.ndarray
    captured_s: float
    captured_wall_s: float
    origin: str  # file name or masked source, for `agetool run` output


class FrameSource(Protocol):
    description: str

    def open(self) -> None: ...

    def read(self) -> tuple[np.ndarray, str] | None:
        """The next BGR frame and where it came from; None at the end of a non-looping source.
        Raises SourceError when the source is gone."""

    def close(self) -> None: ...


def _decode_image(path: Path) -> np.ndarray:
    import cv2

    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise SourceError(f"{path}: cannot read ({exc.strerror})") from None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise SourceError(f"{path}: not a decodable image")
    return image


class ImageFileSource:
    """One image, repeated (looping) or read once."""

    def __init__(self, path: Path, loop: bool = True) -> None:
        self.path = path
        self.loop = loop
        self.description = str(path)
        self._image: np.ndarray | None = None
        self._served = False

    def open(self) -> None:
        if not self.path.is_file():
            raise SourceError(f"{self.path}: file not found")
        self._image = _decode_image(self.path)
        self._served = False

    def read(self) -> tuple[np.ndarray, str] | None:
        if self._image is None:
            raise SourceError(f"{self.path}: not open")
        if not self.loop and self._served:
            return None
        if self.loop and not self.path.exists():
            raise SourceError(f"{self.path}: file vanished")
        self._served = True
        return self._image, str(self.path)

    def close(self) -> None:
        self._image = None


class ImageFolderSource:
    """The images of a folder in name order, looped (a stand-in camera for tests and demos)."""

    def __init__(self, folder: Path, loop: bool = True) -> None:
        self.folder = folder
        self.loop = loop
        self.description = str(folder)
        self._files: list[Path] = []
        self._position = 0
        self._skipped: set[Path] = set()

    def _list(self) -> list[Path]:
        try:
            return sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        except OSError as exc:
            raise SourceError(f"{self.folder}: cannot list ({exc.strerror})") from None

    def open(self) -> None:
        if not self.folder.is_dir():
            raise SourceError(f"{self.folder}: folder not found")
        self._files = self._list()
        if not self._files:
            raise SourceError(f"{self.folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
        self._position = 0

    def read(self) -> tuple[np.ndarray, str] | None:
        if not self._files:
            raise SourceError(f"{self.folder}: not open")
        # An undecodable file is skipped, not raised: raising reopens the folder at its first file,
        # so the lane never got past the bad one and flapped offline on every pass.
        for _ in range(len(self._files)):
            if self._position >= len(self._files):
                if not self.loop:
                    return None
                self._position = 0
            path = self._files[self._position]
            self._position += 1
            if not path.is_file():
                raise SourceError(f"{path}: file vanished")
            try:
                return _decode_image(path), str(path)
            except SourceError as exc:
                if path not in self._skipped:
                    self._skipped.add(path)
                    log.warning("skipped: %s", exc)
        raise SourceError(f"{self.folder}: no decodable image")

    def close(self) -> None:
        self._files = []


class VideoCaptureSource:
    """A camera index, an rtsp/http URL or a video file through cv2.VideoCapture. Files loop."""

    def __init__(self, spec: int | str, loop: bool = True) -> None:
        self.spec = spec
        self.is_file = isinstance(spec, str) and Path(spec).is_file()
        self.loop = loop
        self.description = mask_url(spec)
        self._capture = None
        self._lock = threading.Lock()

    def open(self) -> None:
        import cv2

        capture = cv2.VideoCapture(self.spec)
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"{self.description}: cannot open")
        with self._lock:
            self._capture = capture

    def read(self) -> tuple[np.ndarray, str] | None:
        import cv2

        capture = self._capture
        if capture is None:
            raise SourceError(f"{self.description}: not open")
        try:
            ok, frame = capture.read()
            if not ok and self.is_file and self.loop:
                capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, frame = capture.read()
        except cv2.error as exc:
            raise SourceError(f"{self.description}: read failed ({mask_url(str(exc).strip().splitlines()[-1])})") from None
        if not ok:
            if self.is_file and not self.loop:
                return None
            raise SourceError(f"{self.description}: no frame")
        return frame, self.description

    def close(self) -> None:
        # Called from the watchdog too: releasing unblocks a reader stuck in read().
        with self._lock:
            capture, self._capture = self._capture, None
        if capture is not None:
            capture.release()


def make_source(spec: int | str, loop: bool = True) -> FrameSource:
    """The right source for a lane's `source` value."""
    if isinstance(spec, int) or (isinstance(spec, str) and spec.strip().isdigit()):
        return VideoCaptureSource(int(spec), loop=loop)
    if "://" in spec:
        return VideoCaptureSource(spec, loop=loop)
    path = Path(spec).expanduser()
    if path.is_dir():
        return ImageFolderSource(path, loop=loop)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return ImageFileSource(path, loop=loop)
    if path.suffix.lower() in VIDEO_SUFFIXES or path.is_file():
        return VideoCaptureSource(str(path), loop=loop)
    # A folder that is missing right now may come back (the watchdog keeps trying).
    return ImageFolderSource(path, loop=loop)


def iter_frames(spec: int | str, max_frames: int | None = None) -> Iterator[tuple[int, str, np.ndarray]]:
    """Frames of a source read once through (no looping): (frame index, origin, BGR image).

    Raises AgetoolError when the source cannot be opened."""
    source = make_source(spec, loop=False)
    try:
        source.open()
    except SourceError as exc:
        raise AgetoolError(f"source {exc}") from None
    try:
        index = 0
        while max_frames is None or index < max_frames:
            try:
                item = source.read()
            except SourceError as exc:
                if isinstance(source, VideoCaptureSource) and not source.is_file:
                    raise AgetoolError(f"source {exc}") from None
                log.warning("skipped: %s", exc)
                continue
            if item is None:
                return
            image, origin = item
            yield index, origin, image
            index += 1
    finally:
        source.close()


# --- Per-lane capture ---------------------------------------------------------------------
class DropOldestQueue:
    """A bounded frame buffer: putting into a full one drops the oldest frame and counts it."""

    def __init__(self, maxsize: int, wake: threading.Event | None = None) -> None:
        self._items: deque[Frame] = deque()
        self._maxsize = maxsize
        self._lock = threading.Lock()
        self._wake = wake
        self.dropped = 0

    def put(self, frame: Frame) -> bool:
        """Add a frame; True when an older one was dropped to make room."""
        with self._lock:
            dropped = len(self._items) >= self._maxsize
            if dropped:
                self._items.popleft()
                self.dropped += 1
            self._items.append(frame)
        if self._wake is not None:
            self._wake.set()
        return dropped

    def get_nowait(self) -> Frame | None:
        with self._lock:
            return self._items.popleft() if self._items else None

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


@dataclass
class LaneState:
    """What the API and metrics show about a lane's capture (numbers only)."""

    online: bool = False
    frames_read: int = 0
    last_frame_s: float | None = None
    last_error: str | None = None
    fps: float = 0.0
    open_count: int = 0
    _recent_s: deque[float] = field(default_factory=lambda: deque(maxlen=30))

    def note_frame(self, now_s: float) -> None:
        self.frames_read += 1
        self.last_frame_s = now_s
        self._recent_s.append(now_s)
        if len(self._recent_s) >= 2:
            span = self._recent_s[-1] - self._recent_s[0]
            self.fps = (len(self._recent_s) - 1) / span if span > 0 else 0.0


StatusCallback = Callable[[str, bool, str | None], None]
# A source that keeps failing the same way is logged again after this long (not at every retry).
OFFLINE_LOG_INTERVAL_S = 60.0


class LaneReader:
    """Reads one lane's source at its fps limit into a DropOldestQueue, reopening with backoff."""

    def __init__(
        self,
        lane: str,
        spec: int | str,
        fps: float,
        queue: DropOldestQueue,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        on_status: StatusCallback | None = None,
        source_factory: Callable[[int | str], FrameSource] = make_source,
    ) -> None:
        self.lane = lane
        self.spec = spec
        self.description = mask_url(spec)
        self.period_s = 1.0 / fps
        self.queue = queue
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.state = LaneState()
        self._on_status = on_status
        self._source_factory = source_factory
        self._source: FrameSource | None = None
        self._stop = threading.Event()
        self._reopen = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"reader-{lane}", daemon=True)
        self._index = 0
        self._offline_logged_s = -OFFLINE_LOG_INTERVAL_S
        self.first_attempt = threading.Event()  # set at the first frame or the first failure

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._close_source()
        if self._thread.ident is not None:
            self._thread.join(timeout_s)

    def request_reopen(self, reason: str) -> None:
        """From the watchdog: the source stalled; drop it so the reader reopens it."""
        self._set_online(False, reason)
        self._reopen.set()
        self._close_source()

    def _close_source(self) -> None:
        with self._lock:
            source, self._source = self._source, None
        if source is not None:
            source.close()

    def _set_online(self, online: bool, error: str | None) -> None:
        changed = self.state.online != online
        previous_error = self.state.last_error
        self.state.online = online
        self.state.last_error = error
        if online and changed:
            log.info("lane %s online (%s)", self.lane, self.description)
        elif not online and error is not None:
            # A lane that never came up was silent here before (offline -> offline is no change);
            # log every new error, and a source that keeps failing the same way once a minute.
            now_s = time.monotonic()
            if changed or error != previous_error or now_s - self._offline_logged_s >= OFFLINE_LOG_INTERVAL_S:
                log.warning("lane %s offline: %s", self.lane, error)
                self._offline_logged_s = now_s
        if changed and self._on_status is not None:
            self._on_status(self.lane, online, error)

    def _open(self) -> FrameSource:
        source = self._source_factory(self.spec)
        source.open()
        return source

    def _run(self) -> None:
        backoff_s = self.backoff_initial_s
        next_due_s = time.monotonic()
        while not self._stop.is_set():
            with self._lock:
                source = self._source
            if source is None or self._reopen.is_set():
                self._reopen.clear()
                self._close_source()
                try:
                    source = self._open()
                except SourceError as exc:
                    self._set_online(False, mask_url(str(exc)))
                    self.first_attempt.set()
                    self._stop.wait(backoff_s)
                    backoff_s = min(backoff_s * 2.0, self.backoff_max_s)
                    continue
                with self._lock:
                    self._source = source
                self.state.open_count += 1
            try:
                item = source.read()
                if item is None:
                    raise SourceError(f"{self.description}: source ended")
            except SourceError as exc:
                self._close_source()
                self._set_online(False, mask_url(str(exc)))
                self.first_attempt.set()
                self._stop.wait(backoff_s)
                backoff_s = min(backoff_s * 2.0, self.backoff_max_s)
                continue
            now_s = time.monotonic()
            image, origin = item
            self.queue.put(Frame(self.lane, self._index, image, now_s, time.time(), mask_url(origin)))
            self._index += 1
            self.state.note_frame(now_s)
            self._set_online(True, None)
            self.first_attempt.set()
            backoff_s = self.backoff_initial_s
            next_due_s = max(next_due_s + self.period_s, now_s)
            self._stop.wait(max(0.0, next_due_s - time.monotonic()))

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


class Watchdog:
    """Marks lanes whose last frame is older than `stall_timeout_s` offline and makes them reopen."""

    def __init__(self, readers: list[LaneReader], stall_timeout_s: float, interval_s: float) -> None:
        self.readers = readers
        self.stall_timeout_s = stall_timeout_s
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def check_once(self, now_s: float | None = None) -> list[str]:
        """Lanes found stalled (and told to reopen) in this pass."""
        now_s = time.monotonic() if now_s is None else now_s
        stalled = []
        for reader in self.readers:
            last = reader.state.last_frame_s
            if reader.state.online and last is not None and now_s - last > self.stall_timeout_s:
                reader.request_reopen(f"no frame for {now_s - last:.1f} s (stalled)")
                stalled.append(reader.lane)
        return stalled

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.check_once()
