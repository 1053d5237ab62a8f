"""`agetool bench` for real on tiny models: worker processes, ORT/OpenVINO sessions, real faces,
YuNet on the public-domain sample, and the report files they produce. No timing assertions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from agetool.benchmarks.bench import BenchConfig, labelled_rows, run_bench
from agetool.benchmarks.floor import PeakThroughput, count_ops_proto, floor_ms
from agetool.benchmarks.machine import read_cpuinfo
from agetool.benchmarks.report import LATENCY_PNG, MAE_BANDS_PNG, MAE_PNG, REPORT_JSON, REPORT_MD
from agetool.benchmarks.timing import TimingPlan, summarise_ms, time_calls
from agetool.contract import BAND_NAMES, INPUT_NAME, OUTPUT_NAME, ModelMetadata
from conftest import YUNET, build_tiny_age_onnx

SIZE = 32


def conv_model_proto(input_size: int = SIZE, variant: str = "fp16", quantized: bool = False):
    """A real conv age model: Transpose -> Conv 3->4 (3x3, pad 1) -> GlobalAveragePool -> MatMul 4->1 -> +30.

    With `quantized`, the Conv reads both inputs through DequantizeLinear (ORT's QDQ format)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from agetool import __version__

    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((4, 3, 3, 3)) * 0.01).astype(np.float32)
    nodes = [helper.make_node("Transpose", [INPUT_NAME], ["nchw"], perm=[0, 3, 1, 2])]
    inits = [
        numpy_helper.from_array(np.full((4, 1), 0.1, dtype=np.float32), "head"),
        numpy_helper.from_array(np.array([30.0], dtype=np.float32), "offset"),
    ]
    if quantized:
        inits += [
            numpy_helper.from_array(np.clip(weight * 1000, -127, 127).astype(np.int8), "w_q"),
            numpy_helper.from_array(np.array(0.001, dtype=np.float32), "w_scale"),
            numpy_helper.from_array(np.array(1.0, dtype=np.float32), "x_scale"),
            numpy_helper.from_array(np.array(0, dtype=np.uint8), "x_zero"),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", ["nchw", "x_scale", "x_zero"], ["x_q"]),
            helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"]),
            helper.make_node("DequantizeLinear", ["w_q", "w_scale"], ["w_dq"]),
            helper.make_node("Conv", ["x_dq", "w_dq"], ["conv"], pads=[1, 1, 1, 1]),
        ]
    else:
        inits.append(numpy_helper.from_array(weight, "w"))
        nodes.append(helper.make_node("Conv", ["nchw", "w"], ["conv"], pads=[1, 1, 1, 1]))
    nodes += [
        helper.make_node("GlobalAveragePool", ["conv"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "head"], ["raw"]),
        helper.make_node("Add", ["raw", "offset"], [OUTPUT_NAME]),
    ]
    graph = helper.make_graph(
        nodes, "conv_age",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", input_size, input_size, 3])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", 1])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = ModelMetadata(agetool_version=__version__, input_size=input_size, backbone="conv-test", variant=variant)
    onnx.helper.set_model_props(model, meta.to_props())
    onnx.checker.check_model(model)
    return model


def conv_macs(input_size: int, batch: int) -> int:
    return batch * (4 * input_size * input_size * 3 * 3 * 3 + 4)


# --- Work and floor -------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [1, 8])
def test_counts_conv_and_matmul_work_at_the_batch(batch: int) -> None:
    ops = count_ops_proto(conv_model_proto(), batch)
    assert ops.float_flops == 2 * conv_macs(SIZE, batch)
    assert ops.int8_ops == 0
    assert (ops.nodes_counted, ops.nodes_unknown_shape) == (2, 0)


def test_qdq_convolutions_count_as_int8_work() -> None:
    ops = count_ops_proto(conv_model_proto(quantized=True), 2)
    assert ops.int8_ops == 2 * 2 * 4 * SIZE * SIZE * 27
    assert ops.float_flops == 2 * 2 * 4  # the float MatMul head


def test_floor_uses_the_peak_of_each_precision() -> None:
    peak = PeakThroughput(
        matmul_size=64, fp32_gflops_numpy=100.0, fp32_gflops_onnxruntime=None, fp32_gflops=100.0,
        bf16_gflops_openvino=200.0, int8_gops_onnxruntime=400.0, has_vnni=True, windows=1, window_s=0.1,
    )
    ops = count_ops_proto(conv_model_proto(quantized=True), 1)
    expected_ms = (ops.float_flops / 100e9 + ops.int8_ops / 400e9) * 1000
    assert floor_ms(ops, peak) == pytest.approx(expected_ms)
    float_ops = count_ops_proto(conv_model_proto(), 1)
    assert floor_ms(float_ops, peak, "bf16") == pytest.approx(floor_ms(float_ops, peak) / 2)
    assert floor_ms(count_ops_proto(conv_model_proto(), 1).model_copy(update={"float_flops": 0.0}), peak) is None


