"""YuNet face detection on OpenCV's DNN module, ONNX Runtime or OpenVINO.

OpenCV's `FaceDetectorYN` runs YuNet in OpenCV's DNN module. The same network runs faster in ONNX
Runtime (measured 2026-12-02, 2-core Xeon, 320x240, two threads: OpenCV 5.3 ms, ONNX Runtime
2.3 ms, OpenVINO f32 2.8 ms), which the daemon has loaded for the age model anyway when that runs
there. Any of the three runs the network here, and one numpy decoder turns its twelve outputs
into faces the way FaceDetectorYN does (frame padded right/bottom to a multiple of 32, score =
sqrt(cls x obj), non-maximum suppression on integer boxes), so every backend agrees with OpenCV's
own detector (within 1e-4 px on 80 real frames)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

from agetool.errors import AgetoolError

log = logging.getLogger(__name__)

Backend = Literal["opencv", "onnxruntime", "openvino"]
BACKENDS: tuple[str, ...] = ("opencv", "onnxruntime", "openvino")
STRIDES = (8, 16, 32)
OUTPUT_NAMES = tuple(f"{kind}_{stride}" for kind in ("cls", "obj", "bbox", "kps") for stride in STRIDES)
PAD_DIVISOR = 32
NMS_THRESHOLD = 0.3
TOP_K = 50
ROW_WIDTH = 15  # x, y, w, h, five (x, y) landmarks, score: FaceDetectorYN's row

Outputs = dict[str, np.ndarray]


def padded_size(width: int, height: int) -> tuple[int, int]:
    return ((width - 1) // PAD_DIVISOR + 1) * PAD_DIVISOR, ((height - 1) // PAD_DIVISOR + 1) * PAD_DIVISOR


def input_blob(bgr: np.ndarray) -> np.ndarray:
    """The BGR frame as YuNet's NCHW float input, zero-padded right and bottom."""
    height, width = bgr.shape[:2]
    padded_w, padded_h = padded_size(width, height)
    blob = np.zeros((1, 3, padded_h, padded_w), np.float32)
    blob[0, :, :height, :width] = bgr.transpose(2, 0, 1)
    return blob


