"""`export_model`: one .keras model -> verified `<stem>.onnx`, `<stem>_fp16.onnx`, `<stem>_int8.onnx`.

Every file is built in a hidden temp folder inside the output folder, opened in ONNX Runtime the
way the till opens it, compared with the Keras model, and only then renamed into place; a failed
or interrupted export leaves no `<stem>*.onnx` behind (and replaces none)."""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agetool.errors import AgetoolError
from agetool.export import fp16 as fp16_mod
from agetool.export import fp32 as fp32_mod
from agetool.export import int8 as int8_mod
from agetool.export.metadata import ModelCard, build_metadata, embed_metadata, read_model_card, split_from_card
from agetool.export.verify import FIXED_BATCH_SIZE, Reference, Verification, keras_predict, random_batch, verify_file
from agetool.validation import option_error

log = logging.getLogger(__name__)

# fp32 must match Keras up to float round-off: this many years plus a relative share of the output.
PARITY_ABS_YEARS = 0.01
PARITY_REL = 1e-4


class ExportOptions(BaseModel):
    """Everything `agetool export` can be asked; the CLI fills it, tests build it directly."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: Path
    out: Path | None = None
    fp16: bool = False
    int8: bool = False
    calib: list[Path] | None = None
    val: list[Path] | None = None
    split: Path | None = None
    calib_size: int = Field(300, ge=1)
    # Defaults measured (300 UTKFace calibration faces, 500 validation faces, 2-core AVX512-VNNI
    # CPU): percentile stays closest to Keras (mean |Δ| 0.10 vs 0.19 years minmax on a trained
    # 64 px CNN, 0.041 vs 0.050 on ResNet50 128 px); uint8 activations run ~2x faster than int8
    # on x86 (ResNet50 128 px: 7.0 vs 15 ms/img; fp32 16) for the same mean |Δ|; the Dense head
    # in float cut mean |Δ| from 0.26 to 0.17 years on the CNN. Dynamic INT8 (ConvInteger) is
    # slower than FP32 on CPU for convnets (8.9 vs 1.4 ms/img on the CNN): a fallback only.
    calib_method: Literal["minmax", "entropy", "percentile"] = "percentile"
    int8_mode: Literal["static", "dynamic"] = "static"
    int8_activations: Literal["quint8", "qint8"] = "quint8"
    keep_head_float: bool = True
    val_size: int = Field(500, ge=1)
    opset: int = 17
    # Crop margin the runtime must use for this model (see agetool.trainer.framing); None = the
    # model card's, else the contract's APPA-style default.
    face_margin: float | None = Field(None, ge=0, le=2)
    max_delta_mae: float = Field(0.3, ge=0)
    force: bool = False

    @field_validator("calib", "val", mode="before")
    @classmethod
    def _folders_as_list(cls, value: Any) -> Any:
        """One folder or several (read and split as one set, like the trainer's data folders)."""
        if value is None or isinstance(value, (list, tuple)):
            return list(value) if value else None
        return [value]


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def make_options(**values: Any) -> ExportOptions:
    """ExportOptions, with a bad value reported as one line naming its flag."""
    try:
        return ExportOptions(**values)
    except ValidationError as exc:
        raise option_error(exc) from None


@dataclass(frozen=True)
class Built:
    """What a variant's builder reports besides the file it wrote."""

    calibration_size: int | None = None
    calibration_method: str | None = None
    note: str = ""


@dataclass
class BuildContext:
    options: ExportOptions
    keras_model: Any
    input_size: int
    work_dir: Path
    calib_images: np.ndarray | None = None
    fp32_proto: Any = None


@dataclass(frozen=True)
class VariantSpec:
    """One row of the variant table: file suffix, the option that turns it on, the options only
    it uses, the options it cannot do without, and its builder."""

    name: str
    suffix: str
    switch: str | None  # None: always exported
    own_options: frozenset[str]
    required_options: frozenset[str]
    build: Callable[[BuildContext, Path], Built]
    delta_mae_gate: bool


def build_fp32(ctx: BuildContext, path: Path) -> Built:
    import onnx

    ctx.fp32_proto = fp32_mod.convert_keras(ctx.keras_model, ctx.input_size, ctx.options.opset)
    onnx.save(ctx.fp32_proto, str(path))
    return Built()


def build_fp16(ctx: BuildContext, path: Path) -> Built:
    import onnx

    onnx.save(fp16_mod.convert_fp16(ctx.fp32_proto), str(path))
    return Built(note=fp16_mod.CPU_NOTE)


def build_int8(ctx: BuildContext, path: Path) -> Built:
    import onnx

    opts = ctx.options
    fp32_path = ctx.work_dir / "int8_source_fp32.onnx"
    prepared = ctx.work_dir / "int8_prepared.onnx"
    onnx.save(ctx.fp32_proto, str(fp32_path))
    int8_mod.preprocess_for_quantization(fp32_path, prepared)
    if opts.int8_mode == "dynamic":
        kept = int8_mod.quantize_dynamic_int8(prepared, path, opts.keep_head_float)
        return Built(calibration_size=0, calibration_method="dynamic", note=_kept_note(kept, "dynamic"))
    images = ctx.calib_images if ctx.calib_images is not None else np.zeros((0,))
    kept = int8_mod.quantize_static_int8(
        prepared, path, images, opts.calib_method, opts.int8_activations, opts.keep_head_float
    )
    note = _kept_note(kept, f"{opts.calib_method}, {opts.int8_activations}")
    return Built(calibration_size=len(images), calibration_method=opts.calib_method, note=note)


def _kept_note(kept: list[str], how: str) -> str:
    return f"{how}, head float" if kept else how


INT8_OPTIONS = frozenset(
    {"calib", "calib_size", "calib_method", "int8_mode", "int8_activations", "keep_head_float", "max_delta_mae"}
)
VARIANTS: tuple[VariantSpec, ...] = (
    VariantSpec("fp32", "", None, frozenset(), frozenset(), build_fp32, delta_mae_gate=False),
    VariantSpec("fp16", "_fp16", "fp16", frozenset(), frozenset(), build_fp16, delta_mae_gate=False),
    VariantSpec("int8", "_int8", "int8", INT8_OPTIONS, frozenset({"calib"}), build_int8, delta_mae_gate=True),
)


def selected_variants(options: ExportOptions) -> list[VariantSpec]:
    """The variants asked for; contradictory or missing options raise one AgetoolError line."""
    chosen = [v for v in VARIANTS if v.switch is None or getattr(options, v.switch)]
    defaults = ExportOptions.model_fields
    for spec in VARIANTS:
        if spec in chosen:
            for name in spec.required_options:
                if getattr(options, name) is None:
                    raise AgetoolError(f"{flag(spec.switch or spec.name)} needs {flag(name)} DIR (a face data folder)")
            continue
        for name in spec.own_options:
            if getattr(options, name) != defaults[name].default:
                raise AgetoolError(f"{flag(name)} is only used with {flag(spec.switch or spec.name)}")
    if options.int8 and options.int8_mode == "dynamic":
        for name in ("calib_method", "int8_activations"):
            if getattr(options, name) != defaults[name].default:
                raise AgetoolError(f"{flag(name)} applies to static INT8 only, not --int8-mode dynamic")
    if options.split is not None and options.calib is None and options.val is None:
        raise AgetoolError("--split needs --calib DIR or --val DIR (the face data folder it splits)")
    if not fp32_mod.MIN_OPSET <= options.opset <= fp32_mod.MAX_OPSET:
        raise AgetoolError(
            f"--opset: {options.opset} not supported; expected {fp32_mod.MIN_OPSET}..{fp32_mod.MAX_OPSET} "
            "(INT8 QDQ needs 13+)"
        )
    return chosen


@dataclass(frozen=True)
class VariantResult:
    variant: str
    path: Path
    size_mb: float
    verification: Verification
    calibration_size: int | None
    calibration_method: str | None
    note: str


@dataclass
class ExportReport:
    model: Path
    out_dir: Path
    input_size: int
    backbone: str
    fixed_batch_source: str
    n_calibration_faces: int
    n_validation_faces: int
    results: list[VariantResult] = field(default_factory=list)

    def result(self, variant: str) -> VariantResult:
        return next(r for r in self.results if r.variant == variant)


class _Steps:
    """Rich progress on the given console, or nothing when there is none."""

    def __init__(self, console: Any, total: int) -> None:
        self.console = console
        self.progress: Any = None
        self.total = total

    def __enter__(self) -> "_Steps":
        if self.console is not None:
            from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                console=self.console, transient=True,
            )
            self.progress.__enter__()
            self.task = self.progress.add_task("export", total=self.total)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def step(self, description: str) -> None:
        log.debug("%s", description)
        if self.progress is not None:
            self.progress.update(self.task, description=description)

    def done(self) -> None:
        if self.progress is not None:
            self.progress.advance(self.task)

    def say(self, message: str) -> None:
        if self.progress is not None:
            self.progress.console.print(message)
        else:
            log.info("%s", message)

    def counter(self, description: str, total: int) -> Callable[[int], None] | None:
        if self.progress is None:
            return None
        task = self.progress.add_task(description, total=total)
        return lambda n: self.progress.advance(task, n)


