"""Register daemon parts on real components: YuNet/Haar on real faces, ONNX Runtime, SQLite,
a real HTTP webhook receiver, real reader threads."""

from __future__ import annotations

import http.server
import json
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from agetool.contract import Challenge25Policy
from agetool.edge_runtime.analytics import BandAnalytics, hour_bucket, read_counts
from agetool.edge_runtime.decide import REASON_ABOVE, REASON_BELOW, REASON_NO_FACE, decide
from agetool.edge_runtime.detect import FaceBox, FaceDetector, choose_face, crop_face_rgb, iou
from agetool.edge_runtime.events import EventSink
from agetool.edge_runtime.sources import (
    DropOldestQueue,
    Frame,
    LaneReader,
    SourceError,
    Watchdog,
    iter_frames,
    make_source,
    mask_url,
)
from agetool.edge_runtime.track import LaneTracker, smooth
from conftest import YUNET

CANVAS_W, CANVAS_H = 640, 480


def paste_on_canvas(chip_bgr: np.ndarray, x: int, y: int, grey: int = 90) -> np.ndarray:
    canvas = np.full((CANVAS_H, CANVAS_W, 3), grey, np.uint8)
    h, w = chip_bgr.shape[:2]
    canvas[y : y + h, x : x + w] = chip_bgr
    return canvas


