"""Daemon config: unknown keys, bad values and missing env vars name the key and its line;
`agetool serve --validate-config` exits 0 or 78 with one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agetool.edge_runtime.config import _read_yaml, build_serve_config, load_config, parse_config
from agetool.errors import EXIT_CONFIG, ConfigError
from conftest import REPO, YUNET

AGETOOL = [sys.executable, "-m", "agetool.cli"]


def write_config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "agetool.yaml"
    path.write_text(body)
    return path


def good_body(model: Path, extra: str = "") -> str:
    return f"""\
lanes:
  - name: till-1
    source: /srv/frames
    fps: 5
model:
  path: {model}
  providers: cpu
{extra}"""


def test_good_config_loads_with_defaults(tmp_path, tiny_onnx_model):
    config = load_config(write_config(tmp_path, good_body(tiny_onnx_model)))
    assert config.lanes[0].name == "till-1" and config.lanes[0].fps == 5
    assert config.api.host == "127.0.0.1" and config.api.port == 8080
    assert config.debug_save_crops is False
    assert config.policy.to_policy(model_buffer_years=1.5).threshold_years == 26.5
    assert config.policy.to_policy(model_buffer_years=None).threshold_years == 25.0


def test_unknown_key_names_key_and_line(tmp_path, tiny_onnx_model):
    body = good_body(tiny_onnx_model, "tracking:\n  iou_treshold: 0.5\n")
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, body))
    message = str(info.value)
    assert "line 9" in message and "tracking.iou_treshold" in message and "unknown key" in message
    assert info.value.exit_code == EXIT_CONFIG


def test_bad_value_names_list_item_and_line(tmp_path, tiny_onnx_model):
    body = good_body(tiny_onnx_model).replace("fps: 5", "fps: -2")
    with pytest.raises(ConfigError, match=r"line 4: lanes\.0\.fps: .*greater than 0"):
        load_config(write_config(tmp_path, body))


def test_missing_required_key_points_at_its_parent(tmp_path, tiny_onnx_model):
    body = good_body(tiny_onnx_model).replace("    source: /srv/frames\n", "")
    with pytest.raises(ConfigError, match=r"line 2: lanes\.0\.source: Field required"):
        load_config(write_config(tmp_path, body))


def test_env_placeholders(tmp_path, tiny_onnx_model, monkeypatch):
    body = good_body(tiny_onnx_model).replace(
        "/srv/frames", "rtsp://${CAM_USER}:${CAM_PASS}@10.0.0.9/stream${CAM_SUFFIX:-1}"
    )
    path = write_config(tmp_path, body)
    monkeypatch.setenv("CAM_USER", "admin")
    monkeypatch.delenv("CAM_PASS", raising=False)
    with pytest.raises(ConfigError, match=r"line 3: lanes\.0\.source: environment variable CAM_PASS is not set"):
        load_config(path)
    monkeypatch.setenv("CAM_PASS", "pw")
    assert load_config(path).lanes[0].source == "rtsp://admin:pw@10.0.0.9/stream1"


def test_exposed_api_needs_a_token(tmp_path, tiny_onnx_model):
    body = good_body(tiny_onnx_model, "api:\n  host: 0.0.0.0\n")
    with pytest.raises(ConfigError, match=r"line 8: api: binding 0\.0\.0\.0 .*bearer_token"):
        load_config(write_config(tmp_path, body))
    ok = good_body(tiny_onnx_model, "api:\n  host: 0.0.0.0\n  bearer_token: a-long-enough-secret-token\n")
    assert load_config(write_config(tmp_path, ok)).api.bearer_token == "a-long-enough-secret-token"


def test_duplicate_lanes_bad_yaml_and_missing_files(tmp_path, tiny_onnx_model):
    dup = "lanes:\n  - {name: a, source: 0}\n  - {name: a, source: 1}\n"
    data, lines = _read_yaml(write_config(tmp_path, dup))
    with pytest.raises(ConfigError, match="lanes: lane name 'a' is used twice"):
        parse_config(data, "dup", lines)
    with pytest.raises(ConfigError, match=r"line 3: not valid YAML"):
        load_config(write_config(tmp_path, "lanes:\n  - name: a\n source: [\n"))
    with pytest.raises(ConfigError, match=r"detector\.path: .*nope\.onnx: file not found"):
        load_config(write_config(tmp_path, good_body(tiny_onnx_model, f"detector:\n  path: {tmp_path}/nope.onnx\n")))


def test_shipped_example_config_is_valid(monkeypatch):
    monkeypatch.setenv("CAMERA_USER", "u")
    monkeypatch.setenv("CAMERA_PASSWORD", "p")
    data, lines = _read_yaml(REPO / "deploy" / "agetool.example.yaml")
    config = parse_config(data, "example", lines)
    assert [lane.name for lane in config.lanes] == ["till-1", "till-2"]
    assert config.debug_save_crops is False


def test_quick_start_config_and_overrides(tiny_onnx_model, tmp_path):
    config = build_serve_config(None, "0", port=9123, model=tiny_onnx_model)
    assert config.lanes[0].name == "default" and config.lanes[0].source == 0
    assert config.api.port == 9123 and config.model.path == tiny_onnx_model
    with pytest.raises(ConfigError, match="either --config FILE or --source"):
        build_serve_config(None, None)
    with pytest.raises(ConfigError, match="bearer_token"):
        build_serve_config(None, "0", host="192.168.1.20", model=tiny_onnx_model)


def _cli(args: list[str], env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(AGETOOL + args, capture_output=True, text=True, env=env, timeout=120)


def test_validate_config_cli_exit_codes(tmp_path, tiny_onnx_model):
    good = write_config(tmp_path, good_body(tiny_onnx_model, f"detector:\n  path: {YUNET}\n"))
    result = _cli(["serve", "--validate-config", "--config", str(good)])
    assert result.returncode == 0, result.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(good_body(tiny_onnx_model, "analytics:\n  flush_every: 5\n"))
    result = _cli(["serve", "--validate-config", "--config", str(bad)])
    assert result.returncode == 78
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "line 9" in lines[0] and "analytics.flush_every" in lines[0]
    assert "Traceback" not in result.stderr


def test_missing_default_model_says_pass_model(tmp_path):
    result = _cli(["serve", "--validate-config", "--source", "0"],
                  {"AGETOOL_MODEL": str(tmp_path / "no-model-here.onnx")})
    assert result.returncode == 78
    assert "model.path" in result.stderr and "--model" in result.stderr
