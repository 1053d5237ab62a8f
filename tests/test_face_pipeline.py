"""FaceAgePipeline and the model opener on real parts: YuNet on real UTKFace chips pasted into
larger frames at several scales and angles, tiny real ONNX models (aligned_v1, box_margin, one
with a per-face spread output) in ONNX Runtime and OpenVINO, the daemon's processing in-process,
and `agetool run` / `agetool evaluate --detect` as subprocesses."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from agetool.contract import Challenge25Policy, preprocess_rgb
from agetool.edge_runtime.detect import FaceBox, FaceDetector, FrameChangeGate, crop_face_rgb
from agetool.edge_runtime.face_pipeline import FaceAgePipeline, jitter_face
from agetool.edge_runtime.infer import OnnxAgeModel, open_age_model
from agetool.edge_runtime.pipeline import analyse_frame
from agetool.edge_runtime.track import LaneTracker, smooth
from agetool.errors import AgetoolError
from test_runtime_units import astronaut_bgr
from conftest import YUNET, build_tiny_age_onnx

AGETOOL = [sys.executable, "-m", "agetool.cli"]
FRAME_W, FRAME_H = 640, 480
# (chip scale, rotation in degrees, centre x share, centre y share) for the pasted-face frames
PLACEMENTS = ((0.8, 0.0, 0.5, 0.5), (1.2, 15.0, 0.4, 0.55), (1.0, -20.0, 0.6, 0.45), (0.9, 28.0, 0.45, 0.5),
              (1.4, -8.0, 0.5, 0.5))


def yunet() -> Path:
    if not YUNET.is_file():
        pytest.skip(f"YuNet model not found at {YUNET}")
    return YUNET


def chip_paths(shared_faces: Path, n: int) -> list[tuple[Path, float]]:
    labels = pd.read_csv(shared_faces / "labels.csv").sort_values("file_name").iloc[:n]
    return [(shared_faces / "final_files" / name, float(age)) for name, age in zip(labels["file_name"], labels["real_age"])]


def scene(chip_bgr: np.ndarray, scale: float, angle: float, cx: float, cy: float) -> np.ndarray:
    """The chip resized by `scale`, pasted on a grey frame centred at (cx, cy) shares, and the
    frame rotated by `angle` degrees about the chip's centre (grey outside)."""
    side = int(round(chip_bgr.shape[0] * scale))
    chip = cv2.resize(chip_bgr, (side, side), interpolation=cv2.INTER_AREA)
    frame = np.full((FRAME_H, FRAME_W, 3), 100, np.uint8)
    x0, y0 = int(cx * FRAME_W - side / 2), int(cy * FRAME_H - side / 2)
    frame[y0 : y0 + side, x0 : x0 + side] = chip
    if angle:
        matrix = cv2.getRotationMatrix2D((x0 + side / 2, y0 + side / 2), angle, 1.0)
        frame = cv2.warpAffine(frame, matrix, (FRAME_W, FRAME_H), borderMode=cv2.BORDER_CONSTANT,
                               borderValue=(100, 100, 100))
    return frame


@pytest.fixture
def aligned_model(tmp_path) -> Path:
    return build_tiny_age_onnx(tmp_path / "aligned.onnx", input_size=64, crop="aligned_v1", align_coverage=1.5)


@pytest.fixture
def spread_model(tmp_path) -> Path:
    return build_tiny_age_onnx(tmp_path / "spread.onnx", input_size=32, std_scale=8.0, interval_scale=1.5,
                               mae_uncertainty_years=9.0)


# --- crops ---------------------------------------------------------------------------------
def test_aligned_crop_of_a_rotated_face_equals_the_upright_one(shared_faces, aligned_model):
    [(path, _)] = chip_paths(shared_faces, 1)
    chip = cv2.imread(str(path))
    pipeline = FaceAgePipeline(FaceDetector(yunet()), OnnxAgeModel(aligned_model, "cpu"))
    upright = scene(chip, 1.0, 0.0, 0.5, 0.5)
    rotated = scene(chip, 1.0, 25.0, 0.5, 0.5)
    [face_up] = pipeline.detect(upright)
    [face_rot] = pipeline.detect(rotated)
    assert face_up.landmarks.shape == (5, 2) and face_rot.landmarks.shape == (5, 2)
    aligned_up = pipeline.crop_rgb(upright, face_up).astype(float)
    aligned_rot = pipeline.crop_rgb(rotated, face_rot).astype(float)
    assert aligned_up.shape == aligned_rot.shape == (64, 64, 3)
    aligned_diff = np.abs(aligned_up - aligned_rot).mean()
    # the box crop of the same two frames keeps the tilt
    box_up = preprocess_rgb(crop_face_rgb(upright, face_up, 0.2), 64)
    box_rot = preprocess_rgb(crop_face_rgb(rotated, face_rot, 0.2), 64)
    box_diff = np.abs(box_up - box_rot).mean()
    assert aligned_diff < 10.0, aligned_diff
    assert aligned_diff < 0.5 * box_diff, (aligned_diff, box_diff)


