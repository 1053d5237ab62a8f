"""`agetool run` and `agetool serve`: parse options, call one library function.

Nothing heavy is imported here (see agetool/cli.py): the library loads inside the commands."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

PROVIDERS_HELP = "ONNX Runtime provider: auto (TensorRT -> CUDA -> CPU), cpu, cuda or tensorrt."
MODEL_HELP = "Age model .onnx from `agetool export` (default: $AGETOOL_MODEL, else the shipped model)."
DETECTOR_HELP = (
    "YuNet face detector .onnx (default: $AGETOOL_DETECTOR, else the YuNet shipped in the package); "
    "'haar' = OpenCV's Haar cascade."
)
RUNTIME_HELP = (
    "What runs the age model: auto (times ONNX Runtime and OpenVINO here, keeps the faster; a GPU "
    "provider keeps priority), onnxruntime or openvino (pip install 'agetool[openvino]')."
)
RUNTIMES = ("auto", "onnxruntime", "openvino")


def _runtime(value: Optional[str]) -> Optional[str]:
    if value is not None and value not in RUNTIMES:
        raise typer.BadParameter(f"expected one of {', '.join(RUNTIMES)}")
    return value


def run(
    source: Optional[str] = typer.Argument(
        None, help="Image, image folder, video file, camera index (0) or rtsp/http URL."
    ),
    demo: bool = typer.Option(False, "--demo", help="Use the public-domain NASA astronaut portrait (scikit-image)."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    detector: Optional[Path] = typer.Option(None, "--detector", "-d", help=DETECTOR_HELP),
    providers: str = typer.Option("auto", "--providers", help=PROVIDERS_HELP),
    runtime: str = typer.Option("auto", "--runtime", help=RUNTIME_HELP, callback=_runtime),
    max_frames: Optional[int] = typer.Option(None, "--max-frames", min=1, help="Stop after this many frames."),
    policy_age: Optional[float] = typer.Option(None, "--policy-age", help="Challenge age (default 25)."),
    buffer: Optional[float] = typer.Option(
        None, "--buffer", help="Years added to the policy age (default: the model's id_check_buffer_years, else 0)."
    ),
) -> None:
    """Estimate ages once over a source; print one JSON line per face to stdout."""
    from agetool.edge_runtime.pipeline import run_source

    run_source(
        source, sys.stdout, model_path=model, detector_path=detector, providers=providers, demo=demo,
        max_frames=max_frames, policy_age_years=policy_age, buffer_years=buffer, runtime=runtime,
    )


def serve(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (see deploy/agetool.example.yaml)."),
    source: Optional[str] = typer.Option(None, "--source", help="Quick start without a config: one lane named 'default'."),
    host: Optional[str] = typer.Option(None, "--host", help="API address (default 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, "--port", help="API port (default 8080)."),
    token: Optional[str] = typer.Option(
        None, "--token", envvar="AGETOOL_API_TOKEN", show_envvar=True,
        help="Bearer token the API requires (needed to bind anything but loopback).",
    ),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    detector: Optional[Path] = typer.Option(None, "--detector", "-d", help=DETECTOR_HELP),
    providers: Optional[str] = typer.Option(None, "--providers", help=PROVIDERS_HELP),
    runtime: Optional[str] = typer.Option(None, "--runtime", help=RUNTIME_HELP, callback=_runtime),
    validate_config: bool = typer.Option(
        False, "--validate-config", help="Only check the config (keys, values, files); exit 0 or 78."
    ),
) -> None:
    """Run the register daemon: cameras -> faces -> ages -> Challenge 25 decisions over HTTP."""
    from agetool.edge_runtime.daemon import serve_forever
    from agetool.edge_runtime.config import build_serve_config

    overrides = {"host": host, "port": port, "token": token, "model": model, "detector": detector,
                 "providers": providers, "runtime": runtime}
    daemon_config = build_serve_config(config, source, **overrides)
    if validate_config:
        typer.echo(f"config ok: {len(daemon_config.lanes)} lane(s)", err=True)
        return
    raise typer.Exit(serve_forever(daemon_config))
