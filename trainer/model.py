"""Age models: an ImageNet backbone + global average pooling + one Dense age head.

Pure Keras 3 (no TensorFlow import): the same code trains on TensorFlow here and on JAX on a GPU
box. The backbone's own preprocessing is a layer inside the model, so every saved model takes RGB
pixels 0..255, as agetool.contract says."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import keras
from keras import layers, ops

from agetool.contract import INPUT_NAME, OUTPUT_NAME
from agetool.errors import AgetoolError
from agetool.paths import ENV_IMAGENET_WEIGHTS
from agetool.trainer.backbones import BACKBONES, HEADS, MIN_INPUT_SIZE

# The distribution head: softmax over one-year bins, bin i meaning age i + 1 years (as the
# face-pretrained FaceRes age head in ../shared/models/faceres_age_head.npz is laid out).
NUM_AGE_BINS = 100
FIRST_BIN_YEARS = 1.0
STD_OUTPUT_NAME = "age_std_years"
DISTRIBUTION_NAME = "age_distribution"
MODEL_NAME = "age_model"
# The mean age of the training data is a far better first guess than 0: with a ReLU output a
# head that starts near 0 can die before it learns anything.
DEFAULT_HEAD_BIAS_YEARS = 30.0

# Keras notop ImageNet files, as keras.applications caches them under ~/.keras/models/.
IMAGENET_NOTOP_FILES = {
    "resnet50": "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "xception": "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "mobilenetv3": "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",
    "mobilenetv3small": "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
    "mobilenet": "mobilenet_1_0_224_tf_no_top.h5",
}


@keras.saving.register_keras_serializable(package="agetool")
class BackbonePreprocess(layers.Layer):
    """RGB 0..255 -> what the backbone was trained on ("caffe": BGR minus ImageNet mean;
    "tf": -1..1; "none": the backbone normalises itself)."""

    CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

    def __init__(self, mode: str, **kwargs) -> None:
        super().__init__(**kwargs)
        if mode not in ("caffe", "tf", "none"):
            raise ValueError(f"unknown preprocessing mode {mode!r}")
        self.mode = mode

    def call(self, x):
        if self.mode == "caffe":
            bgr = ops.take(x, [2, 1, 0], axis=-1)
            return bgr - ops.convert_to_tensor(self.CAFFE_MEAN_BGR, dtype=x.dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        return x

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="agetool")
class RandomShift(layers.Layer):
    """Shift the batch by up to `max_pixels` each way (reflect padding), in training only.

    Keras' RandomTranslation / RandomZoom / RandomRotation go through affine_transform, which
    under JAX on a GPU is slow enough to stall training (keras-team/keras#23229); a padded
    dynamic slice costs nothing on every backend."""

    def __init__(self, max_pixels: int, seed: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_pixels = int(max_pixels)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=None):
        if not training or self.max_pixels <= 0:
            return x
        p = self.max_pixels
        padded = ops.pad(x, [[0, 0], [p, p], [p, p], [0, 0]], mode="reflect")
        offsets = keras.random.randint((2,), 0, 2 * p + 1, seed=self.seed_generator)
        size = (ops.shape(x)[0], x.shape[1], x.shape[2], x.shape[3])
        return ops.slice(padded, [0, offsets[0], offsets[1], 0], size)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "max_pixels": self.max_pixels, "seed": self.seed}


def resolve_weights(backbone: str, weights: str) -> str | None:
    """`none` -> None; `imagenet` -> the local notop file (flag, env var, Keras cache); a path ->
    that file. Nothing is downloaded: a missing file is a clear error saying where to put it."""
    if weights == "none":
        return None
    if weights == "imagenet":
        file_name = IMAGENET_NOTOP_FILES[backbone]
        candidates = []
        if os.environ.get(ENV_IMAGENET_WEIGHTS):
            candidates.append(Path(os.environ[ENV_IMAGENET_WEIGHTS]))
        keras_home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
        candidates.append(keras_home / "models" / file_name)
        for candidate in candidates:
            if candidate.is_file():
                return str(candidate)
        raise AgetoolError(
            f"--weights imagenet: {file_name} not found; put it at {candidates[-1]} or set "
            f"{ENV_IMAGENET_WEIGHTS}=/path/to/{file_name} (this tool never downloads weights)"
        )
    path = Path(weights)
    if not path.is_file():
        raise AgetoolError(f"--weights {weights}: file not found (expected imagenet, none or a .h5 path)")
    return str(path)


def _backbone(name: str, input_size: int, weights: str | None) -> tuple[keras.Model, str]:
    shape = (input_size, input_size, 3)
    apps = keras.applications
    if name == "resnet50":
        return apps.ResNet50(include_top=False, weights=weights, input_shape=shape), "caffe"
    if name == "xception":
        return apps.Xception(include_top=False, weights=weights, input_shape=shape), "tf"
    if name == "mobilenetv3":
        net = apps.MobileNetV3Large(
            include_top=False, weights=weights, input_shape=shape, include_preprocessing=True
        )
        return net, "none"
    if name == "mobilenet":
        # MobileNet-v1 1.0. Keras' ImageNet file expects -1..1; a weights file given by path is
        # taken to be the face-pretrained FaceRes backbone (../shared/models/), trained on BGR
        # minus the ImageNet "caffe" means, with its BatchNorms folded (kept in inference mode).
        net = apps.MobileNet(input_shape=shape, alpha=1.0, include_top=False, weights=None)
        if weights is not None:
            try:
                net.load_weights(weights)
            except (ValueError, OSError, KeyError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise AgetoolError(f"--weights {weights}: not MobileNet-v1 notop weights ({first[:160]})") from None
        imagenet_file = weights is not None and Path(weights).name == IMAGENET_NOTOP_FILES["mobilenet"]
        return net, "tf" if imagenet_file else "caffe"
    if name == "mobilenetv3small":
        net = apps.MobileNetV3Small(
            include_top=False, weights=weights, input_shape=shape, include_preprocessing=True
        )
        return net, "none"
    raise AgetoolError(f"--backbone {name}: expected one of {', '.join(BACKBONES)}")


def build_model(
    backbone: str = "resnet50",
    input_size: int = 224,
    weights: str = "none",
    head_bias_years: float = DEFAULT_HEAD_BIAS_YEARS,
    dropout: float = 0.2,
    head: str = "regression",
    head_init: str | None = None,
) -> keras.Model:
    """Uncompiled age model: input `image` (N, S, S, 3) RGB 0..255 -> `age_years` (N, 1); the
    distribution head adds `age_std_years` (N, 1), the spread of its age distribution."""
    if head not in HEADS:
        raise AgetoolError(f"--head {head}: expected one of {', '.join(HEADS)}")
    if backbone not in BACKBONES:
        raise AgetoolError(f"--backbone {backbone}: expected one of {', '.join(BACKBONES)}")
    if input_size < MIN_INPUT_SIZE[backbone]:
        raise AgetoolError(
            f"--input-size {input_size}: {backbone} needs at least {MIN_INPUT_SIZE[backbone]} px"
        )
    inputs, x = pooled_features(backbone, input_size, weights)
    if head == "distribution":
        _, age, std = distribution_head(x, dropout, head_init)
        outputs = {OUTPUT_NAME: layers.Identity(name=OUTPUT_NAME)(age),
                   STD_OUTPUT_NAME: layers.Identity(name=STD_OUTPUT_NAME)(std)}
        return keras.Model(inputs, outputs, name=MODEL_NAME)
    if dropout:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    outputs = layers.Dense(
        1,
        activation="relu",
        bias_initializer=keras.initializers.Constant(head_bias_years),
        name=OUTPUT_NAME,
        dtype="float32",
    )(x)
    return keras.Model(inputs, outputs, name=MODEL_NAME)


@keras.saving.register_keras_serializable(package="agetool")
class AgeMoments(layers.Layer):
    """Age distribution over one-year bins -> (expected age, standard deviation), in years."""

    def __init__(self, first_bin_years: float = FIRST_BIN_YEARS, **kwargs) -> None:
        super().__init__(**kwargs)
        self.first_bin_years = float(first_bin_years)

    def call(self, probs):
        ages = self.first_bin_years + ops.cast(ops.arange(ops.shape(probs)[-1]), probs.dtype)
        mean = ops.sum(probs * ages, axis=-1, keepdims=True)
        var = ops.sum(probs * ops.square(ages - mean), axis=-1, keepdims=True)
        return mean, ops.sqrt(ops.maximum(var, 1e-6))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1), (input_shape[0], 1)

    def get_config(self) -> dict:
        return {**super().get_config(), "first_bin_years": self.first_bin_years}


def distribution_head(features, dropout: float = 0.2, head_init: str | None = None, name_prefix: str = ""):
    """Pooled features -> Dense 256 ReLU -> softmax over NUM_AGE_BINS -> (probs, age, std).

    `head_init`: an .npz with feats_kernel/feats_bias/age_kernel/age_bias (the FaceRes age head)
    to start from what IMDB-Wiki taught it instead of random weights."""
    hidden = layers.Dense(256, activation="relu", name=name_prefix + "age_features", dtype="float32")
    logits = layers.Dense(NUM_AGE_BINS, name=name_prefix + "age_logits", dtype="float32")
    x = hidden(features)
    if dropout:
        x = layers.Dropout(dropout, name=name_prefix + "head_dropout")(x)
    probs = layers.Softmax(name=DISTRIBUTION_NAME, dtype="float32")(logits(x))
    age, std = AgeMoments(name="age_moments", dtype="float32")(probs)
    if head_init:
        load_head_init(hidden, logits, head_init)
    return probs, age, std


def load_head_init(hidden, logits, path: str) -> None:
    import numpy as np

    try:
        arrays = np.load(path)
        hidden.set_weights([arrays["feats_kernel"], arrays["feats_bias"]])
        logits.set_weights([arrays["age_kernel"], arrays["age_bias"]])
    except (OSError, KeyError, ValueError) as exc:
        raise AgetoolError(
            f"--head-init {path}: expected an .npz with feats_kernel (F x 256), feats_bias, "
            f"age_kernel (256 x {NUM_AGE_BINS}), age_bias ({str(exc)[:120]})"
        ) from None


def pooled_features(backbone: str, input_size: int, weights: str):
    """`image` input -> backbone preprocessing -> backbone -> global average pooling."""
    weights_file = resolve_weights(backbone, weights)
    net, mode = _backbone(backbone, input_size, weights_file)
    inputs = keras.Input((input_size, input_size, 3), name=INPUT_NAME)
    # Preprocessing and the age head compute in float32 even under a mixed-precision policy:
    # bfloat16 cannot hold 103.939 or an age to better than a quarter of a year.
    x = BackbonePreprocess(mode, name="backbone_preprocess", dtype="float32")(inputs)
    # Pretrained BatchNorm statistics stay frozen (inference mode) through fine-tuning.
    x = net(x, training=False) if weights_file else net(x)
    return inputs, layers.GlobalAveragePooling2D(name="gap")(x)


def backbone_of(model: keras.Model) -> keras.Model | None:
    """The nested backbone sub-model (for freezing in two-stage fine-tuning)."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            return layer
    return None


def make_loss(loss: str):
    losses = {"mse": "mean_squared_error", "mae": "mean_absolute_error", "huber": keras.losses.Huber(delta=5.0)}
    if loss not in losses:
        raise AgetoolError(f"--loss {loss}: expected one of {', '.join(losses)}")
    return losses[loss]


def compile_model(model: keras.Model, learning_rate: float = 1e-4, loss: str = "mae") -> keras.Model:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss=make_loss(loss),
        metrics=[keras.metrics.MeanAbsoluteError(name="mae")],
    )
    return model


def load_keras_model(path: str | Path, compile: bool = False) -> keras.Model:
    """Load a saved age model; AgetoolError for a missing or non-model file."""
    path = Path(path)
    if not path.is_file():
        raise AgetoolError(f"model {path}: file not found")
    if path.suffix != ".keras":
        raise AgetoolError(f"model {path}: expected a .keras file")
    try:
        return keras.saving.load_model(path, compile=compile)
    except (ValueError, OSError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AgetoolError(f"model {path}: not a loadable Keras model ({first[:200]})") from None