# --- Timing and machine --------------------------------------------------------------------------
def test_timing_rotates_inputs_and_meets_the_minimum_runs() -> None:
    seen: list[int] = []
    inputs = [np.full((1,), i) for i in range(5)]
    latencies = time_calls(lambda x: seen.append(int(x[0])), inputs, TimingPlan(warmup_runs=2, min_runs=12, min_seconds=0))
    assert len(latencies) == 12 and len(seen) == 14
    assert seen[2:] == [i % 5 for i in range(12)]
    summary = summarise_ms(list(range(1, 101)))
    assert (summary.runs, summary.p50_ms, summary.min_ms, summary.max_ms) == (100, 50.5, 1, 100)
    assert summary.p95_ms == pytest.approx(95.05)


def test_reads_cpu_model_flags_and_physical_cores(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    block = "processor\t: {i}\nmodel name\t: Test CPU 9000\nphysical id\t: 0\ncore id\t: {core}\nflags\t\t: fpu avx2 avx512_vnni\n\n"
    cpuinfo.write_text("".join(block.format(i=i, core=i // 2) for i in range(4)))
    model, flags, cores = read_cpuinfo(cpuinfo)
    assert model == "Test CPU 9000" and {"avx2", "avx512_vnni"} <= flags and cores == 2


# --- The bench, for real -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory, shared_faces: Path):
    import onnx

    folder = tmp_path_factory.mktemp("bench")
    tiny = build_tiny_age_onnx(folder / "tiny.onnx", input_size=SIZE)
    conv = folder / "conv_fp16.onnx"
    onnx.save(conv_model_proto(), str(conv))
    config = BenchConfig(
        models=[tiny, conv], images=shared_faces, limit=24, batches=[1, 4], providers=["cpu", "tensorrt"],
        timing=TimingPlan(warmup_runs=1, min_runs=3, min_seconds=0), e2e="demo", daemon_seconds=4,
        detector=YUNET if YUNET.is_file() else None, floor_matmul_size=128, floor_windows=1,
        floor_window_s=0.01, out=folder / "report",
    )
    report = run_bench(config)
    return config, report, folder / "report"


def test_report_files_are_written_and_readable(bench_run) -> None:
    _, report, out = bench_run
    data = json.loads((out / REPORT_JSON).read_text())
    assert {"machine", "config", "labelled_set", "floor", "models", "rows", "accuracy", "e2e", "notes"} <= set(data)
    assert len(data["floor_measurements"]) == 2  # at the start and at the end
    assert data["floor"]["fp32_gflops"] == max(m["fp32_gflops"] for m in data["floor_measurements"])
    assert data["machine"]["cpu_model"] and data["machine"]["libraries"]["onnxruntime"]
    assert data["machine"]["load_average_start"] and data["machine"]["load_average_end"]
    for name in (LATENCY_PNG, MAE_PNG, MAE_BANDS_PNG):
        image = cv2.imread(str(out / name))
        assert image is not None and image.shape[0] > 100 and image.shape[1] > 100, name
    markdown = (out / REPORT_MD).read_text()
    for needle in ("# agetool bench report", "**CPU**", "**Load average**", "## Results", "| variant | runtime |",
                   "## Physical floor", "## End to end", "## Accuracy on the labelled set", "mae_by_band.png"):
        assert needle in markdown, needle
    results = markdown.split("## Results", 1)[1].split("## Accuracy", 1)[0]
    failed_groups = {(r.model, r.runtime, r.provider) for r in report.rows if r.status != "ok"}
    ok_rows = [r for r in report.rows if r.status == "ok"]
    assert len([line for line in results.splitlines() if line.startswith("| fp")]) == len(ok_rows) + len(failed_groups)
    assert "| ONNX Runtime | TensorRT | 1, 4 | failed: TensorrtExecutionProvider not available" in results
    assert not list(out.glob(".*.tmp"))


def test_rows_cover_every_variant_runtime_and_batch(bench_run) -> None:
    _, report, _ = bench_run
    keys = [(r.model, r.runtime, r.provider, r.batch) for r in report.rows]
    assert len(keys) == len(set(keys))
    for model in ("tiny.onnx", "conv_fp16.onnx"):
        for provider in ("CPU", "TensorRT"):
            assert {r.batch for r in report.rows if (r.model, r.runtime, r.provider) == (model, "ONNX Runtime", provider)} == {1, 4}
    # OpenVINO runs the FP32 file (at its default precision, and at f32 where that is bf16), not the FP16 one
    openvino = [r for r in report.rows if r.runtime == "OpenVINO"]
    assert {r.model for r in openvino} == {"tiny.onnx"} and len(openvino) in (2, 4)


def test_unavailable_provider_is_a_failed_row_with_the_reason(bench_run) -> None:
    _, report, _ = bench_run
    failed = [r for r in report.rows if r.provider == "TensorRT"]
    assert failed and all(r.status.startswith("failed: TensorrtExecutionProvider not available") for r in failed)
    assert all(r.p50_ms is None and r.mae is None and r.speedup is None for r in failed)


def test_ok_rows_have_latency_memory_and_the_fp32_baseline(bench_run) -> None:
    _, report, _ = bench_run
    ok = [r for r in report.rows if r.status == "ok"]
    assert {r.model for r in ok} == {"tiny.onnx", "conv_fp16.onnx"}
    for row in ok:
        assert 0 < row.p50_ms <= row.p95_ms <= row.p99_ms
        assert row.runs >= 3 and row.images_per_s > 0 and row.peak_rss_mib > 10 and row.speedup > 0
    baseline = next(r for r in ok if (r.model, r.runtime, r.provider, r.batch) == ("tiny.onnx", "ONNX Runtime", "CPU", 1))
    assert baseline.speedup == 1.0 and baseline.delta_mae == 0.0
    conv_rows = [r for r in ok if r.model == "conv_fp16.onnx"]
    assert all(r.gops == pytest.approx(2 * conv_macs(SIZE, r.batch) / 1e9, abs=1e-3) for r in conv_rows)
    assert all(r.x_floor is not None and r.x_floor > 0 for r in conv_rows)
    openvino = [r for r in report.rows if r.runtime == "OpenVINO"]
    if all(r.status == "ok" for r in openvino):
        assert {r.provider for r in openvino} & {"CPU f32", "CPU bf16"}
    else:
        assert all(r.status.startswith("failed: openvino not installed") for r in openvino)


def test_mae_matches_agetool_evaluate_on_the_same_faces(bench_run) -> None:
    from agetool.trainer.evaluate import evaluate_model

    config, report, _ = bench_run
    rows, _ = labelled_rows(config)
    expected = evaluate_model(config.models[0], rows, providers="cpu")
    tiny_ort = next(r for r in report.rows if (r.model, r.runtime, r.provider, r.batch) == ("tiny.onnx", "ONNX Runtime", "CPU", 4))
    assert tiny_ort.mae == pytest.approx(expected.mae, abs=1e-3) and tiny_ort.n_scored == expected.n == 24
    conv_row = next(r for r in report.rows if r.model == "conv_fp16.onnx" and r.provider == "CPU")
    assert conv_row.delta_mae == pytest.approx(conv_row.mae - tiny_ort.mae, abs=1e-3)
    entry = next(a for a in report.accuracy if a.model == "tiny.onnx" and a.runtime == "ONNX Runtime")
    assert set(entry.metrics["mae_by_band"]) == set(BAND_NAMES)
    assert sum(entry.metrics["count_by_band"].values()) == 24


def test_end_to_end_rows_time_every_stage(bench_run) -> None:
    _, report, _ = bench_run
    assert [e.model for e in report.e2e] == ["tiny.onnx", "conv_fp16.onnx"]
    for row in report.e2e:
        assert row.status == "ok", row.status
        result = row.result
        assert result["frames"] >= 3 and result["frames_per_s"] > 0
        assert set(result["stage_share"]) == {"decode", "detect", "crop", "infer", "decide"}
        assert math.isclose(sum(result["stage_share"].values()), 1.0, abs_tol=0.01)
        assert result["latency"]["p50_ms"] <= result["latency"]["p95_ms"]
        if YUNET.is_file():
            assert result["detector"] == "yunet" and result["frames_with_face_share"] > 0.5
    assert [(d.model, d.variant) for d in report.daemon] == [("tiny.onnx", "per_frame"), ("tiny.onnx", "budget")]
    for row in report.daemon:
        assert row.status == "ok", row.status
        lane = row.result
        assert lane["frames_processed"] >= 3 and lane["cpu_percent_of_one_core"] > 0
        assert lane["frame_to_decision_ms"]["p50"] <= lane["frame_to_decision_ms"]["p95"]
        assert lane["decisions_compared"] == 120 and 0 <= lane["decisions_differ_share"] <= 1
        assert 0 < lane["rss_mb"] <= lane["peak_rss_mb"]  # the serve process's own, read from /proc
        # from its /metrics: the scene's first placement (a face under min_face_px) is never inferred
        assert lane["faces_inferred"] > 0 and lane["inference_ms_mean"] > 0
    per_frame, budget = (row.result for row in report.daemon)
    assert per_frame["detections_run"] == per_frame["frames_processed"]  # no skipping before the budget
    assert budget["detections_run"] < budget["frames_processed"]  # still frames are not detected again
