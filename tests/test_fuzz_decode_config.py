"""Property tests (hypothesis) over the two parsers that read what users hand us:

- image decoding (trainer.data.load_face_rgb, used by inspect / evaluate / train / export): random
  bytes and mutated real JPEG / PNG bytes give an RGB uint8 array or an AgetoolError naming the file;
- the daemon config loader (edge_runtime.config): random YAML-ish text and random nested data give
  a DaemonConfig or a one-line ConfigError, never another exception.

Example counts are modest (the whole file runs in a few seconds); the seed is fixed by hypothesis'
database-less derandomised mode so CI failures reproduce."""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agetool.edge_runtime.config import DaemonConfig, load_config, parse_config
from agetool.errors import AgetoolError, ConfigError
from agetool.trainer.data import load_face_rgb

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
WORK = Path(tempfile.mkdtemp(prefix="agetool-fuzz-"))  # one folder for every example (no fixture per example)


def _real_images() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    face = cv2.GaussianBlur(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8), (5, 5), 0)
    return {fmt: cv2.imencode(fmt, face)[1].tobytes() for fmt in (".jpg", ".png", ".bmp", ".webp")}


REAL = _real_images()


def decode_bytes(data: bytes, name: str) -> np.ndarray | None:
    """load_face_rgb on `data`: the array, or None after checking the AgetoolError names the file."""
    path = WORK / name
    path.write_bytes(data)
    try:
        rgb = load_face_rgb(path)
    except AgetoolError as exc:
        message = str(exc)
        assert str(path) in message and "\n" not in message
        return None
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.size > 0
    assert rgb.flags["C_CONTIGUOUS"]
    return rgb


@FUZZ
@given(data=st.binary(max_size=2048), suffix=st.sampled_from([".jpg", ".png", ".webp", ".bin", ""]))
def test_random_bytes_decode_or_fail_cleanly(data, suffix):
    decode_bytes(data, f"random{suffix}")


@st.composite
def mutated_image(draw) -> tuple[str, bytes]:
    fmt = draw(st.sampled_from(sorted(REAL)))
    data = bytearray(REAL[fmt])
    for _ in range(draw(st.integers(0, 12))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    action = draw(st.sampled_from(["none", "truncate", "splice", "repeat_header"]))
    if action == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    elif action == "splice":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(min_size=1, max_size=256)) + data[at:]
    elif action == "repeat_header":
        data = data[:64] + data
    return fmt, bytes(data)


@FUZZ
@given(case=mutated_image())
def test_mutated_real_images_decode_or_fail_cleanly(case):
    fmt, data = case
    decode_bytes(data, f"mutated{fmt}")


def test_the_unmutated_images_decode():
    for fmt, data in REAL.items():
        rgb = decode_bytes(data, f"clean{fmt}")
        assert rgb is not None and rgb.shape == (48, 48, 3), fmt


# --- config loader -------------------------------------------------------------------------
FRAGMENTS = [
    "lanes:", "  - name: till-1", "    source: 0", "    source: rtsp://u:p@127.0.0.1/s", "    fps: 5",
    "    fps: -1", "    fps: [1]", "model:", "  path: {model}", "  providers: cpu", "  providers: gpu",
    "api:", "  host: 0.0.0.0", "  port: 8080", "  port: 99999", "  bearer_token: ${TOKEN}",
    "  bearer_token: ${TOKEN:-0123456789abcdef}", "events:", "  jsonl: off", "  webhook_url: ftp://x",
    "analytics:", "  sqlite_path: {work}/a.sqlite", "  flush_interval_s: 0", "tracking: {iou_threshold: 2}",
    "debug_save_crops: true", "debug_crops_dir: {work}/crops", "? [a]", ": b", "- x", "&a [1, 2]", "*a",
    "<<: *a", "!!python/object:os.system", "'unterminated", '"\\xZZ"', "{", "]", "---", "...", "%YAML 1.1",
    "\t", "key: \x00", "lanes: []", "lanes: {}", "lanes: null", "~", "0x1F", "1e999", ".nan",
]


BASE_LINES = ["lanes:", "  - name: till-1", "    source: 0", "    fps: 5", "model:", "  path: {model}",
              "  providers: cpu", "api:", "  port: 8080", "events:", "  jsonl: off", "analytics:",
              "  sqlite_path: {work}/a.sqlite", "  flush_interval_s: 5"]
FRAGMENT = st.sampled_from(FRAGMENTS) | st.text(max_size=20)


