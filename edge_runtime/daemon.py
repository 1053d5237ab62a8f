"""The register daemon: lanes -> detection -> batched inference -> tracks -> decisions, with the API,
events, analytics, receipts and metrics around it.

Threads: one reader per lane, a watchdog, one processing thread (detects on each lane's next frame
and runs ONE batched inference over the faces of all busy lanes), the analytics flusher, the
webhook sender and the API server. SIGTERM / SIGINT stop readers, flush analytics, exit 0.

A till PC runs the POS first, so the processing thread spends little: it detects on a downscaled
frame, reuses the last detection when the frame did not change, and runs the age model only while
a shopper's track still needs estimates (until they agree, then every refresh_s)."""

from __future__ import annotations

import logging
import os
import signal
import statistics
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from agetool.contract import age_band
from agetool.edge_runtime.analytics import BandAnalytics
from agetool.edge_runtime.band_tag import tag_band
from agetool.edge_runtime.compliance import VIOLATION, CheckLedger, ComplianceRules, evaluate
from agetool.edge_runtime.config import DaemonConfig, LaneConfig
from agetool.edge_runtime.decide import Decision, decide
from agetool.edge_runtime.detect import FaceBox, FaceDetector, FrameChangeGate, choose_face, detector_backend, make_detector
from agetool.edge_runtime.events import EventSink
from agetool.edge_runtime.pos_schema import ReceiptIn
from agetool.edge_runtime.sources import DropOldestQueue, Frame, LaneReader, Watchdog, mask_url
from agetool.edge_runtime.store import AnalyticsStore, ReceiptConflict, StoredReceipt, StoredSale
from agetool.edge_runtime.track import LaneTracker, model_interval_scale, model_uncertainty_years
from agetool.errors import ConfigError

from agetool.edge_runtime.memory import FIRST_TRIM_S, TRIM_INTERVAL_S, release_free_heap, tune_malloc_for_long_run

log = logging.getLogger(__name__)

LATENCY_BUCKETS_S = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)
LATENCY_SAMPLES = 1000


class UnknownLane(KeyError):
    """The API turns this into 404."""


@dataclass
class LaneRuntime:
    """Everything the daemon holds for one lane."""

    config: LaneConfig
    queue: DropOldestQueue
    reader: LaneReader
    detector: FaceDetector
    tracker: LaneTracker
    lock: threading.Lock = field(default_factory=threading.Lock)
    change_gate: FrameChangeGate | None = None
    last_faces: list[FaceBox] = field(default_factory=list)
    frames_processed: int = 0
    frames_with_face: int = 0
    detections_run: int = 0
    faces_inferred: int = 0
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))

    def latency_percentiles_ms(self) -> dict[str, float | None]:
        samples = sorted(self.latencies_ms)
        if not samples:
            return {"p50": None, "p95": None}
        if len(samples) == 1:
            return {"p50": round(samples[0], 2), "p95": round(samples[0], 2)}
        cuts = statistics.quantiles(samples, n=100, method="inclusive")
        return {"p50": round(cuts[49], 2), "p95": round(cuts[94], 2)}