def test_box_margin_model_still_crops_the_box_with_its_margin(shared_faces, tmp_path):
    [(path, _)] = chip_paths(shared_faces, 1)
    frame = scene(cv2.imread(str(path)), 1.0, 0.0, 0.5, 0.5)
    model_path = build_tiny_age_onnx(tmp_path / "box.onnx", face_margin=0.1)
    pipeline = FaceAgePipeline(FaceDetector(yunet()), OnnxAgeModel(model_path, "cpu"))
    assert pipeline.crop_kind == "box_margin"
    [record] = pipeline.analyse(frame)
    expected = OnnxAgeModel(model_path, "cpu").predict_rgb([crop_face_rgb(frame, record.face, 0.1)])[0]
    assert record.age_years == pytest.approx(float(expected), abs=1e-4)
    assert record.age_std_years is None and record.uncertainty_years == pytest.approx(5.0)


def test_aligned_model_with_haar_falls_back_to_the_box_crop_with_one_warning(aligned_model, caplog):
    from skimage import data

    frame = np.ascontiguousarray(data.astronaut()[..., ::-1])
    with caplog.at_level(logging.WARNING):
        pipeline = FaceAgePipeline(FaceDetector("haar"), OnnxAgeModel(aligned_model, "cpu"))
        records = pipeline.analyse(frame) + pipeline.analyse(frame)
    assert records and all(r.face.landmarks is None for r in records)
    assert sum("Haar gives no landmarks" in r.message for r in caplog.records) == 1


# --- the per-face spread ---------------------------------------------------------------------
def test_spread_output_is_found_by_name_and_sets_each_faces_interval(spread_model):
    model = OnnxAgeModel(spread_model, "cpu")
    assert model.output_name == "age_years" and model.std_output_name == "age_std_years"
    dark, bright = np.zeros((1, 32, 32, 3), np.float32), np.full((1, 32, 32, 3), 255, np.float32)
    prediction = model.predict_with_std(np.concatenate([dark, bright]))
    assert prediction.ages_years == pytest.approx([5.0, 65.0], abs=1e-4)  # the age, not the first output
    assert prediction.std_years == pytest.approx([1.0, 9.0], abs=1e-4)

    class OneBox:
        def detect(self, bgr):
            return [FaceBox(10.0, 10.0, 40.0, 40.0, 0.9)]

    frame = np.full((100, 100, 3), 255, np.uint8)
    [row] = analyse_frame(frame, "t", 0, FaceAgePipeline(OneBox(), model), Challenge25Policy())
    assert row.age_std_years == pytest.approx(9.0, abs=0.01)
    assert row.lower_years == pytest.approx(65.0 - 1.5 * 9.0, abs=0.02)  # interval_scale * std, not the MAE (9)
    assert row.upper_years == pytest.approx(65.0 + 1.5 * 9.0, abs=0.02)


def test_tracker_weights_estimates_by_their_spread():
    # one sure estimate (std 1) and two unsure ones (std 10): the mean leans to the sure one
    estimate = smooth([30.0, 40.0, 40.0], model_mae_years=9.0, stds_years=[1.0, 10.0, 10.0], interval_scale=2.0)
    weights = np.array([1.0, 0.01, 0.01])
    assert estimate.age_years == pytest.approx(float(np.dot(weights, [30, 40, 40]) / weights.sum()))
    assert estimate.age_years < 31.0
    # the interval never narrows below the farthest estimate
    assert estimate.lower_years == pytest.approx(estimate.age_years - (40.0 - estimate.age_years))
    tracker = LaneTracker(0.3, 5, 2.0, model_mae_years=9.0, interval_scale=2.0)
    box = FaceBox(0, 0, 100, 100, 0.9)
    for age in (30.0, 30.4, 29.8):
        track = tracker.update(box, age, 0.0, 0.0, std_years=2.0)
    smoothed = track.estimate(9.0)
    assert smoothed.upper_years - smoothed.age_years == pytest.approx(4.0)  # 2 x std 2, not the MAE 9
    plain = LaneTracker(0.3, 5, 2.0, model_mae_years=9.0).update(box, 30.0, 0.0, 0.0)
    assert plain.estimate(9.0).lower_years == pytest.approx(21.0)  # one-output models: as before