def decode(outputs: Outputs, padded_w: int, padded_h: int, score_threshold: float,
           nms_threshold: float = NMS_THRESHOLD, top_k: int = TOP_K) -> np.ndarray:
    """YuNet's outputs as FaceDetectorYN's rows (n, 15) in the padded input's pixels."""
    import cv2

    rows = []
    for stride in STRIDES:
        cols = padded_w // stride
        cls = np.clip(outputs[f"cls_{stride}"].reshape(-1), 0.0, 1.0)
        obj = np.clip(outputs[f"obj_{stride}"].reshape(-1), 0.0, 1.0)
        score = np.sqrt(cls * obj)
        keep = np.flatnonzero(score >= score_threshold)
        if keep.size == 0:
            continue
        bbox = outputs[f"bbox_{stride}"].reshape(-1, 4)[keep]
        kps = outputs[f"kps_{stride}"].reshape(-1, 10)[keep]
        col = (keep % cols).astype(np.float32)[:, None]
        row = (keep // cols).astype(np.float32)[:, None]
        centre = (np.hstack([col, row]) + bbox[:, :2]) * stride
        size = np.exp(bbox[:, 2:]) * stride
        points = np.empty_like(kps)
        points[:, 0::2] = (kps[:, 0::2] + col) * stride
        points[:, 1::2] = (kps[:, 1::2] + row) * stride
        rows.append(np.hstack([centre - size / 2, size, points, score[keep, None]]).astype(np.float32))
    if not rows:
        return np.zeros((0, ROW_WIDTH), np.float32)
    faces = np.concatenate(rows)
    if len(faces) > 1:
        boxes = [(int(x), int(y), int(w), int(h)) for x, y, w, h in faces[:, :4]]
        kept = cv2.dnn.NMSBoxes(boxes, faces[:, 14].tolist(), score_threshold, nms_threshold, 1.0, top_k)
        faces = faces[np.asarray(kept, dtype=np.int64).reshape(-1)]
    return faces


class YuNet:
    """One YuNet file on one backend; `detect` takes a BGR frame of any size. Not thread-safe (one
    per thread, like OpenCV's detectors)."""

    def __init__(self, path: Path | str, backend: Backend = "opencv", score_threshold: float = 0.7,
                 threads: int | None = None) -> None:
        if backend not in BACKENDS:
            raise AgetoolError(f"detector backend {backend!r}: expected one of {', '.join(BACKENDS)}")
        self.path = Path(path)
        self.backend = backend
        self.score_threshold = score_threshold
        self._forward = _open(self.path, backend, threads)

    def detect(self, bgr: np.ndarray) -> np.ndarray:
        """Faces as FaceDetectorYN rows (n, 15): x, y, w, h, five landmarks, score."""
        blob = input_blob(bgr)
        outputs = self._forward(blob)
        return decode(outputs, blob.shape[3], blob.shape[2], self.score_threshold)


def _open(path: Path, backend: str, threads: int | None) -> Callable[[np.ndarray], Outputs]:
    opener = {"opencv": _opencv_forward, "onnxruntime": _onnxruntime_forward, "openvino": _openvino_forward}[backend]
    try:
        return opener(path, threads)
    except AgetoolError:
        raise
    except Exception as exc:  # each runtime raises its own types for an unreadable file
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AgetoolError(f"detector {path}: not a loadable YuNet model ({first_line})") from None


def _per_input_size(build: Callable[[tuple[int, ...]], Any]) -> Callable[[tuple[int, ...]], Any]:
    """A runner per input shape, built on first use; at most two (the coarse and the fine pass):
    a third size means the camera's frame size changed, so start over."""
    built: dict[tuple[int, ...], Any] = {}

    def runner(shape: tuple[int, ...]) -> Any:
        if shape not in built:
            if len(built) >= 2:
                built.clear()
            built[shape] = build(shape)
        return built[shape]

    return runner


def _check_outputs(path: Path, names: list[str]) -> None:
    missing = [name for name in OUTPUT_NAMES if name not in names]
    if missing:
        raise AgetoolError(f"detector {path}: not a YuNet model (no output {missing[0]})")


def _opencv_forward(path: Path, threads: int | None) -> Callable[[np.ndarray], Outputs]:
    import cv2

    _check_outputs(path, list(cv2.dnn.readNetFromONNX(str(path)).getUnconnectedOutLayersNames()))
    # One network per input size: reshaping one network on every switch between the coarse and
    # the fine pass cost 1.5-5 ms a call.
    net_for = _per_input_size(lambda shape: cv2.dnn.readNetFromONNX(str(path)))

    def forward(blob: np.ndarray) -> Outputs:
        sized = net_for(blob.shape)
        sized.setInput(blob)
        return dict(zip(OUTPUT_NAMES, sized.forward(list(OUTPUT_NAMES))))

    return forward


def _onnxruntime_forward(path: Path, threads: int | None) -> Callable[[np.ndarray], Outputs]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    # The file declares a 640x640 input; ONNX Runtime checks inputs against it, so free the height
    # and width (what OpenCV's DNN module does by itself). One session then serves every size.
    session = ort.InferenceSession(free_input_height_width(path.read_bytes()), options,
                                   providers=["CPUExecutionProvider"])
    _check_outputs(path, [output.name for output in session.get_outputs()])
    input_name = session.get_inputs()[0].name
    names = list(OUTPUT_NAMES)
    # A larger input than the smallest seen (the daemon's fine pass, run only when the coarse pass
    # found no face) hands its activations back to the system afterwards: the arena would
    # otherwise keep the larger size's memory for good (7 MB at 512x384 after 320x240).
    shrink = ort.RunOptions()
    shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    smallest_area = [0]

    def forward(blob: np.ndarray) -> Outputs:
        area = blob.shape[2] * blob.shape[3]
        if not smallest_area[0] or area < smallest_area[0]:
            smallest_area[0] = area
        run_options = shrink if area > smallest_area[0] else None
        return dict(zip(names, session.run(names, {input_name: blob}, run_options)))

    return forward


def _openvino_forward(path: Path, threads: int | None) -> Callable[[np.ndarray], Outputs]:
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    first_names = [set(output.get_names()) for output in model.outputs]
    _check_outputs(path, sorted(set().union(*first_names)))
    position = {name: next(i for i, names in enumerate(first_names) if name in names) for name in OUTPUT_NAMES}
    # f32: on CPUs with AMX or AVX512-BF16 OpenVINO would compute in bf16, and the boxes of large
    # faces then moved by up to 4 px from OpenCV's (UTKFace chips, 2026-12-02).
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    def compiled(shape: tuple[int, ...]):
        sized = model.clone()
        sized.reshape(list(shape))
        return core.compile_model(sized, "CPU", config).create_infer_request()

    # Static shapes, one compiled model per input size (OpenVINO's CPU plugin is fastest with them).
    request_for = _per_input_size(compiled)

    def forward(blob: np.ndarray) -> Outputs:
        request = request_for(blob.shape)
        request.infer({0: blob})
        return {name: request.get_output_tensor(at).data for name, at in position.items()}

    return forward


# --- a minimal protobuf edit: free the input's height and width ------------------------------------
# Importing the `onnx` package costs the daemon ~16 MB of memory; this edit needs four message levels.
_MODEL_GRAPH, _GRAPH_INPUT, _GRAPH_OUTPUT, _GRAPH_VALUE_INFO = 7, 11, 12, 13
_VALUE_TYPE, _TYPE_TENSOR, _TENSOR_SHAPE, _SHAPE_DIM, _DIM_PARAM = 2, 1, 2, 1, 2
_LENGTH_DELIMITED = 2


def free_input_height_width(model: bytes) -> bytes:
    """The ONNX model with its first input's dims 2 and 3 symbolic ("height", "width"), the
    outputs' dims after the batch symbolic, and the shape annotations of inner tensors dropped
    (they were inferred for the declared size)."""
    def free_dims(shape: bytes, keep: int, names: list[str]) -> bytes:
        out, index = [], 0
        for number, wire, raw, payload in _fields(shape):
            if number == _SHAPE_DIM and wire == _LENGTH_DELIMITED and index >= keep:
                name = names[index - keep] if index - keep < len(names) else f"d{index}"
                raw = _field(_SHAPE_DIM, _field(_DIM_PARAM, name.encode()))
            index += number == _SHAPE_DIM
            out.append(raw)
        return b"".join(out)

    def in_value(value: bytes, keep: int, names: list[str]) -> bytes:
        return _edit_first(value, _VALUE_TYPE, lambda t: _edit_first(
            t, _TYPE_TENSOR, lambda tensor: _edit_first(tensor, _TENSOR_SHAPE, lambda s: free_dims(s, keep, names))))

    def graph(body: bytes) -> bytes:
        out, first_input = [], True
        for number, wire, raw, payload in _fields(body):
            if number == _GRAPH_VALUE_INFO:
                continue
            if number == _GRAPH_INPUT and first_input:
                raw, first_input = _field(number, in_value(payload, 2, ["height", "width"])), False
            elif number == _GRAPH_OUTPUT:
                raw = _field(number, in_value(payload, 1, []))
            out.append(raw)
        return b"".join(out)

    return _edit_first(model, _MODEL_GRAPH, graph)


def _varint(buffer: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buffer[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _fields(message: bytes):
    """(field number, wire type, the field's raw bytes, its payload for length-delimited fields)."""
    pos = 0
    while pos < len(message):
        start = pos
        tag, pos = _varint(message, pos)
        wire = tag & 7
        payload = None
        if wire == 0:
            _, pos = _varint(message, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == _LENGTH_DELIMITED:
            length, pos = _varint(message, pos)
            payload, pos = message[pos:pos + length], pos + length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > len(message):
            raise ValueError("truncated protobuf message")
        yield tag >> 3, wire, message[start:pos], payload


def _field(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | _LENGTH_DELIMITED) + _encode_varint(len(payload)) + payload


def _edit_first(message: bytes, number: int, edit: Callable[[bytes], bytes]) -> bytes:
    out, done = [], False
    for field_number, wire, raw, payload in _fields(message):
        if not done and field_number == number and wire == _LENGTH_DELIMITED:
            raw, done = _field(number, edit(payload)), True
        out.append(raw)
    return b"".join(out)
