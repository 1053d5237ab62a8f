"""The one place that opens an age model, of any format, behind one small interface.

`.onnx` runs in ONNX Runtime or OpenVINO (the same file, no conversion), `.keras` in TensorFlow
(imported only when a .keras file is asked for). Every runner finds its outputs by name: the age
(`metadata.output_name`, "age_years") and, when the model has one, each face's own spread
(`metadata.std_output_name`, e.g. "age_std_years"). Used by the daemon, `agetool run`,
`agetool evaluate`, export verification and the benchmarks."""

from __future__ import annotations

import importlib.util
import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from agetool.contract import AGE_MAX_YEARS, AGE_MIN_YEARS, OUTPUT_NAME, ModelMetadata, preprocess_rgb
from agetool.errors import AgetoolError

log = logging.getLogger(__name__)

PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}
AUTO_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
GPU_PROVIDERS = {"TensorrtExecutionProvider", "CUDAExecutionProvider"}

RUNTIME_AUTO = "auto"
RUNTIME_ORT = "onnxruntime"
RUNTIME_OPENVINO = "openvino"
RUNTIME_KERAS = "tensorflow"
RUNTIME_CHOICES = (RUNTIME_AUTO, RUNTIME_ORT, RUNTIME_OPENVINO)
# A Keras model carries no agetool metadata; its second output, when it has one, goes by this name.
KERAS_STD_OUTPUT_NAME = "age_std_years"
CHOICE_TIMING_RUNS = 15
CHOICE_WARMUP_RUNS = 3


def resolve_providers(requested: str | Sequence[str] = "auto") -> list[str]:
    """Provider names ONNX Runtime understands, in priority order, always ending with CPU.

    "auto" picks TensorRT -> CUDA -> CPU from what this onnxruntime build offers. Names may be
    aliases (cpu, cuda, tensorrt) or full provider names; unknown names are an error."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if isinstance(requested, str):
        requested = [p.strip() for p in requested.split(",") if p.strip()]
    if not requested or list(requested) == ["auto"]:
        chosen = [p for p in AUTO_ORDER if p in available]
    else:
        chosen = []
        for name in requested:
            full = PROVIDER_ALIASES.get(name.lower(), name)
            if full not in PROVIDER_ALIASES.values() and full not in available:
                raise AgetoolError(
                    f"providers: unknown execution provider {name!r}; expected one of "
                    f"{', '.join(PROVIDER_ALIASES)} or auto"
                )
            if full in available:
                chosen.append(full)
            else:
                log.warning("execution provider %s is not available in this onnxruntime build", full)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


@dataclass(frozen=True)
class AgePrediction:
    """Ages in years (N,), and each face's own spread in years (N,) when the model gives one."""

    ages_years: np.ndarray
    std_years: np.ndarray | None


class AgeModel(Protocol):
    """What every runner offers. `metadata` is None only for a .keras file."""

    path: Path
    runtime: str
    device: str
    metadata: ModelMetadata | None
    input_size: int

    def predict(self, batch: np.ndarray) -> np.ndarray: ...

    def predict_with_std(self, batch: np.ndarray) -> AgePrediction: ...

    def raw_outputs(self, batch: np.ndarray) -> AgePrediction: ...


def output_positions(names: Sequence[str], metadata: ModelMetadata, source: str) -> tuple[int, int | None]:
    """Where the age and the spread are among a model's outputs, found by name.

    A model with a single output is read as the age whatever its name (models exported before the
    name was fixed); a named spread output that is not there is an error."""
    names = list(names)
    if metadata.output_name in names:
        age_at = names.index(metadata.output_name)
    elif len(names) == 1:
        age_at = 0
    else:
        raise AgetoolError(
            f"{source}: no output named {metadata.output_name!r} (outputs: {', '.join(names)})"
        )
    std_at = None
    if metadata.std_output_name:
        if metadata.std_output_name not in names:
            raise AgetoolError(
                f"{source}: metadata names a spread output {metadata.std_output_name!r} the graph lacks "
                f"(outputs: {', '.join(names)})"
            )
        std_at = names.index(metadata.std_output_name)
    return age_at, std_at