@st.composite
def yamlish_text(draw, model: str, work: str) -> str:
    """A valid config with 0-4 random line edits (drop, replace, insert, re-indent)."""
    lines = list(BASE_LINES)
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["drop", "replace", "insert", "indent"]))
        at = draw(st.integers(0, max(0, len(lines) - 1)))
        if op == "insert" or not lines:
            lines.insert(at, draw(FRAGMENT))
        elif op == "drop":
            del lines[at]
        elif op == "replace":
            lines[at] = draw(FRAGMENT)
        else:
            lines[at] = draw(st.sampled_from(["", " ", "  ", "      ", "\t"])) + lines[at].lstrip()
    return "\n".join(line.replace("{model}", model).replace("{work}", work) for line in lines) + "\n"


def _load_or_config_error(path: Path) -> DaemonConfig | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith(f"config {path}") and "\n" not in message, message
        return None


@pytest.fixture(scope="module")
def fuzz_model(tmp_path_factory) -> Path:
    from conftest import build_tiny_age_onnx

    return build_tiny_age_onnx(tmp_path_factory.mktemp("fuzz-model") / "tiny.onnx")


def test_yamlish_text_gives_a_config_or_one_config_error(fuzz_model):
    work = WORK / "cfg"
    work.mkdir(exist_ok=True)
    path = work / "agetool.yaml"
    loaded = []

    @FUZZ
    @given(text=yamlish_text(str(fuzz_model), str(work)))
    def check(text: str) -> None:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        config = _load_or_config_error(path)
        if config is not None:
            loaded.append(config)
            assert config.lanes and (config.api.bearer_token or config.api.host in ("127.0.0.1", "localhost"))

    check()
    good = work / "good.yaml"
    good.write_text(f"lanes:\n  - name: till-1\n    source: 0\nmodel:\n  path: {fuzz_model}\n")
    assert _load_or_config_error(good) is not None  # the harness can tell good from bad


FIELD_NAMES = ["lanes", "name", "source", "fps", "model", "path", "providers", "intra_op_threads", "detector",
               "score_threshold", "min_face_px", "policy", "policy_age_years", "buffer_years", "tracking",
               "capture", "queue_size", "api", "host", "port", "bearer_token", "events", "jsonl",
               "webhook_url", "analytics", "sqlite_path", "debug_save_crops", "debug_crops_dir", "unknown"]
SCALARS = (st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=True)
           | st.text(max_size=12) | st.sampled_from(["0", "till-1", "127.0.0.1", "0.0.0.0", "http://x", "cpu"]))
STRUCTURES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(FIELD_NAMES) | st.text(max_size=6) | st.integers(0, 3), children, max_size=5),
    max_leaves=25,
)


BASE_CONFIG = {"lanes": [{"name": "till-1", "source": 0, "fps": 5}], "model": {"providers": "cpu"},
               "api": {"port": 8080}, "tracking": {"iou_threshold": 0.3}, "events": {"jsonl": "off"}}


@st.composite
def mutated_config(draw) -> object:
    """The base config with 0-3 values (at any depth) replaced by random structures, or pure noise."""
    if draw(st.integers(0, 9)) == 0:
        return draw(STRUCTURES)
    import copy

    data = copy.deepcopy(BASE_CONFIG)
    for _ in range(draw(st.integers(0, 3))):
        parent: object = data
        key = draw(st.sampled_from(sorted(data, key=str)) | st.sampled_from(FIELD_NAMES))
        while isinstance(parent, (dict, list)) and draw(st.booleans()):
            child = parent.get(key) if isinstance(parent, dict) else parent[key % len(parent)] if parent else None
            if not isinstance(child, (dict, list)) or not child:
                break
            parent = child
            key = draw(st.sampled_from(sorted(child, key=str))) if isinstance(child, dict) else draw(st.integers(0, 5))
        if isinstance(parent, dict):
            if draw(st.booleans()) and key in parent:
                del parent[key]
            else:
                parent[key] = draw(STRUCTURES)
        elif isinstance(parent, list) and parent:
            parent[key % len(parent)] = draw(STRUCTURES)
    return data


@FUZZ
@given(data=mutated_config())
def test_random_structures_give_a_config_or_one_config_error(data):
    try:
        config = parse_config(data, "fuzz")
    except ConfigError as exc:
        assert str(exc).startswith("fuzz") and "\n" not in str(exc)
    else:
        assert isinstance(config, DaemonConfig) and config.lanes


def test_nested_aliases_are_refused_quickly(tmp_path):
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]  # 9^9 items if expanded
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\nlanes: [{name: a, source: 0}]\n")
    with pytest.raises(ConfigError, match="more than 10000 keys and list items"):
        load_config(path)
