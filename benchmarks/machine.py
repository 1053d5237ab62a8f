"""What the report's header says about the machine: CPU, ISA flags, GPU, library versions, load."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path

from pydantic import BaseModel

# Flags that decide which kernels a runtime can use; the rest of /proc/cpuinfo's list is noise here.
INTERESTING_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16",
)
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
# Report name -> distributions that provide it (the first one installed wins).
LIBRARIES = {
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"),
    "openvino": ("openvino",),
    "tensorflow": ("tensorflow", "tensorflow-cpu"),
    "keras": ("keras",),
    "numpy": ("numpy",),
    "opencv": ("opencv-python-headless", "opencv-python", "opencv-contrib-python"),
    "onnx": ("onnx",),
}


class MachineInfo(BaseModel):
    date_utc: str
    platform: str
    python: str
    cpu_model: str
    logical_cpus: int
    physical_cores: int | None
    isa_flags: list[str]
    has_vnni: bool
    gpus: list[str]
    onnxruntime_providers: list[str]
    libraries: dict[str, str | None]
    load_average_start: list[float]
    load_average_end: list[float] | None = None


def read_cpuinfo(path: Path = Path("/proc/cpuinfo")) -> tuple[str, set[str], int | None]:
    """(model name, flags, physical cores) from /proc/cpuinfo; platform fallbacks elsewhere."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or "unknown", set(), None
    model, flags, cores = "unknown", set(), set()
    physical_id = "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name" and model == "unknown":
            model = value
        elif key == "flags" and not flags:
            flags = set(value.split())
        elif key == "physical id":
            physical_id = value
        elif key == "core id":
            cores.add((physical_id, value))
    return model, flags, (len(cores) or None)


def gpu_names() -> list[str]:
    """GPUs nvidia-smi reports; empty without an NVIDIA driver."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name, distributions in LIBRARIES.items():
        versions[name] = None
        for distribution in distributions:
            try:
                versions[name] = importlib_metadata.version(distribution)
                break
            except importlib_metadata.PackageNotFoundError:
                continue
    return versions


def load_average() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def machine_info() -> MachineInfo:
    import onnxruntime as ort

    model, flags, physical = read_cpuinfo()
    return MachineInfo(
        date_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        platform=platform.platform(),
        python=platform.python_version(),
        cpu_model=model,
        logical_cpus=os.cpu_count() or 1,
        physical_cores=physical,
        isa_flags=[f for f in INTERESTING_FLAGS if f in flags],
        has_vnni=any(f in flags for f in VNNI_FLAGS),
        gpus=gpu_names(),
        onnxruntime_providers=list(ort.get_available_providers()),
        libraries=library_versions(),
        load_average_start=load_average(),
    )