def _check_batch(batch: np.ndarray, input_size: int) -> np.ndarray:
    if batch.ndim != 4 or batch.shape[1:] != (input_size, input_size, 3):
        raise AgetoolError(f"model input: expected (N, {input_size}, {input_size}, 3), got {batch.shape}")
    return np.ascontiguousarray(batch, dtype=np.float32)


def _clipped(prediction: AgePrediction) -> AgePrediction:
    std = None if prediction.std_years is None else np.maximum(prediction.std_years, 0.0)
    return AgePrediction(np.clip(prediction.ages_years, AGE_MIN_YEARS, AGE_MAX_YEARS), std)


class _ModelBase:
    """predict / predict_rgb / warm_up on top of a runner's raw_outputs."""

    input_size: int

    def raw_outputs(self, batch: np.ndarray) -> AgePrediction:  # pragma: no cover - every runner has its own
        raise NotImplementedError

    def predict_with_std(self, batch: np.ndarray) -> AgePrediction:
        """Ages clipped to the contract's range, spreads (when given) at least 0."""
        return _clipped(self.raw_outputs(batch))

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Ages in years, shape (N,), for an NHWC float32 RGB 0..255 batch."""
        return self.predict_with_std(batch).ages_years

    def predict_rgb(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Ages for RGB uint8 face crops of any size."""
        if not crops:
            return np.zeros((0,), dtype=np.float32)
        return self.predict(np.stack([preprocess_rgb(c, self.input_size) for c in crops]))

    def warm_up(self, runs: int = 2) -> None:
        dummy = np.zeros((1, self.input_size, self.input_size, 3), dtype=np.float32)
        for _ in range(runs):
            self.raw_outputs(dummy)

    def median_ms(
        self, runs: int = CHOICE_TIMING_RUNS, warmup: int = CHOICE_WARMUP_RUNS, image: np.ndarray | None = None
    ) -> float:
        """Median batch-1 latency on `image` (default: a grey one of the model's own input shape);
        a rough figure, not a benchmark."""
        one = (np.full((1, self.input_size, self.input_size, 3), 127.0, dtype=np.float32)
               if image is None else np.asarray(image, dtype=np.float32)[None])
        for _ in range(warmup):
            self.raw_outputs(one)
        times_ms = []
        for _ in range(runs):
            started = time.perf_counter()
            self.raw_outputs(one)
            times_ms.append((time.perf_counter() - started) * 1000.0)
        return statistics.median(times_ms)


class OnnxAgeModel(_ModelBase):
    """An exported agetool model in an ONNX Runtime session, with its metadata read back."""

    runtime = RUNTIME_ORT

    def __init__(
        self,
        path: str | Path,
        providers: str | Sequence[str] = "auto",
        intra_op_threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise AgetoolError(f"model {self.path}: file not found")
        wanted = resolve_providers(providers)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
            # One inference at a time per session: no second pool competing for a 2-core till.
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=wanted)
        except Exception as exc:  # ORT raises several private exception types for bad files
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise AgetoolError(f"model {self.path}: not a loadable ONNX model ({first_line})") from None
        props = self.session.get_modelmeta().custom_metadata_map
        self.metadata = ModelMetadata.from_props(props, source=f"model {self.path}")
        self.provider = self.session.get_providers()[0]
        self.device = self.provider
        if any(p in GPU_PROVIDERS for p in wanted) and self.provider not in GPU_PROVIDERS:
            log.warning("a GPU provider was asked for but %s runs on %s", self.path.name, self.provider)
        log.info("model %s (%s) on %s", self.path.name, self.metadata.variant, self.provider)
        self.input_name = self.session.get_inputs()[0].name
        names = [o.name for o in self.session.get_outputs()]
        age_at, std_at = output_positions(names, self.metadata, f"model {self.path}")
        self.output_name = names[age_at]
        self.std_output_name = names[std_at] if std_at is not None else None
        self._fetch = [self.output_name] + ([self.std_output_name] if self.std_output_name else [])

    @property
    def input_size(self) -> int:
        return self.metadata.input_size

    @property
    def on_gpu(self) -> bool:
        return self.provider in GPU_PROVIDERS

    def raw_outputs(self, batch: np.ndarray) -> AgePrediction:
        """Unclipped outputs (export parity sees every difference)."""
        batch = _check_batch(batch, self.input_size)
        outs = self.session.run(self._fetch, {self.input_name: batch})
        std = outs[1].reshape(len(batch)).astype(np.float32) if self.std_output_name else None
        return AgePrediction(outs[0].reshape(len(batch)).astype(np.float32), std)