def export_model(options: ExportOptions, console: Any = None) -> ExportReport:
    """Export, verify and atomically write every variant asked for. With a rich Console, shows
    progress and one verification line per variant on it."""
    specs = selected_variants(options)
    with _Steps(console, total=2 + 2 * len(specs)) as steps:
        steps.step(f"loading {options.model.name}")
        keras_model = fp32_mod.load_keras_model(options.model)
        input_size = fp32_mod.keras_input_size(keras_model, options.model)
        card, card_path = read_model_card(options.model)
        if card.input_size is not None and card.input_size != input_size:
            raise AgetoolError(
                f"{card_path}: input_size {card.input_size} but {options.model.name} takes {input_size} px"
            )
        out_dir = _out_dir(options)
        steps.done()

        steps.step("reading faces")
        faces = _read_faces(options, card, card_path, input_size, steps)
        steps.done()
        report = ExportReport(
            model=options.model, out_dir=out_dir, input_size=input_size, backbone=card.backbone,
            fixed_batch_source=faces.fixed_batch_source,
            n_calibration_faces=0 if faces.calib_images is None else len(faces.calib_images),
            n_validation_faces=len(faces.val_images),
        )
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=f".{options.model.stem}.export-") as work:
            ctx = BuildContext(options, keras_model, input_size, Path(work), faces.calib_images)
            del keras_model  # ctx holds it until the FP32 conversion and the Keras references are done
            reference: Reference | None = None
            staged: list[tuple[Path, Path]] = []
            for spec in specs:
                final = out_dir / f"{options.model.stem}{spec.suffix}.onnx"
                temp = Path(work) / final.name
                steps.step(f"{spec.name}: converting")
                built = spec.build(ctx, temp)
                if reference is None:
                    # After the FP32 conversion (always the first variant), not before: the
                    # conversion's peak then comes on top of less (ResNet50 224 px: -0.4 GB RSS).
                    steps.step("Keras reference outputs")
                    reference = keras_reference(ctx.keras_model, faces)
                    ctx.keras_model = None
                metadata = build_metadata(
                    card, input_size, spec.name, built.calibration_size, built.calibration_method,
                    fallback_val_mae=reference.keras_val_mae,
                )
                if options.face_margin is not None:
                    metadata = metadata.model_copy(update={"face_margin": options.face_margin})
                embed_metadata(temp, metadata)
                steps.done()
                steps.step(f"{spec.name}: verifying")
                verification = verify_file(temp, spec.name, input_size, reference)
                result = VariantResult(
                    spec.name, final, temp.stat().st_size / 1e6, verification,
                    built.calibration_size, built.calibration_method, built.note,
                )
                steps.say(verification_line(result))
                problem = _problem(spec, result, reference, options)
                if problem is not None:
                    if not options.force:
                        raise AgetoolError(
                            f"{final.name}: {problem}; nothing written (use --force to write it anyway)"
                        )
                    steps.say(f"[yellow]warning:[/] {final.name}: {problem}; written anyway (--force)")
                    result = replace(result, note=f"FAILED CHECK, forced; {result.note}".rstrip("; "))
                staged.append((temp, final))
                report.results.append(result)
                steps.done()
            for temp, final in staged:
                os.replace(temp, final)
    return report