class DaemonMetrics:
    """Prometheus metrics in this daemon's own registry (tests run several daemons in one process)."""

    def __init__(self, daemon: "Daemon") -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self.inference_seconds = Histogram(
            "agetool_inference_seconds", "Age model latency per batch.", buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.frame_to_decision_seconds = Histogram(
            "agetool_frame_to_decision_seconds", "Capture of a frame to its decision being available.",
            ["lane"], buckets=LATENCY_BUCKETS_S, registry=self.registry,
        )
        self.decisions = Counter(
            "agetool_decisions", "Decisions answered to the POS.", ["lane", "outcome", "reason"],
            registry=self.registry,
        )
        self.receipts = Counter(
            "agetool_receipts", "Receipts posted by the POS, by the band they were recorded under.",
            ["lane", "band", "outcome"], registry=self.registry,
        )
        self.compliance_outcomes = Counter(
            "agetool_compliance_outcomes", "Compliance outcomes of newly stored receipts (checked, not_required, "
            "violation, no_face, not_restricted).", ["lane", "outcome"], registry=self.registry,
        )
        self.registry.register(_LaneCollector(daemon))

    def exposition(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _LaneCollector:
    """Reads lane counters at scrape time, so readers never touch Prometheus objects."""

    def __init__(self, daemon: "Daemon") -> None:
        self.daemon = daemon

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        fps = GaugeMetricFamily("agetool_lane_fps", "Frames per second read from the source.", labels=["lane"])
        online = GaugeMetricFamily("agetool_lane_online", "1 when the lane's source gives frames.", labels=["lane"])
        dropped = CounterMetricFamily(
            "agetool_lane_frames_dropped", "Frames dropped because the lane queue was full.", labels=["lane"]
        )
        read = CounterMetricFamily("agetool_lane_frames_read", "Frames read from the source.", labels=["lane"])
        processed = CounterMetricFamily(
            "agetool_lane_frames_processed", "Frames run through detection.", labels=["lane"]
        )
        for lane in self.daemon.lanes.values():
            state = lane.reader.state
            fps.add_metric([lane.config.name], state.fps if state.online else 0.0)
            online.add_metric([lane.config.name], 1.0 if state.online else 0.0)
            dropped.add_metric([lane.config.name], float(lane.queue.dropped))
            read.add_metric([lane.config.name], float(state.frames_read))
            processed.add_metric([lane.config.name], float(lane.frames_processed))
        ready = GaugeMetricFamily("agetool_model_ready", "1 when the age model is loaded and warmed up.")
        ready.add_metric([], 1.0 if self.daemon.model is not None else 0.0)
        yield from (fps, online, dropped, read, processed, ready)


class Daemon:
    """The register daemon. start() brings everything up; stop() takes it down cleanly."""

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.model = None
        self.pipeline = None
        self.policy = None
        self.model_mae_years = 0.0
        self.lanes: dict[str, LaneRuntime] = {}
        self.metrics = DaemonMetrics(self)
        self.events: EventSink | None = None
        self.analytics: BandAnalytics | None = None
        self.store: AnalyticsStore | None = None
        self.compliance: ComplianceRules | None = None
        self.checks = CheckLedger(config.compliance.check_valid_s)
        self.central: Any = None  # central_sync.CentralSyncer when analytics.central is set
        self.api_server = None
        self._watchdog: Watchdog | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._processor = threading.Thread(target=self._process_loop, name="processor", daemon=True)
        self.started_wall_s = time.time()

    # --- lifecycle ---------------------------------------------------------------------------
    def prepare(self) -> None:
        """Load the model and build the lanes (readers not started): what processing needs."""
        from agetool.edge_runtime.face_pipeline import FaceAgePipeline
        from agetool.edge_runtime.pipeline import load_model

        cfg = self.config
        self.model = load_model(
            cfg.model.resolved_path(), cfg.model.providers, cfg.model.resolved_threads(), cfg.model.runtime
        )
        self.policy = cfg.policy.to_policy(self.model.metadata.id_check_buffer_years)
        self.model_mae_years = model_uncertainty_years(self.model.metadata)
        interval_scale = model_interval_scale(self.model.metadata)
        log.info(
            "policy: ID check when the lower bound is under %.1f years (policy %.0f + buffer %.1f); %s",
            self.policy.threshold_years, self.policy.policy_age_years, self.policy.buffer_years,
            f"uncertainty {interval_scale:g} x each face's own spread" if self.model.metadata.std_output_name
            else f"uncertainty at least {self.model_mae_years:.1f} years",
        )
        detector_path = "haar" if cfg.detector.is_haar() else cfg.detector.resolved_path()
        # One detector for every lane: all lanes are detected on the processing thread, one at a time.
        detector = make_detector(
            detector_path, cfg.detector.score_threshold, cfg.detector.min_face_px, cfg.detector.detect_max_side,
            detector_backend(cfg.detector.backend, self.model.runtime), cfg.model.resolved_threads(),
        )
        self.pipeline = FaceAgePipeline(detector, self.model)
        for lane_cfg in cfg.lanes:
            queue = DropOldestQueue(cfg.capture.queue_size, self._wake)
            reader = LaneReader(
                lane_cfg.name, lane_cfg.source, lane_cfg.fps, queue,
                cfg.capture.reopen_backoff_initial_s, cfg.capture.reopen_backoff_max_s,
                on_status=self._on_lane_status,
            )
            tracker = LaneTracker(
                cfg.tracking.iou_threshold, cfg.tracking.smoothing_window, cfg.tracking.track_timeout_s,
                self.model_mae_years, interval_scale,
            )
            gate = FrameChangeGate() if cfg.detector.skip_unchanged_frames else None
            self.lanes[lane_cfg.name] = LaneRuntime(lane_cfg, queue, reader, detector, tracker, change_gate=gate)
            log.info("lane %s: source %s at <= %.1f fps", lane_cfg.name, mask_url(lane_cfg.source), lane_cfg.fps)

    def start(self) -> None:
        """Port first, then model and lanes, then the files: a start that fails (port in use, bad
        model) has opened no camera and written no event, count or database."""
        from agetool.edge_runtime.api import ApiServer, create_app

        cfg = self.config
        if cfg.debug_save_crops:
            log.warning(
                "DEBUG: debug_save_crops is ON: face crops are written to %s. Never leave this on in a store.",
                cfg.debug_crops_dir,
            )
        self.api_server = ApiServer(create_app(self), cfg.api.host, cfg.api.port, cfg.api.bearer_token,
                                    cfg.api.http_limits())
        self.api_server.bind()
        self.prepare()
        self.events = EventSink(
            cfg.events.jsonl, cfg.events.webhook_url, cfg.events.webhook_timeout_s,
            cfg.events.webhook_max_retries, cfg.events.webhook_backoff_s,
        )
        if cfg.analytics.central is not None:
            self._prepare_central_sync()  # before the store's first purge: it must keep unsent rows
        self.store = AnalyticsStore(
            cfg.analytics.sqlite_path, cfg.analytics.retention_days, cfg.analytics.purge_interval_s,
            compliance_retention_days=cfg.compliance.retention_days,
        )
        self.analytics = BandAnalytics(cfg.analytics.sqlite_path, cfg.analytics.flush_interval_s, writer=self.store)
        if cfg.compliance.enabled:
            self.compliance = ComplianceRules.from_config(cfg.compliance, self.policy)
            if self.compliance.cashier_key is None:
                log.info("compliance.cashier_key is not set: cashier codes sent by the POS are not recorded")
        self.events.start()
        self.store.start()
        self.analytics.start()
        if self.central is not None:
            self.central.write = self.store.submit
            self.central.start()
        self._processor.start()
        for lane in self.lanes.values():
            lane.reader.start()
        self._watchdog = Watchdog(
            [lane.reader for lane in self.lanes.values()], cfg.capture.stall_timeout_s, cfg.capture.watchdog_interval_s
        )
        self._watchdog.start()
        self.api_server.start()
        log.info("agetool daemon serving on http://%s:%d (%d lane(s))", cfg.api.host, self.api_server.port, len(self.lanes))
        self._report_offline_lanes()

    def _report_offline_lanes(self, wait_s: float = 5.0) -> None:
        """Say at start which lanes have no source (a wrong path would otherwise only show in /v1/lanes)."""
        deadline = time.monotonic() + wait_s
        for lane in self.lanes.values():
            lane.reader.first_attempt.wait(max(0.0, deadline - time.monotonic()))
        offline = [f"{name} ({lane.reader.state.last_error or 'not open yet'})"
                   for name, lane in self.lanes.items() if not lane.reader.state.online]
        if offline:
            log.warning("%d of %d lane(s) offline at start: %s", len(offline), len(self.lanes), "; ".join(offline))

    def start_processing(self) -> None:
        """Only the processing thread (the bench feeds lane queues itself)."""
        self._processor.start()

    def stop_processing(self) -> None:
        self._stop.set()
        self._wake.set()
        self._processor.join(10.0)

    def stop(self) -> None:
        """Stop readers and workers, count the shoppers still in view, flush analytics."""
        self._stop.set()
        self._wake.set()
        if self.api_server is not None:
            self.api_server.stop()
        if self._watchdog is not None:
            self._watchdog.stop()
        for lane in self.lanes.values():
            lane.reader.stop()
        if self._processor.is_alive():
            self._processor.join(10.0)
        for lane in self.lanes.values():
            with lane.lock:
                closed = lane.tracker.close_all()
            self._count_shoppers(lane, closed)
        if self.central is not None:
            self.central.stop()
        if self.analytics is not None:
            self.analytics.stop()
            log.info("analytics flushed to %s (%d shopper count(s) this run)",
                     self.analytics.sqlite_path, self.analytics.flushed_total)
        if self.store is not None:
            self.store.stop()
        if self.events is not None:
            self.events.close()

    def _prepare_central_sync(self) -> None:
        """Set up the till's sync state and the syncer (psycopg loads here, only when configured)."""
        from agetool.edge_runtime.central_db import CentralTarget
        from agetool.edge_runtime.central_sync import Backoff, CentralSyncer, local_writer
        from agetool.edge_runtime.sync_specs import StoreMismatch, prepare_state

        central = self.config.analytics.central
        target = CentralTarget(central.url, central.sslmode, str(central.sslrootcert) if central.sslrootcert else None)
        write, close = local_writer(self.config.analytics.sqlite_path)
        try:
            write(lambda db: prepare_state(db, central.store_id))
        except StoreMismatch as exc:
            raise ConfigError(f"analytics.central.store_id: {self.config.analytics.sqlite_path}: {exc}") from None
        finally:
            close()
        self.central = CentralSyncer(target, self.config.analytics.sqlite_path, central.store_id, write=None,
                                     interval_s=central.interval_s, batch_rows=central.batch_rows,
                                     backoff=Backoff(1.0, central.backoff_max_s))

    # --- processing --------------------------------------------------------------------------
    def _process_loop(self) -> None:
        # The runtimes set up per-thread state on a thread's first inference (OpenVINO: ~30 ms on
        # the first frame with a face); pay it here, before the first shopper, not on their frame.
        self.model.warm_up()
        # The first trim a few seconds in, once start-up (API, readers, first frames) has freed
        # what it will; then every TRIM_INTERVAL_S.
        trimmed_s = time.monotonic() - TRIM_INTERVAL_S + FIRST_TRIM_S
        while not self._stop.is_set():
            self._wake.wait(0.1)
            self._wake.clear()
            if time.monotonic() - trimmed_s >= TRIM_INTERVAL_S:
                release_free_heap()
                trimmed_s = time.monotonic()
            while not self._stop.is_set():
                batch = [(lane, frame) for lane in self.lanes.values() if (frame := lane.queue.get_nowait())]
                if not batch:
                    break
                try:
                    self.process_batch(batch)
                except Exception:  # noqa: BLE001 - one bad frame (cv2 / ORT error) must not stop every lane
                    log.exception("frame batch skipped")
            self._expire_tracks()

    def _detect(self, lane: LaneRuntime, frame: Frame) -> list[FaceBox]:
        """The lane's faces in this frame; the last detection again when the frame did not change."""
        if lane.change_gate is not None and not lane.change_gate.changed(frame.image_bgr):
            return lane.last_faces
        lane.last_faces = lane.detector.detect(frame.image_bgr)
        lane.detections_run += 1
        return lane.last_faces

    def process_batch(self, batch: list[tuple[LaneRuntime, Frame]]) -> None:
        """Detect on one frame per lane, run one batched inference over the faces whose tracks
        need a new estimate, update tracks."""
        owners: list[tuple[LaneRuntime, Frame, FaceBox]] = []
        crops = []
        for lane, frame in batch:
            h, w = frame.image_bgr.shape[:2]
            face = choose_face(self._detect(lane, frame), w, h)
            lane.frames_processed += 1
            if face is None:
                self._record_latency(lane, frame)
                continue
            if self._seen_without_inference(lane, face, frame.captured_s):
                self._record_latency(lane, frame)
                continue
            crop = self.pipeline.crop_rgb(frame.image_bgr, face)
            if self.config.debug_save_crops:
                self._save_debug_crop(lane.config.name, frame.index, crop)
            owners.append((lane, frame, face))
            crops.append(crop)
        if not crops:
            return
        started = time.perf_counter()
        records = self.pipeline.infer([face for _, _, face in owners], self.pipeline.to_batch(crops))
        self.metrics.inference_seconds.observe(time.perf_counter() - started)
        for (lane, frame, face), record in zip(owners, records):
            with lane.lock:
                lane.tracker.update(face, record.age_years, frame.captured_s, frame.captured_wall_s,
                                    record.age_std_years)
                lane.frames_with_face += 1
                lane.faces_inferred += 1
            self._record_latency(lane, frame)

    def _seen_without_inference(self, lane: LaneRuntime, face: FaceBox, now_s: float) -> bool:
        """True (and the track kept alive) when this face's track has enough agreeing estimates
        and is not yet due for a refresh: the age model is not run for it on this frame."""
        tracking = self.config.tracking
        with lane.lock:
            track = lane.tracker.match(face, now_s)
            if track is None or track.needs_estimate(
                now_s, tracking.settled_estimates, tracking.agree_years, tracking.refresh_s
            ):
                return False
            lane.tracker.touch(track, face, now_s)
            lane.frames_with_face += 1
            return True

    def _record_latency(self, lane: LaneRuntime, frame: Frame) -> None:
        latency_s = time.monotonic() - frame.captured_s
        lane.latencies_ms.append(latency_s * 1000.0)
        self.metrics.frame_to_decision_seconds.labels(lane.config.name).observe(latency_s)

    def _expire_tracks(self) -> None:
        now_s = time.monotonic()
        for lane in self.lanes.values():
            with lane.lock:
                gone = lane.tracker.expire(now_s)
            self._count_shoppers(lane, gone)

    def _count_shoppers(self, lane: LaneRuntime, tracks: list[Any]) -> None:
        for track in tracks:
            estimate = track.estimate(self.model_mae_years)
            band = age_band(estimate.age_years)
            if self.analytics is not None:
                self.analytics.record(lane.config.name, band, track.first_seen_wall_s)
            if self.events is not None:
                self.events.emit(
                    "shopper_left", lane=lane.config.name, track_id=track.track_id, band=band,
                    age_years=round(estimate.age_years, 2), n_estimates=estimate.n_estimates,
                )

    def _save_debug_crop(self, lane: str, index: int, crop_rgb: Any) -> None:
        import cv2

        folder = Path(self.config.debug_crops_dir)  # validated non-None when the switch is on
        folder.mkdir(parents=True, exist_ok=True)
        ok, encoded = cv2.imencode(".jpg", crop_rgb[..., ::-1])
        if not ok:
            return
        fd, tmp = tempfile.mkstemp(prefix=".crop-", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "wb") as handle:
            handle.write(encoded.tobytes())
        os.replace(tmp, folder / f"{lane}-{index:08d}.jpg")

    def _on_lane_status(self, lane: str, online: bool, error: str | None) -> None:
        if self.events is not None:
            self.events.emit("lane_online" if online else "lane_offline", lane=lane, error=error)

    # --- queries (API) ---------------------------------------------------------------------
    def _lane(self, name: str) -> LaneRuntime:
        try:
            return self.lanes[name]
        except KeyError:
            raise UnknownLane(name) from None

    def current(self, lane_name: str) -> Decision:
        """The decision for the shopper in view now (no event, no count)."""
        return self._observe(lane_name, time.monotonic(), time.time())[0]

    def _observe(self, lane_name: str, now_s: float, wall_s: float) -> tuple[Decision, float | None]:
        """The decision for the shopper in view, and when (monotonic) that shopper was first seen."""
        lane = self._lane(lane_name)
        with lane.lock:
            track = lane.tracker.current(now_s)
            estimate = track.estimate(self.model_mae_years) if track is not None else None
            track_id = track.track_id if track is not None else None
            first_seen_s = track.first_seen_s if track is not None else None
        return decide(lane.config.name, estimate, track_id, self.policy, wall_s), first_seen_s

    def check(self, lane_name: str) -> Decision:
        """What the POS asks when alcohol is scanned: the current decision, counted and emitted."""
        asked_s = time.monotonic()
        decision = self._observe(lane_name, asked_s, time.time())[0]
        self.checks.remember(decision, asked_s)
        outcome = "id_check_required" if decision.id_check_required else "no_id_check"
        self.metrics.decisions.labels(decision.lane, outcome, decision.reason).inc()
        if self.events is not None:
            self.events.emit("check", **decision.model_dump())
        return decision

    def record_receipt(self, lane_name: str, receipt: ReceiptIn) -> tuple[StoredReceipt, bool]:
        """record_sale without the compliance outcome in the answer: (stored, created)."""
        sale = self.record_sale(lane_name, receipt)
        return sale.receipt, sale.created

    def record_sale(self, lane_name: str, receipt: ReceiptIn) -> StoredSale:
        """Store a POS receipt under the band of the shopper in view now, with its compliance
        outcome (once per receipt_id: a retry gets what was stored first). Raises ReceiptConflict."""
        now_s, wall_s = time.monotonic(), time.time()
        decision, first_seen_s = self._observe(lane_name, now_s, wall_s)
        tag = tag_band(decision.age_years, decision.lower_years, decision.upper_years,
                       self.config.analytics.receipt_min_band_confidence)
        answer = self.checks.attached(decision.lane, decision.track_id, first_seen_s, now_s)
        draft = (evaluate(decision.lane, receipt, decision, answer, self.compliance, wall_s)
                 if self.compliance is not None else None)
        try:
            sale = self.store.record_sale(decision.lane, receipt, tag, draft, wall_s)
        except ReceiptConflict as conflict:
            self.metrics.receipts.labels(conflict.stored.lane, conflict.stored.band, "conflict").inc()
            raise
        stored, created = sale.receipt, sale.created
        self.metrics.receipts.labels(stored.lane, stored.band, "created" if created else "duplicate").inc()
        if created:
            self.checks.used(decision.lane, answer)
        if self.events is not None:
            self.events.emit("receipt", lane=stored.lane, receipt_id=stored.receipt_id, band=stored.band,
                             band_basis=stored.band_basis, created=created)
        if created and sale.compliance is not None:
            self._report_compliance(sale)
        return sale

    def _report_compliance(self, sale: StoredSale) -> None:
        record = sale.compliance
        self.metrics.compliance_outcomes.labels(record.lane, record.outcome).inc()
        if record.outcome == VIOLATION and self.events is not None:
            self.events.emit(
                "compliance_violation", lane=record.lane, receipt_id=record.receipt_id, cashier=record.cashier,
                recorded_at_utc=record.recorded_at_utc, band=record.band, outcome=record.outcome,
                id_check=record.id_check, check_called=bool(record.check_called),
                restricted_categories=record.to_api()["restricted_categories"],
            )

    def lane_status(self, lane_name: str) -> dict[str, Any]:
        lane = self._lane(lane_name)
        state = lane.reader.state
        return {
            "lane": lane.config.name,
            "source": mask_url(lane.config.source),
            "online": state.online,
            "fps": round(state.fps, 2) if state.online else 0.0,
            "fps_limit": lane.config.fps,
            "frames_read": state.frames_read,
            "frames_dropped": lane.queue.dropped,
            "frames_processed": lane.frames_processed,
            "frames_with_face": lane.frames_with_face,
            "detections_run": lane.detections_run,
            "faces_inferred": lane.faces_inferred,
            "live_tracks": lane.tracker.live_count,
            "last_error": state.last_error,
            "frame_to_decision_ms": lane.latency_percentiles_ms(),
        }

    def _detector_details(self) -> dict[str, Any] | None:
        detector = self.pipeline.detector if self.pipeline is not None else None
        return None if detector is None else {"kind": detector.kind, "backend": detector.backend}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready when the model is loaded and every lane's source gives frames."""
        lanes = {name: lane.reader.state.online for name, lane in self.lanes.items()}
        model_ready = self.model is not None
        processing = self._processor.is_alive()
        details = {
            "ready": model_ready and processing and bool(lanes) and all(lanes.values()),
            "processing": processing,
            "model": {"ready": model_ready, "path": str(self.config.model.resolved_path().name),
                      "provider": getattr(self.model, "provider", None),
                      "runtime": getattr(self.model, "runtime", None)},
            "detector": self._detector_details(),
            "lanes": lanes,
        }
        return details["ready"], details


def serve_forever(config: DaemonConfig) -> int:
    """Run the daemon until SIGTERM / SIGINT; then stop readers, flush analytics, return 0."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("%s received: shutting down", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    tune_malloc_for_long_run()  # before any of the daemon's threads exist
    daemon = Daemon(config)
    try:
        daemon.start()
        while not stop.wait(0.5):
            if not daemon.api_server.alive:
                log.error("the API server stopped unexpectedly; shutting down")
                return 1
        return 0
    finally:
        daemon.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