# --- runtimes ---------------------------------------------------------------------------------
def test_openvino_reads_the_same_file_and_finds_outputs_by_name(spread_model):
    pytest.importorskip("openvino")
    batch = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    ort = open_age_model(spread_model, "onnxruntime", "cpu").predict_with_std(batch)
    ov_model = open_age_model(spread_model, "openvino")
    assert ov_model.runtime == "openvino" and ov_model.metadata.std_output_name == "age_std_years"
    ov = ov_model.predict_with_std(batch)
    assert ov.ages_years == pytest.approx(ort.ages_years, abs=0.05)
    assert ov.std_years == pytest.approx(ort.std_years, abs=0.05)


def test_runtime_auto_times_both_and_logs_the_choice(tiny_onnx_model, caplog):
    pytest.importorskip("openvino")
    with caplog.at_level(logging.INFO, logger="agetool.edge_runtime.infer"):
        model = open_age_model(tiny_onnx_model, "auto", "cpu")
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("runtime auto:")]
    assert f"runtime auto: {model.runtime}" in line
    assert "onnxruntime" in line and "openvino" in line and line.count(" ms") == 2


def test_runtime_auto_leaves_only_the_chosen_runtime_loaded(tiny_onnx_model):
    # The two runtimes are timed in a child process: the daemon keeps one runtime's memory, not both.
    pytest.importorskip("openvino")
    probe = (
        "import sys, logging; logging.basicConfig(level=logging.INFO)\n"
        "from agetool.edge_runtime.infer import open_age_model\n"
        f"model = open_age_model({str(tiny_onnx_model)!r}, 'auto', 'cpu')\n"
        "print(model.runtime, 'onnxruntime' in sys.modules, 'openvino' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    runtime, ort_loaded, ov_loaded = result.stdout.split()
    assert (ort_loaded, ov_loaded) == (("True", "False") if runtime == "onnxruntime" else ("False", "True"))
    assert "runtime auto: " + runtime in result.stderr


def test_runtime_auto_falls_back_to_onnxruntime_when_the_timing_child_dies(tiny_onnx_model, monkeypatch, caplog):
    from agetool.edge_runtime import runtime_choice

    monkeypatch.setattr(runtime_choice.sys, "executable", "/bin/false")  # the child exits 1, says nothing
    with caplog.at_level(logging.WARNING, logger="agetool.edge_runtime.infer"):
        model = open_age_model(tiny_onnx_model, "auto", "cpu")
    assert model.runtime == "onnxruntime"
    assert any("timing the runtimes failed" in r.getMessage() for r in caplog.records)


def test_runtime_openvino_without_the_package_is_one_clear_line(tmp_path, tiny_onnx_model):
    # A sitecustomize that hides openvino, as on a till installed without the extra.
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['openvino'] = None\n")
    env = {**os.environ, "PYTHONPATH": f"{hide}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = subprocess.run(AGETOOL + ["run", "--demo", "--model", str(tiny_onnx_model), "--runtime", "openvino"],
                            capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "openvino" in errors[0] and "agetool[openvino]" in errors[0]
    assert "Traceback" not in result.stderr
    auto = subprocess.run(AGETOOL + ["run", "--demo", "--model", str(tiny_onnx_model)],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert auto.returncode == 0 and "openvino is not installed" in auto.stderr


# --- detection for a small CPU budget ----------------------------------------------------------
def test_downscaled_detection_maps_boxes_and_landmarks_back(shared_faces):
    [(path, _)] = chip_paths(shared_faces, 1)
    frame = cv2.resize(scene(cv2.imread(str(path)), 0.8, 10.0, 0.4, 0.5), (1280, 960))
    # min_face_px 128: a 4x smaller frame still shows such a face at 32 px, so 320 px is allowed
    [small] = FaceDetector(yunet(), min_face_px=128, detect_max_side=320).detect(frame)
    # exactly what YuNet finds on the 320 x 240 frame, times 4
    [on_small] = FaceDetector(yunet(), min_face_px=8).detect(cv2.resize(frame, (320, 240), interpolation=cv2.INTER_AREA))
    assert [small.x, small.y, small.w, small.h] == pytest.approx([4 * on_small.x, 4 * on_small.y, 4 * on_small.w, 4 * on_small.h])
    assert small.landmarks == pytest.approx(4 * on_small.landmarks)
    assert small.w > 200  # in full-frame pixels, not the detection frame's
    # and close to a full-size detection: within a tenth of the face
    [full] = FaceDetector(yunet()).detect(frame)
    assert np.abs(small.landmarks - full.landmarks).max() < 0.1 * full.w
    assert abs(small.x + small.w / 2 - full.x - full.w / 2) < 0.1 * full.w


def test_downscaling_never_shrinks_the_smallest_wanted_face_below_what_yunet_finds(shared_faces):
    """min_face_px 40 caps the shrink at 40/32 = 1.25x: detect_max_side 320 on a 640 px frame
    detects at 512 px, so a ~45 px face the configuration asks for is not lost."""
    [(path, _)] = chip_paths(shared_faces, 1)
    chip = cv2.resize(cv2.imread(str(path)), (48, 48), interpolation=cv2.INTER_AREA)
    frame = np.full((480, 640, 3), 110, np.uint8)
    frame[200:248, 300:348] = chip
    capped = FaceDetector(yunet(), min_face_px=40, detect_max_side=320).detect(frame)
    at_512 = FaceDetector(yunet(), min_face_px=40, detect_max_side=512).detect(frame)
    assert len(capped) == 1 and [f.as_xywh() for f in capped] == [f.as_xywh() for f in at_512]
    # what the uncapped 2x shrink would have done: YuNet no longer finds the face
    assert FaceDetector(yunet(), min_face_px=8).detect(cv2.resize(frame, (320, 240), interpolation=cv2.INTER_AREA)) == []


def test_detection_goes_fine_only_when_the_coarse_pass_finds_no_face(shared_faces):
    """A large face is found on the 320 px frame in one pass; a 48 px face is not, and the second
    pass (512 px, where it still shows at 38 px) finds it, in full-frame pixels."""
    [(path, _)] = chip_paths(shared_faces, 1)
    chip = cv2.imread(str(path))
    detector = FaceDetector(yunet(), min_face_px=40, detect_max_side=320)
    large = np.full((480, 640, 3), 110, np.uint8)
    large[100:300, 200:400] = cv2.resize(chip, (200, 200), interpolation=cv2.INTER_AREA)
    [big] = detector.detect(large)
    assert detector.passes_run == 1 and big.w > 120
    small = np.full((480, 640, 3), 110, np.uint8)
    small[200:248, 300:348] = cv2.resize(chip, (48, 48), interpolation=cv2.INTER_AREA)
    [face] = detector.detect(small)
    assert detector.passes_run == 2 and 300 <= face.x + face.w / 2 <= 348 and 200 <= face.y + face.h / 2 <= 248
    # a frame with no face pays for both passes and finds nothing
    assert detector.detect(np.full((480, 640, 3), 110, np.uint8)) == [] and detector.passes_run == 2
    # the large face again: back to one pass (the detector kept one YuNet per input size)
    assert len(detector.detect(large)) == 1 and detector.passes_run == 1


def test_frame_change_gate_ignores_noise_and_sees_a_new_face(shared_faces):
    (path_a, _), (path_b, _) = chip_paths(shared_faces, 2)
    first = scene(cv2.imread(str(path_a)), 1.0, 0.0, 0.5, 0.5)
    gate = FrameChangeGate()
    assert gate.changed(first)
    noisy = np.clip(first + np.random.default_rng(0).normal(0, 4, first.shape), 0, 255).astype(np.uint8)
    assert not gate.changed(noisy)
    assert gate.changed(scene(cv2.imread(str(path_b)), 1.0, 0.0, 0.5, 0.5))


def test_jitter_moves_the_face_by_a_share_of_its_size():
    face = FaceBox(100, 100, 100, 100, 0.9, np.array([[130, 140], [170, 140], [150, 160], [135, 180], [165, 180.0]]))
    moved = jitter_face(face, 0.05, np.random.default_rng(1))
    assert 0 < np.abs(moved.landmarks - face.landmarks).max() <= 7.5 + 1e-9
    assert jitter_face(face, 0.0, np.random.default_rng(1)) is face


def test_daemon_stops_inferring_on_a_static_scene_and_starts_again_for_a_new_face(tmp_path, shared_faces):
    from agetool.edge_runtime.config import parse_config
    from agetool.edge_runtime.daemon import Daemon
    from agetool.edge_runtime.sources import Frame

    (path_a, _), (path_b, _) = chip_paths(shared_faces, 2)
    shopper_a = scene(cv2.imread(str(path_a)), 1.0, 0.0, 0.3, 0.5)
    shopper_b = scene(cv2.imread(str(path_b)), 1.0, 0.0, 0.7, 0.5)
    model = build_tiny_age_onnx(tmp_path / "tiny.onnx")
    config = parse_config({
        "lanes": [{"name": "till", "source": str(tmp_path / "unused.png")}],
        "model": {"path": str(model), "providers": "cpu", "runtime": "onnxruntime"},
        "detector": {"path": str(yunet())},
        "tracking": {"settled_estimates": 3, "refresh_s": 600, "track_timeout_s": 600},  # no timing in the test
        "analytics": {"sqlite_path": str(tmp_path / "a.sqlite")},
    })
    daemon = Daemon(config)
    daemon.prepare()
    lane = daemon.lanes["till"]
    t0 = time.monotonic() - 5.0  # frames "captured" in the last few seconds

    def feed(image: np.ndarray, index: int) -> None:
        daemon.process_batch([(lane, Frame("till", index, image, t0 + 0.2 * index, time.time(), "test"))])

    for i in range(10):
        feed(shopper_a, i)
    assert lane.frames_with_face == 10
    assert lane.faces_inferred == 3  # settled after 3 agreeing estimates
    assert lane.detections_run == 1  # the other nine frames did not change
    first_track = lane.tracker.current(t0 + 1.8)
    assert first_track is not None and len(first_track.estimates) == 3
    for i in range(10, 13):
        feed(shopper_b, i)  # a new shopper in another place: a new track, inferred again
    assert lane.faces_inferred == 6 and lane.detections_run == 2  # again until its 3 estimates agree
    assert lane.tracker.current(t0 + 2.4).track_id != first_track.track_id
    decision = daemon.current("till")
    assert decision.n_estimates >= 1 and decision.age_years is not None


# --- evaluate --detect agrees with run -------------------------------------------------------
def test_evaluate_detect_agrees_with_run_on_pasted_faces(tmp_path, shared_faces, aligned_model):
    frames = tmp_path / "photos"
    frames.mkdir()
    rows = []
    for i, ((path, age), placement) in enumerate(zip(chip_paths(shared_faces, len(PLACEMENTS)), PLACEMENTS)):
        name = f"photo{i}.png"
        cv2.imwrite(str(frames / name), scene(cv2.imread(str(path)), *placement))
        rows.append((name, age))
    cv2.imwrite(str(frames / "zz_blank.png"), np.full((FRAME_H, FRAME_W, 3), 100, np.uint8))
    rows.append(("zz_blank.png", 40.0))  # an adult the camera did not see: asked for ID
    labels = tmp_path / "labels.csv"
    pd.DataFrame(rows, columns=["file_name", "real_age"]).to_csv(labels, index=False)
    env = {**os.environ, "AGETOOL_DETECTOR": str(yunet())}

    run = subprocess.run(AGETOOL + ["run", str(frames), "--model", str(aligned_model), "--runtime", "onnxruntime"],
                         capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    run_ages = {}
    for line in run.stdout.splitlines():
        row = json.loads(line)
        assert Path(row["source"]).name not in run_ages  # one face per photo
        run_ages[Path(row["source"]).name] = row["age_years"]
    assert set(run_ages) == {name for name, _ in rows[:-1]}

    report_path, predictions_path = tmp_path / "eval.json", tmp_path / "pred.csv"
    evaluate = subprocess.run(
        AGETOOL + ["evaluate", "--detect", "--model", str(aligned_model), "--images", str(frames), "--labels",
                   str(labels), "--json", str(report_path), "--predictions", str(predictions_path),
                   "--jitter", "0.05", "--seed", "3"],
        capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path,
    )
    assert evaluate.returncode == 0, evaluate.stderr
    report = json.loads(report_path.read_text())
    assert report["n"] == len(PLACEMENTS) and report["n_no_face"] == 1
    assert report["model"]["crop"] == "aligned_v1"
    predictions = pd.read_csv(predictions_path)
    for name, estimate in zip(predictions["file_name"], predictions["estimated_age"]):
        assert estimate == pytest.approx(run_ages[name], abs=0.02), name
    # the faceless adult counts as asked for ID, beside the adults estimated under 25
    true = dict(rows)
    adults_found = [(true[n], e) for n, e in zip(predictions["file_name"], predictions["estimated_age"]) if true[n] >= 25]
    assert report["n_adults_25_plus"] == len(adults_found) + 1
    checked = sum(1 for _, estimate in adults_found if estimate < 25) + 1
    assert report["adults_checked_rate"] == pytest.approx(checked / (len(adults_found) + 1))
    assert report["jitter_fraction"] == 0.05 and report["jitter_seed"] == 3
    assert report["jitter_mae_shift_years"] == pytest.approx(report["jittered_mae"] - report["mae"], abs=1e-3)
    assert report["jitter_mean_abs_estimate_shift_years"] > 0
    plain = subprocess.run(
        AGETOOL + ["evaluate", "--model", str(aligned_model), "--images", str(frames), "--labels", str(labels),
                   "--jitter", "0.05"], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )
    assert plain.returncode == 2 and "--detect" in plain.stderr


def test_keras_files_are_refused_by_the_frame_pipeline(tmp_path, tiny_onnx_model):
    class NoMetadata:
        metadata = None
        path = tmp_path / "m.keras"

    with pytest.raises(AgetoolError, match="states no crop"):
        FaceAgePipeline(FaceDetector(yunet()), NoMetadata())


def test_serve_config_runtime_openvino_runs_the_daemons_model_on_openvino(tmp_path, tiny_onnx_model):
    pytest.importorskip("openvino")
    from agetool.edge_runtime.config import build_serve_config
    from agetool.edge_runtime.daemon import Daemon

    config = build_serve_config(None, str(tmp_path / "unused.png"), model=tiny_onnx_model, runtime="openvino",
                                detector="haar")
    assert config.model.runtime == "openvino" and config.detector.is_haar()
    daemon = Daemon(config.model_copy(update={"analytics": config.analytics.model_copy(
        update={"sqlite_path": tmp_path / "a.sqlite"})}))
    daemon.prepare()
    assert daemon.model.runtime == "openvino" and daemon.lanes["default"].detector.kind == "haar"
    assert daemon.pipeline.model.predict(np.zeros((2, 32, 32, 3), np.float32)) == pytest.approx([5.0, 5.0], abs=1e-3)


@pytest.mark.parametrize("runtime, backend, expected", [
    ("onnxruntime", "auto", "onnxruntime"), ("openvino", "auto", "opencv"), ("openvino", "openvino", "openvino"),
    ("onnxruntime", "opencv", "opencv")])
def test_the_daemon_runs_yunet_where_detector_backend_says(tmp_path, tiny_onnx_model, runtime, backend,
                                                                     expected):
    if runtime == "openvino":
        pytest.importorskip("openvino")
    from agetool.edge_runtime.config import build_serve_config
    from agetool.edge_runtime.daemon import Daemon

    config = build_serve_config(None, str(tmp_path / "unused.png"), model=tiny_onnx_model, runtime=runtime)
    config = config.model_copy(update={
        "analytics": config.analytics.model_copy(update={"sqlite_path": tmp_path / "a.sqlite"}),
        "detector": config.detector.model_copy(update={"backend": backend})})
    daemon = Daemon(config)
    daemon.prepare()
    assert daemon.readiness()[1]["detector"] == {"kind": "yunet", "backend": expected}
    [face] = daemon.lanes["default"].detector.detect(cv2.resize(astronaut_bgr(), (640, 640)))
    assert 80 < face.w < 200  # the astronaut's face, found on the coarse pass and mapped back to 640 px