def _out_dir(options: ExportOptions) -> Path:
    out_dir = options.out if options.out is not None else options.model.parent
    if out_dir.exists() and not out_dir.is_dir():
        raise AgetoolError(f"--out {out_dir}: exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def _names(folders: list[Path]) -> str:
    return ", ".join(str(f) for f in folders)


@dataclass(frozen=True)
class Faces:
    """The faces an export reads: calibration faces (static INT8 only), labelled validation
    faces, and the fixed batch every variant is compared on."""

    calib_images: np.ndarray | None
    val_images: np.ndarray
    val_ages_years: np.ndarray
    fixed_batch: np.ndarray
    fixed_batch_source: str


def _read_faces(
    options: ExportOptions, card: ModelCard, card_path: Path | None, input_size: int, steps: _Steps
) -> Faces:
    """Calibration faces (INT8 only), labelled validation faces and the fixed batch."""
    calib_images = None
    val_images = np.zeros((0, input_size, input_size, 3), dtype=np.float32)
    val_ages = np.zeros((0,), dtype=np.float64)
    data_dir = options.val or options.calib
    if data_dir is not None:
        from agetool.export import samples

        split_file = options.split or split_from_card(card, card_path)
        if split_file is not None and options.split is None:
            log.info("using the model's training split %s", split_file)
        if options.int8 and options.int8_mode == "static" and options.calib is not None:
            rows = samples.split_rows(options.calib, split_file)
            picked = samples.pick_rows(rows, "train", options.calib_size)
            calib = samples.load_sample(
                picked, input_size, "calibration", steps.counter("calibration faces", len(picked))
            )
            if len(calib) == 0:
                raise AgetoolError(f"--calib {_names(options.calib)}: no readable training-split faces to calibrate on")
            if len(calib) < options.calib_size:
                steps.say(
                    f"[yellow]warning:[/] only {len(calib)} calibration faces in the training split of "
                    f"{_names(options.calib)} (asked for {options.calib_size}); INT8 ranges may be less reliable"
                )
            calib_images = calib.images
        rows = samples.split_rows(data_dir, split_file)
        picked = samples.pick_rows(rows, "val", options.val_size)
        val = samples.load_sample(picked, input_size, "validation", steps.counter("validation faces", len(picked)))
        val_images, val_ages = val.images, val.ages_years
    # Only the calibration faces the fixed batch may need: not a copy of them all.
    real = val_images if calib_images is None else np.concatenate([val_images, calib_images[:FIXED_BATCH_SIZE]])
    if len(real):
        fixed = real[:FIXED_BATCH_SIZE]
        fixed_source = f"{len(fixed)} real faces"
    else:
        fixed = random_batch(input_size)
        fixed_source = f"{len(fixed)} random images"
    return Faces(calib_images, val_images, val_ages, fixed, fixed_source)


def keras_reference(keras_model: Any, faces: Faces) -> Reference:
    """The Keras model's outputs on the fixed batch and the validation faces."""
    return Reference(
        fixed_batch=faces.fixed_batch,
        fixed_batch_source=faces.fixed_batch_source,
        fixed_keras_years=keras_predict(keras_model, faces.fixed_batch),
        val_images=faces.val_images,
        val_ages_years=faces.val_ages_years,
        val_keras_years=keras_predict(keras_model, faces.val_images),
    )


def verification_line(result: VariantResult) -> str:
    v = result.verification
    parts = [f"{result.variant}: max |Δ| {v.max_abs_diff_years:.2g} years vs Keras"]
    if v.delta_mae_years is not None:
        parts.append(
            f"MAE {v.variant_mae_years:.3f} vs Keras {v.keras_mae_years:.3f} (ΔMAE {v.delta_mae_years:+.3f})"
        )
    parts.append(f"CPU {v.cpu_ms_per_image:.1f} ms/img")
    return ", ".join(parts)


def _problem(spec: VariantSpec, result: VariantResult, reference: Reference, options: ExportOptions) -> str | None:
    """Why a variant does not estimate like its source, or None when it does."""
    v = result.verification
    if not np.isfinite(v.max_abs_diff_years):
        return "non-finite outputs on the fixed batch"
    if spec.name == "fp32":
        tolerance = PARITY_ABS_YEARS + PARITY_REL * float(np.max(np.abs(reference.fixed_keras_years)))
        if v.max_abs_diff_years > tolerance:
            return f"max |Δ| {v.max_abs_diff_years:.3g} years exceeds {tolerance:.3g} (conversion error)"
    if spec.delta_mae_gate:
        if v.delta_mae_years is None:
            return "no labelled validation faces, so ΔMAE cannot be checked"
        if v.delta_mae_years > options.max_delta_mae:
            return (
                f"ΔMAE {v.delta_mae_years:+.3f} years (MAE {v.variant_mae_years:.3f} vs Keras "
                f"{v.keras_mae_years:.3f} on {len(reference.val_images)} faces) exceeds "
                f"--max-delta-mae {options.max_delta_mae:g}"
            )
    return None