def openvino_missing() -> bool:
    return importlib.util.find_spec("openvino") is None


def _openvino_props(model) -> dict[str, str]:
    """The ONNX file's metadata_props as OpenVINO's ONNX reader keeps them (rt_info "framework")."""
    info = model.get_rt_info()
    if "framework" not in info:
        return {}
    names = info["framework"]
    names = names.astype(dict) if hasattr(names, "astype") else names
    return {str(key): model.get_rt_info(["framework", key]).astype(str) for key in names}


class OpenVinoAgeModel(_ModelBase):
    """OpenVINO Runtime reading the same .onnx file; one compiled model per static batch size
    (static shapes are what OpenVINO's CPU plugin is fastest with)."""

    runtime = RUNTIME_OPENVINO

    def __init__(self, path: str | Path, threads: int | None = None, precision: str | None = None) -> None:
        if openvino_missing():
            raise AgetoolError(
                "--runtime openvino: the openvino package is not installed (pip install 'agetool[openvino]')"
            )
        import openvino as ov

        self.path = Path(path)
        if not self.path.is_file():
            raise AgetoolError(f"model {self.path}: file not found")
        self.core = ov.Core()
        try:
            self._model = self.core.read_model(str(self.path))
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses with long C++ traces
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise AgetoolError(f"model {self.path}: not a loadable ONNX model ({first_line})") from None
        self.metadata = ModelMetadata.from_props(_openvino_props(self._model), source=f"model {self.path}")
        names = [output.get_any_name() for output in self._model.outputs]
        age_at, std_at = output_positions(names, self.metadata, f"model {self.path}")
        self._age_at, self._std_at = age_at, std_at
        self.config: dict[str, str] = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = str(threads)
        if precision:
            self.config["INFERENCE_PRECISION_HINT"] = precision
        self.device = f"CPU ({self.core.get_property('CPU', 'FULL_DEVICE_NAME')})"
        self.provider = "OpenVINO CPU"
        self.on_gpu = False
        self.precision: str | None = None
        self._requests: dict[int, object] = {}
        log.info("model %s (%s) on OpenVINO %s", self.path.name, self.metadata.variant, self.device)

    @property
    def input_size(self) -> int:
        return self.metadata.input_size

    def prepare(self, batch_size: int) -> None:
        if batch_size in self._requests:
            return
        model = self._model.clone()
        model.reshape([batch_size, self.input_size, self.input_size, 3])
        compiled = self.core.compile_model(model, "CPU", self.config)
        # On CPUs with AVX512-BF16 or AMX OpenVINO computes in bf16 unless told f32: say which.
        self.precision = str(compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name())
        self._requests[batch_size] = compiled.create_infer_request()

    def raw_outputs(self, batch: np.ndarray) -> AgePrediction:
        batch = _check_batch(batch, self.input_size)
        n = len(batch)
        if n == 0:
            return AgePrediction(np.zeros((0,), np.float32), None if self._std_at is None else np.zeros((0,), np.float32))
        if n not in self._requests:
            self.prepare(n)
        request = self._requests[n]
        request.infer({0: batch})
        ages = np.array(request.get_output_tensor(self._age_at).data, dtype=np.float32).reshape(n)
        std = None
        if self._std_at is not None:
            std = np.array(request.get_output_tensor(self._std_at).data, dtype=np.float32).reshape(n)
        return AgePrediction(ages, std)