def make_face_canvas_folder(folder: Path, shared_faces: Path, n_images: int = 4) -> Path:
    """640x480 frames, each with one real 200x200 face chip pasted at a different place."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    chips = sorted((shared_faces / "final_files").glob("*.jpg"))[:n_images]
    for i, chip_path in enumerate(chips):
        x = 40 + (i % 4) * 120
        cv2.imwrite(str(folder / f"frame{i:03d}.jpg"), paste_on_canvas(cv2.imread(str(chip_path)), x, 140))
    return folder


def astronaut_bgr() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[..., ::-1])


def yunet() -> Path:
    if not YUNET.is_file():
        pytest.skip(f"YuNet model not found at {YUNET}")
    return YUNET


# --- detection -----------------------------------------------------------------------------
def test_yunet_finds_the_astronaut_and_haar_agrees():
    image = astronaut_bgr()
    yunet_faces = FaceDetector(yunet()).detect(image)
    assert len(yunet_faces) == 1
    face = yunet_faces[0]
    assert 150 < face.x + face.w / 2 < 260 and 80 < face.y + face.h / 2 < 160  # her face, upper left
    haar_faces = FaceDetector("haar").detect(image)
    assert haar_faces, "Haar fallback found no face on the astronaut portrait"
    assert max(iou(face, h) for h in haar_faces) > 0.3


def test_yunet_finds_pasted_utkface_chips_and_nothing_on_a_blank_frame(shared_faces, tmp_path):
    import cv2

    folder = make_face_canvas_folder(tmp_path / "frames", shared_faces)
    detector = FaceDetector(yunet())
    for path in sorted(folder.iterdir()):
        faces = detector.detect(cv2.imread(str(path)))
        assert len(faces) == 1, path.name
    assert detector.detect(np.full((CANVAS_H, CANVAS_W, 3), 90, np.uint8)) == []
    # a different frame size works too (setInputSize follows the frame)
    assert len(detector.detect(astronaut_bgr())) == 1


def test_choose_face_prefers_large_and_central():
    small_centre = FaceBox(300, 220, 40, 40, 0.9)
    big_corner = FaceBox(0, 0, 120, 120, 0.9)
    big_centre = FaceBox(260, 180, 120, 120, 0.9)
    assert choose_face([small_centre, big_corner, big_centre], 640, 480) == big_centre
    assert choose_face([small_centre, big_corner], 640, 480) == big_corner
    assert choose_face([], 640, 480) is None


def test_crop_is_rgb_square_with_margin():
    image = np.zeros((480, 640, 3), np.uint8)
    image[..., 0] = 255  # blue in BGR
    crop = crop_face_rgb(image, FaceBox(300, 200, 50, 50, 1.0))
    assert crop.shape == (90, 90, 3)  # 50 * (1 + 2 * 0.4)
    assert crop[..., 2].min() == 255 and crop[..., 0].max() == 0  # blue is the last channel in RGB


def test_missing_yunet_file_is_one_clear_error(tmp_path):
    from agetool.errors import AgetoolError

    with pytest.raises(AgetoolError, match="file not found"):
        FaceDetector(tmp_path / "nope.onnx")


# --- tracking and decisions ----------------------------------------------------------------
def test_tracker_smooths_one_shopper_and_starts_new_tracks():
    tracker = LaneTracker(iou_threshold=0.3, window=3, timeout_s=1.0, model_mae_years=2.0)
    box = FaceBox(100, 100, 100, 100, 0.9)
    moved_a_little = FaceBox(110, 105, 100, 100, 0.9)
    t1 = tracker.update(box, 30.0, 0.0, 1000.0)
    t2 = tracker.update(moved_a_little, 40.0, 0.1, 1000.1)
    t3 = tracker.update(box, 31.0, 0.2, 1000.2)
    assert t1 is t2 is t3
    estimate = t3.estimate(2.0)
    assert estimate.age_years == 31.0  # median, the 40 outlier is ignored
    assert estimate.lower_years == pytest.approx(31.0 - 9.0)  # spread (40 - 31) beats the 2-year MAE
    tracker.update(box, 32.0, 0.3, 1000.3)
    assert list(t3.estimates) == [40.0, 31.0, 32.0]  # window of 3
    elsewhere = tracker.update(FaceBox(400, 100, 100, 100, 0.9), 20.0, 0.4, 1000.4)
    assert elsewhere.track_id != t1.track_id
    assert tracker.current(0.45) is elsewhere
    later = tracker.update(box, 50.0, 2.0, 1002.0)  # same place after the timeout: a new shopper
    assert later.track_id not in (t1.track_id, elsewhere.track_id)
    gone = tracker.expire(2.05)
    assert {t.track_id for t in gone} == {t1.track_id, elsewhere.track_id}
    assert tracker.current(3.5) is None


def test_uncertainty_is_at_least_the_model_mae():
    estimate = smooth([30.0, 30.5, 29.5], model_mae_years=4.0)
    assert (estimate.lower_years, estimate.upper_years) == (26.0, 34.0)


def test_decisions_follow_challenge_25():
    policy = Challenge25Policy(policy_age_years=25, buffer_years=2)
    no_face = decide("till", None, None, policy, time.time())
    assert no_face.id_check_required and no_face.reason == REASON_NO_FACE and no_face.band == "unknown"
    young = decide("till", smooth([29.0], 3.0), 1, policy, time.time())
    assert young.id_check_required and young.reason == REASON_BELOW  # 26 < 27
    older = decide("till", smooth([31.0], 3.0), 2, policy, time.time())
    assert not older.id_check_required and older.reason == REASON_ABOVE and older.band == "25-34"
    assert older.threshold_years == 27.0 and older.track_id == 2


# --- analytics ------------------------------------------------------------------------------
def test_analytics_counts_flush_and_add_up(tmp_path):
    db = tmp_path / "state" / "a.sqlite"
    analytics = BandAnalytics(db, flush_interval_s=3600)
    when = 1_700_000_000.0
    analytics.record("till-1", "18-24", when)
    analytics.record("till-1", "18-24", when + 10)
    analytics.record("till-2", "65+", when)
    assert read_counts(db) == []  # nothing written before a flush
    assert analytics.flush() == 3
    analytics.record("till-1", "18-24", when + 20)
    analytics.stop()  # flushes the rest
    hour = hour_bucket(when)
    assert read_counts(db) == [(hour, "till-1", "18-24", 3), (hour, "till-2", "65+", 1)]
    with sqlite3.connect(db) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(band_counts)")]
    assert columns == ["hour_utc", "lane", "band", "shoppers"]  # counts only


# --- capture ---------------------------------------------------------------------------------
def _frame(index: int) -> Frame:
    return Frame("till", index, np.zeros((2, 2, 3), np.uint8), float(index), float(index), "x")


def test_full_queue_drops_the_oldest_and_counts():
    queue = DropOldestQueue(2)
    dropped = [queue.put(_frame(i)) for i in range(5)]
    assert dropped == [False, False, True, True, True]
    assert queue.dropped == 3
    assert [queue.get_nowait().index, queue.get_nowait().index] == [3, 4]
    assert queue.get_nowait() is None


def test_mask_url_hides_credentials():
    assert mask_url("rtsp://admin:s3cret@10.0.0.5:554/stream1") == "rtsp://***@10.0.0.5:554/stream1"
    assert mask_url("http://user@cam/video.mjpg") == "http://***@cam/video.mjpg"
    assert mask_url("/srv/frames") == "/srv/frames"
    assert mask_url(0) == "0"


def test_iter_frames_reads_a_folder_once_in_order(shared_faces, tmp_path):
    folder = make_face_canvas_folder(tmp_path / "frames", shared_faces, n_images=3)
    (folder / "notes.txt").write_text("not an image")
    frames = list(iter_frames(str(folder)))
    assert [(i, Path(origin).name) for i, origin, _ in frames] == [
        (0, "frame000.jpg"), (1, "frame001.jpg"), (2, "frame002.jpg")
    ]
    assert frames[0][2].shape == (CANVAS_H, CANVAS_W, 3)


def test_video_file_source_loops(tmp_path):
    import cv2

    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(3):
        writer.write(np.full((48, 64, 3), i * 80, np.uint8))
    writer.release()
    assert len(list(iter_frames(str(path)))) == 3
    source = make_source(str(path))
    source.open()
    brightness = [int(source.read()[0].mean()) for _ in range(6)]
    source.close()
    assert brightness[3] == pytest.approx(brightness[0], abs=5)  # back to the first frame


class _StallingSource:
    """A source whose second read hangs until close() (a camera that stops answering)."""

    opened = 0

    def __init__(self) -> None:
        self.description = "stalling"
        self._released = threading.Event()
        self._reads = 0

    def open(self) -> None:
        type(self).opened += 1

    def read(self):
        self._reads += 1
        if self._reads > 1:
            self._released.wait(30)
            raise SourceError("released while reading")
        return np.zeros((4, 4, 3), np.uint8), "stalling"

    def close(self) -> None:
        self._released.set()


def test_watchdog_reopens_a_stalled_source():
    _StallingSource.opened = 0
    events: list[tuple[str, bool]] = []
    queue = DropOldestQueue(4)
    reader = LaneReader(
        "till", "stalling", 50.0, queue, backoff_initial_s=0.05, backoff_max_s=0.1,
        on_status=lambda lane, online, _err: events.append((lane, online)),
        source_factory=lambda _spec: _StallingSource(),
    )
    watchdog = Watchdog([reader], stall_timeout_s=0.3, interval_s=0.05)
    reader.start()
    watchdog.start()
    try:
        deadline = time.monotonic() + 10
        while _StallingSource.opened < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        watchdog.stop()
        reader.stop()
    assert _StallingSource.opened >= 3
    assert events[:3] == [("till", True), ("till", False), ("till", True)]
    assert reader.state.frames_read >= 2


# --- events ---------------------------------------------------------------------------------
class _FlakyReceiver(http.server.BaseHTTPRequestHandler):
    bodies: list[dict] = []
    failures_left = 2

    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        cls = type(self)
        if cls.failures_left > 0:
            cls.failures_left -= 1
            self.send_response(503)
        else:
            cls.bodies.append(body)
            self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args) -> None:
        pass


def test_events_go_to_a_jsonl_file_and_a_flaky_webhook_with_retries(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FlakyReceiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _FlakyReceiver.bodies, _FlakyReceiver.failures_left = [], 2
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    sink = EventSink(str(tmp_path / "events.jsonl"), url, webhook_max_retries=3, webhook_backoff_s=0.05)
    sink.start()
    try:
        sink.emit("check", lane="till-1", age_years=31.0, id_check_required=False)
        deadline = time.monotonic() + 10
        while not _FlakyReceiver.bodies and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sink.close()
        server.shutdown()
    assert [b["event"] for b in _FlakyReceiver.bodies] == ["check"]
    assert _FlakyReceiver.failures_left == 0 and sink.webhook.sent == 1
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["lane"] == "till-1"

