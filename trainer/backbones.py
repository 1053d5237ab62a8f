"""The backbones `agetool train` knows, without importing Keras: options are checked against
these before TensorFlow loads (3-4 s), so a typo fails at once."""

from __future__ import annotations

BACKBONES = ("resnet50", "xception", "mobilenetv3", "mobilenetv3small", "mobilenet")
HEADS = ("regression", "distribution")
# Smallest square input each backbone accepts (Xception's strided stem needs 71 px).
MIN_INPUT_SIZE = {"resnet50": 32, "xception": 71, "mobilenetv3": 32, "mobilenetv3small": 32, "mobilenet": 32}