class KerasAgeModel(_ModelBase):
    """The training-side .keras model on TensorFlow (imported only here)."""

    runtime = RUNTIME_KERAS
    metadata = None

    def __init__(self, path: str | Path) -> None:
        from agetool.trainer.model import load_keras_model

        self.path = Path(path)
        self.model = load_keras_model(self.path)
        shape = self.model.input_shape
        if len(shape) != 4 or shape[1] != shape[2] or shape[1] is None or shape[3] != 3:
            raise AgetoolError(f"model {path}: expected a square RGB input (N, S, S, 3), got {shape}")
        self.input_size = int(shape[1])
        self.output_names = list(getattr(self.model, "output_names", None) or [OUTPUT_NAME])
        self.device = "TensorFlow"
        self.provider = "TensorFlow"

    def raw_outputs(self, batch: np.ndarray) -> AgePrediction:
        batch = _check_batch(batch, self.input_size)
        out = self.model.predict_on_batch(batch)
        if isinstance(out, dict):
            named = out
        elif isinstance(out, (list, tuple)):
            named = dict(zip(self.output_names, out))
        else:
            named = {OUTPUT_NAME: out}
        if OUTPUT_NAME in named:
            ages = named[OUTPUT_NAME]
        elif len(named) == 1:
            ages = next(iter(named.values()))
        else:
            raise AgetoolError(f"model {self.path}: no output named {OUTPUT_NAME!r} (outputs: {', '.join(named)})")
        std = named.get(KERAS_STD_OUTPUT_NAME)
        n = len(batch)
        return AgePrediction(
            np.asarray(ages, dtype=np.float32).reshape(n),
            None if std is None else np.asarray(std, dtype=np.float32).reshape(n),
        )


def open_age_model(
    path: str | Path,
    runtime: str = RUNTIME_ORT,
    providers: str | Sequence[str] = "auto",
    threads: int | None = None,
) -> OnnxAgeModel | OpenVinoAgeModel | KerasAgeModel:
    """A .onnx in ONNX Runtime, OpenVINO, or whichever is faster here ("auto"); a .keras in TensorFlow."""
    path = Path(path)
    if path.suffix not in (".onnx", ".keras"):
        raise AgetoolError(f"model {path}: expected a .onnx or .keras file")
    if not path.is_file():
        raise AgetoolError(f"model {path}: file not found")
    if path.suffix == ".keras":
        return KerasAgeModel(path)
    if runtime == RUNTIME_ORT:
        return OnnxAgeModel(path, providers, threads)
    if runtime == RUNTIME_OPENVINO:
        return OpenVinoAgeModel(path, threads)
    if runtime == RUNTIME_AUTO:
        return fastest_runtime(path, providers, threads)
    raise AgetoolError(f"--runtime {runtime}: expected one of {', '.join(RUNTIME_CHOICES)}")


def fastest_runtime(
    path: Path, providers: str | Sequence[str] = "auto", threads: int | None = None
) -> OnnxAgeModel | OpenVinoAgeModel:
    """`--runtime auto`: ONNX Runtime on a GPU provider when one is present; else the faster of
    ONNX Runtime and OpenVINO (when installed), timed on the model's own input in a child process
    (runtime_choice) and logged; only the chosen runtime is loaded here."""
    from agetool.edge_runtime.runtime_choice import time_runtimes_in_child

    wanted = providers if isinstance(providers, str) else ",".join(providers)
    timings = time_runtimes_in_child(path, wanted, threads)
    if timings.gpu_provider is not None:
        log.info("runtime auto: onnxruntime on %s (a GPU provider keeps priority)", timings.gpu_provider)
        return OnnxAgeModel(path, providers, threads)
    if timings.openvino_ms is None:
        if timings.openvino_error:
            log.warning("runtime auto: OpenVINO could not run %s (%s); using onnxruntime", path.name,
                        timings.openvino_error)
        else:
            log.info("runtime auto: onnxruntime (openvino is not installed)")
        return OnnxAgeModel(path, providers, threads)
    chosen = RUNTIME_OPENVINO if timings.openvino_ms < timings.onnxruntime_ms else RUNTIME_ORT
    log.info(
        "runtime auto: %s (batch-1 median on this machine: onnxruntime %.2f ms, openvino %.2f ms)",
        chosen, timings.onnxruntime_ms, timings.openvino_ms,
    )
    return OpenVinoAgeModel(path, threads) if chosen == RUNTIME_OPENVINO else OnnxAgeModel(path, providers, threads)
