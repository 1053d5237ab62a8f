"""What an exported model says about itself: the trainer's model card + export facts -> metadata_props."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from agetool import __version__
from agetool.contract import ModelMetadata
from agetool.errors import AgetoolError
from agetool.validation import describe, dotted

log = logging.getLogger(__name__)

MODEL_CARD_FILE = "model_card.json"


class ModelCard(BaseModel):
    """The trainer's `model_card.json` beside the .keras file (unknown keys are ignored)."""

    model_config = ConfigDict(extra="ignore")

    backbone: str = "unknown"
    weights: str = "unknown"
    input_size: int | None = None
    training_data: str = "unknown"
    best_val_mae: float | None = None
    split_file: str | None = None
    id_check_buffer_years: float | None = None
    mae_uncertainty_years: float | None = None
    face_margin: float | None = None
    crop: str | None = None
    align_coverage: float | None = None
    std_output_name: str | None = None
    interval_scale: float | None = None
    interval_level: float | None = None


# Card keys copied into the metadata as they are, when the card has them.
CARD_PASSTHROUGH = ("face_margin", "crop", "align_coverage", "std_output_name", "interval_scale", "interval_level")


def read_model_card(model_path: Path) -> tuple[ModelCard, Path | None]:
    """The card beside the model (and its path), or a default card and None when there is none."""
    path = model_path.parent / MODEL_CARD_FILE
    if not path.is_file():
        log.info("no %s beside %s: backbone and training data recorded as unknown", MODEL_CARD_FILE, model_path.name)
        return ModelCard(), None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AgetoolError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise AgetoolError(f"{path}: expected a JSON object with backbone, input_size, ...")
    try:
        return ModelCard.model_validate(raw), path
    except ValidationError as exc:
        raise AgetoolError(describe(exc, lambda loc: f"{path}: field {dotted(loc)}")) from None


def split_from_card(card: ModelCard, card_path: Path | None) -> Path | None:
    """The split file the model was trained with, when the card names one that exists here."""
    if not card.split_file or card_path is None:
        return None
    split = Path(card.split_file)
    if not split.is_absolute():
        split = card_path.parent / split
    return split if split.is_file() else None


def build_metadata(
    card: ModelCard,
    input_size: int,
    variant: str,
    calibration_size: int | None = None,
    calibration_method: str | None = None,
    fallback_val_mae: float | None = None,
) -> ModelMetadata:
    """Metadata for one variant. val_mae is the trainer's (full validation set) when the card has
    it, else the Keras model's MAE on the export's validation sample."""
    return ModelMetadata(
        agetool_version=__version__,
        input_size=input_size,
        backbone=card.backbone,
        weights=card.weights,
        training_data=card.training_data,
        val_mae=card.best_val_mae if card.best_val_mae is not None else fallback_val_mae,
        variant=variant,
        export_date=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        calibration_size=calibration_size,
        calibration_method=calibration_method,
        id_check_buffer_years=card.id_check_buffer_years,
        mae_uncertainty_years=card.mae_uncertainty_years,
        **{key: getattr(card, key) for key in CARD_PASSTHROUGH if getattr(card, key) is not None},
    )


def embed_metadata(onnx_path: Path, metadata: ModelMetadata) -> None:
    """Write metadata_props into an ONNX file in place (the file is still under its temp name)."""
    import onnx

    proto = onnx.load(str(onnx_path))
    onnx.helper.set_model_props(proto, metadata.to_props())
    onnx.save(proto, str(onnx_path))
