"""The register daemon's configuration: one pydantic model per section, loaded from YAML.

Unknown keys are refused, every field says what it holds, `${ENV}` placeholders are filled from
the environment (secrets stay out of the file), and every error names the key and its line."""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agetool.contract import DEFAULT_POLICY_AGE_YEARS, Challenge25Policy
from agetool.errors import AgetoolError, ConfigError
from agetool.paths import default_detector_path, default_model_path
from agetool.validation import describe, first_problem

if TYPE_CHECKING:
    from agetool.edge_runtime.http_limits import HttpLimits

LANE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
ENV_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# A real config has a few hundred entries; nested aliases (a: &a [*b, *b, ...]) expand exponentially.
MAX_CONFIG_ENTRIES = 10_000
DEFAULT_ANALYTICS_PATH = Path.home() / ".local" / "state" / "agetool" / "analytics.sqlite"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class LaneConfig(Section):
    """One checkout lane: a camera (or stand-in) watching the shopper at one till."""

    name: str = Field(description="Lane name used in the API path /v1/lanes/{name} and in metrics.",
                      pattern=LANE_NAME_PATTERN)
    source: int | str = Field(
        description="Camera index (0), rtsp:// or http(s):// URL, video file (looped), image folder "
        "(looped at the lane fps) or a single image file."
    )
    fps: float = Field(5.0, gt=0, le=120, description="Most frames per second read from the source.")

    @field_validator("source")
    @classmethod
    def _source_not_blank(cls, value: int | str) -> int | str:
        if isinstance(value, str) and not value.strip():
            raise ValueError("expected a camera index, URL or path, got an empty string")
        if isinstance(value, int) and value < 0:
            raise ValueError("a camera index is 0 or more")
        return value


class ModelConfig(Section):
    """The ONNX age model (written by `agetool export`)."""

    path: Path | None = Field(
        None, description="Path to the agetool .onnx model; unset = $AGETOOL_MODEL or the shipped default."
    )
    providers: Literal["auto", "cpu", "cuda", "tensorrt"] = Field(
        "auto", description="ONNX Runtime execution provider: auto picks TensorRT -> CUDA -> CPU."
    )
    runtime: Literal["auto", "onnxruntime", "openvino"] = Field(
        "auto", description="What runs the model: auto times ONNX Runtime and OpenVINO (when installed) on "
        "this machine at start and keeps the faster (a GPU provider keeps priority); or name one."
    )
    intra_op_threads: int | None = Field(
        None, ge=1, le=256,
        description="ONNX Runtime intra-op threads; unset = half the CPU cores (at least 1), leaving the "
        "rest to capture and face detection.",
    )

    def resolved_path(self) -> Path:
        return self.path if self.path is not None else default_model_path()

    def resolved_threads(self) -> int:
        # Measured on a 2-core box: ORT on every core starves YuNet and the readers, and p95 latency doubles.
        return self.intra_op_threads or max(1, (os.cpu_count() or 2) // 2)


class DetectorConfig(Section):
    """The face detector: OpenCV YuNet (shipped in the package), or Haar when named."""

    path: Path | None = Field(
        None, description="YuNet .onnx; unset = $AGETOOL_DETECTOR, else the YuNet shipped in the package; "
        "'haar' = OpenCV's Haar cascade (misses turned and small faces; an explicit choice only)."
    )
    score_threshold: float = Field(0.7, gt=0, lt=1, description="YuNet: lowest face score kept.")
    min_face_px: int = Field(40, ge=8, description="Faces smaller than this (shorter side, pixels) are ignored.")
    detect_max_side: int | None = Field(
        320, ge=64, le=4096,
        description="Detect on the frame shrunk to at most this many pixels on its longer side (a face at a "
        "till is large; boxes and landmarks are mapped back to the full frame); null = full size.",
    )
    skip_unchanged_frames: bool = Field(
        True, description="Reuse the last detection when a frame barely differs from the last one detected on."
    )
    backend: Literal["auto", "opencv", "onnxruntime", "openvino"] = Field(
        "auto",
        description="What runs YuNet (the same faces within 1e-4 px): auto = ONNX Runtime when the age model "
        "runs there (2.3x faster than OpenCV's DNN module), else OpenCV's DNN module; or name one.",
    )

    def resolved_path(self) -> Path | None:
        return self.path if self.path is not None else default_detector_path()

    def is_haar(self) -> bool:
        return self.path is not None and str(self.path).strip().lower() == "haar"


class PolicyConfig(Section):
    """Challenge 25: ask for ID unless the shopper clearly looks older than the policy age."""

    policy_age_years: float = Field(
        DEFAULT_POLICY_AGE_YEARS, ge=18, le=40, description="Ask for ID from shoppers who look under this age."
    )
    buffer_years: float | None = Field(
        None, ge=0, le=20,
        description="Years added to the policy age; unset = the model's id_check_buffer_years, else 0.",
    )

    def to_policy(self, model_buffer_years: float | None) -> Challenge25Policy:
        buffer = self.buffer_years if self.buffer_years is not None else (model_buffer_years or 0.0)
        return Challenge25Policy(policy_age_years=self.policy_age_years, buffer_years=buffer)


class TrackingConfig(Section):
    """Following one shopper across frames."""

    iou_threshold: float = Field(0.3, gt=0, lt=1, description="Least box overlap (IoU) to be the same shopper.")
    smoothing_window: int = Field(7, ge=1, le=100, description="Median over this many latest age estimates.")
    track_timeout_s: float = Field(
        2.0, gt=0, le=600, description="A shopper unseen this long is gone; the next face starts a new track."
    )
    settled_estimates: int = Field(
        3, ge=0, le=100,
        description="Run the age model on every frame of a shopper until this many latest estimates agree "
        "(within agree_years), then only every refresh_s; 0 = every frame.",
    )
    agree_years: float = Field(3.0, gt=0, le=50, description="Estimates within this many years agree.")
    refresh_s: float = Field(1.0, gt=0, le=600, description="A settled shopper's age is re-estimated this often.")


class CaptureConfig(Section):
    """Frame readers and the watchdog that reopens dead or stalled sources."""

    queue_size: int = Field(2, ge=1, le=100, description="Frames buffered per lane; when full the oldest is dropped.")
    stall_timeout_s: float = Field(
        5.0, gt=0, le=600, description="A lane with no new frame for this long is marked offline and reopened."
    )
    watchdog_interval_s: float = Field(1.0, gt=0, le=60, description="How often the watchdog checks the lanes.")
    reopen_backoff_initial_s: float = Field(0.5, gt=0, le=60, description="First wait before reopening a source.")
    reopen_backoff_max_s: float = Field(30.0, gt=0, le=3600, description="Longest wait between reopen attempts.")


class ApiConfig(Section):
    """The HTTP API the POS calls."""

    host: str = Field("127.0.0.1", description="Address to bind; anything but loopback needs bearer_token.")
    port: int = Field(8080, ge=1, le=65535, description="TCP port.")
    bearer_token: str | None = Field(
        None, min_length=16,
        description="Token clients send as 'Authorization: Bearer ...' (use ${AGETOOL_API_TOKEN}); "
        "required when host is not loopback.",
    )
    max_body_bytes: int = Field(
        262144, ge=1024, le=16 * 1024 * 1024,
        description="Largest request body accepted (a receipt with its items); larger ones get 413.",
    )
    max_connections: int = Field(
        256, ge=8, le=65536,
        description="Most open API connections; past it the longest-idle one is closed. Lowered to fit the "
        "open-file limit (LimitNOFILE) with room for the cameras and files.",
    )
    head_timeout_s: float = Field(
        10.0, gt=0, le=300, description="A request head must arrive within this many seconds of connecting."
    )
    body_timeout_s: float = Field(
        10.0, gt=0, le=300, description="A request body must arrive within this many seconds of its head."
    )
    keep_alive_timeout_s: float = Field(
        5.0, ge=1, le=300, description="An idle keep-alive connection is closed after this many seconds."
    )

    def http_limits(self) -> "HttpLimits":
        from agetool.edge_runtime.http_limits import HttpLimits

        return HttpLimits(self.max_connections, self.head_timeout_s, self.body_timeout_s, self.keep_alive_timeout_s)

    @model_validator(mode="after")
    def _token_when_exposed(self) -> "ApiConfig":
        if not is_loopback(self.host) and not self.bearer_token:
            raise ValueError(
                f"binding {self.host} (not loopback) needs api.bearer_token; refusing to serve without one"
            )
        return self


class EventsConfig(Section):
    """Decision and lane events as JSON lines, and an optional webhook."""

    jsonl: str = Field("stdout", description="'stdout', 'off', or a file path to append JSON lines to.")
    webhook_url: str | None = Field(None, description="POST each event here as JSON (http:// or https://).")
    webhook_timeout_s: float = Field(2.0, gt=0, le=60, description="Timeout of one webhook request.")
    webhook_max_retries: int = Field(5, ge=0, le=20, description="Retries per event after the first failure.")
    webhook_backoff_s: float = Field(0.5, gt=0, le=60, description="First retry wait; doubles each retry.")

    @field_validator("jsonl", mode="before")
    @classmethod
    def _unquoted_off(cls, value: Any) -> Any:
        # YAML 1.1 reads the documented `jsonl: off` (unquoted) as False
        return "off" if value is False else value

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL")
        return value


class CentralSyncConfig(Section):
    """The chain's central PostgreSQL database this till sends its analytics to (`agetool[central]`)."""

    url: str = Field(description="postgresql://USER:${AGETOOL_CENTRAL_PASSWORD}@HOST:5432/DB; the password is "
                     "never logged.")
    store_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$",
                          description="This till's store in the central tables.")
    interval_s: float = Field(300.0, ge=1, le=86400, description="Seconds between syncs (a failed one is retried "
                              "sooner, with backoff).")
    batch_rows: int = Field(10000, ge=1, le=1_000_000, description="Rows per central transaction.")
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None = Field(
        None, description="TLS: verify-full checks the server's certificate and name; unset = the URL's sslmode, "
        "else prefer.")
    sslrootcert: Path | None = Field(None, description="CA certificate(s) for verify-ca / verify-full.")
    backoff_max_s: float = Field(300.0, ge=1, le=86400, description="Longest wait between retries while the "
                                 "server is unreachable.")

    @field_validator("url")
    @classmethod
    def _postgresql_url(cls, value: str) -> str:
        if not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("expected a postgresql:// URL")
        return value


class AnalyticsConfig(Section):
    """Age-group counts (per band, hour and lane; one per shopper) and POS receipts tagged with the
    shopper's age band, kept in SQLite. Bands, counts, confidence and receipt data only (docs/privacy.md)."""

    sqlite_path: Path = Field(DEFAULT_ANALYTICS_PATH, description="SQLite file the counts and receipts are kept in.")
    flush_interval_s: float = Field(60.0, gt=0, le=86400, description="Seconds between flushes (and at shutdown).")
    retention_days: int = Field(
        90, ge=1, le=3650, description="Counts and receipts older than this many days are deleted (at start and "
        "every purge_interval_s)."
    )
    purge_interval_s: float = Field(3600.0, gt=0, le=86400, description="Seconds between retention purges.")
    receipt_min_band_confidence: float = Field(
        0.5, ge=0, le=1,
        description="A receipt gets the shopper's band only when at least this share of the estimate's "
        "uncertainty interval (lower..upper years) lies in that band; else band 'unknown'.",
    )
    central: CentralSyncConfig | None = Field(
        None, description="Send counts and receipts to the chain's central PostgreSQL; while set, retention "
        "never deletes rows the centre does not have yet.")


class ComplianceConfig(Section):
    """Cashier compliance: on receipts with a restricted item, was ID asked for when the rule said
    so? Outcomes go to the `compliance` table (hash-chained, cashiers as keyed pseudonyms only)."""

    enabled: bool = Field(True, description="Give receipts a compliance outcome and store it.")
    restricted_categories: dict[str, int] = Field(
        default_factory=lambda: {"alcohol": 18, "tobacco": 18},
        description="Item categories that need a minimum age, with that legal age in years (category "
        "names are compared case-insensitively).",
    )
    policy_age_years: float | None = Field(
        None, ge=18, le=40, description="Ask for ID below this apparent age; unset = policy.policy_age_years."
    )
    buffer_years: float | None = Field(
        None, ge=0, le=20, description="Years added to the policy age; unset = the daemon's buffer."
    )
    check_valid_s: float | None = Field(
        None, gt=0, le=86400,
        description="How long a /check answer stays attached to the lane's next sale; unset = until a "
        "new shopper shows up at the lane (the shopper's track).",
    )
    cashier_key: str | None = Field(
        None, min_length=16,
        description="Key of the HMAC that turns POS cashier codes into pseudonyms (use "
        "${AGETOOL_CASHIER_KEY}); unset = cashier codes are not recorded.",
    )
    retention_days: int = Field(
        90, ge=1, le=3650,
        description="Whole days of compliance rows kept besides today; older days are deleted (and the "
        "purge recorded) at start and every analytics.purge_interval_s.",
    )

    @field_validator("restricted_categories")
    @classmethod
    def _lower_case_categories(cls, categories: dict[str, int]) -> dict[str, int]:
        lowered: dict[str, int] = {}
        for name, legal_age in categories.items():
            key = name.strip().lower()
            if not key:
                raise ValueError("a category name is empty")
            if key in lowered:
                raise ValueError(f"category {name!r} is listed twice (names are compared case-insensitively)")
            if not 0 < legal_age <= 100:
                raise ValueError(f"category {name!r}: expected a legal age in years (1-100), got {legal_age}")
            lowered[key] = legal_age
        return lowered


class DaemonConfig(Section):
    """Everything `agetool serve` needs."""

    lanes: list[LaneConfig] = Field(min_length=1, description="The checkout lanes this till PC watches.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The age model.")
    detector: DetectorConfig = Field(default_factory=DetectorConfig, description="The face detector.")
    policy: PolicyConfig = Field(default_factory=PolicyConfig, description="The ID-check rule.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="Shopper tracking.")
    capture: CaptureConfig = Field(default_factory=CaptureConfig, description="Frame capture and watchdog.")
    api: ApiConfig = Field(default_factory=ApiConfig, description="The HTTP API.")
    events: EventsConfig = Field(default_factory=EventsConfig, description="Event output.")
    analytics: AnalyticsConfig = Field(default_factory=AnalyticsConfig, description="Age-group counts.")
    compliance: ComplianceConfig = Field(default_factory=ComplianceConfig, description="Cashier ID-check compliance.")
    debug_save_crops: bool = Field(
        False, description="DEBUG ONLY: write face crops to debug_crops_dir. Off by default; logs a warning."
    )
    debug_crops_dir: Path | None = Field(None, description="Where debug crops go when debug_save_crops is on.")

    @field_validator("lanes")
    @classmethod
    def _unique_lane_names(cls, lanes: list[LaneConfig]) -> list[LaneConfig]:
        seen: set[str] = set()
        for lane in lanes:
            if lane.name in seen:
                raise ValueError(f"lane name {lane.name!r} is used twice")
            seen.add(lane.name)
        return lanes

    @model_validator(mode="after")
    def _debug_dir_when_debugging(self) -> "DaemonConfig":
        if self.debug_save_crops and self.debug_crops_dir is None:
            raise ValueError("debug_save_crops is on but debug_crops_dir is not set")
        return self


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- Loading --------------------------------------------------------------------------------
def _line_map(node: Any, path: tuple[Any, ...], lines: dict[tuple[Any, ...], int], where: str = "config") -> None:
    """Record the 1-based line of every key / list item under a composed YAML node."""
    import yaml

    if len(lines) > MAX_CONFIG_ENTRIES:
        raise ConfigError(f"{where}: more than {MAX_CONFIG_ENTRIES} keys and list items (nested YAML aliases?)")
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key_path = path + (key_node.value,)
            lines[key_path] = key_node.start_mark.line + 1
            _line_map(value_node, key_path, lines, where)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[path + (index,)] = item.start_mark.line + 1
            _line_map(item, path + (index,), lines, where)


def _line_of(lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...]) -> int | None:
    """The line of `loc`, or of its nearest parent that the file names (for missing keys)."""
    for end in range(len(loc), 0, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


def _dotted(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def _expand_env(value: Any, loc: tuple[Any, ...], where: str, lines: dict[tuple[Any, ...], int]) -> Any:
    if isinstance(value, dict):
        return {k: _expand_env(v, loc + (k,), where, lines) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, loc + (i,), where, lines) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        line = _line_of(lines, loc)
        at = f" line {line}" if line else ""
        raise ConfigError(f"{where}{at}: {_dotted(loc)}: environment variable {name} is not set")

    return ENV_PLACEHOLDER.sub(substitute, value)


def parse_config(
    data: Any,
    where: str = "config",
    lines: dict[tuple[Any, ...], int] | None = None,
    options: dict[tuple[str, str], str] | None = None,
) -> DaemonConfig:
    """Validate a mapping (already env-expanded) into a DaemonConfig; errors name key and line.

    `options` maps the keys that a command-line option set to that option: a bad value there is
    bad usage (exit 2, naming the option), not a bad configuration file (exit 78)."""
    lines = lines or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of sections (lanes, model, ...), got {type(data).__name__}")
    try:
        return DaemonConfig.model_validate(data)
    except ValidationError as exc:
        loc = first_problem(exc).loc
        option = (options or {}).get(loc[:2])  # type: ignore[arg-type]
        if option is not None:
            raise AgetoolError(describe(exc, lambda _loc: option)) from None

        def key_and_line(loc: tuple[Any, ...]) -> str:
            line = _line_of(lines, loc)
            return f"{where}{f' line {line}' if line else ''}: {_dotted(loc)}"

        raise ConfigError(describe(exc, key_and_line, unknown_key="unknown key")) from None


def _read_yaml(path: Path) -> tuple[Any, dict[tuple[Any, ...], int]]:
    """The env-expanded YAML data and the line of every key in it."""
    import yaml

    where = f"config {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{where}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read ({exc})") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}{at}: not valid YAML ({problem})") from None
    lines: dict[tuple[Any, ...], int] = {}
    if root is not None:
        _line_map(root, (), lines, where)
    return _expand_env(data, (), where, lines), lines


def load_config(path: Path) -> DaemonConfig:
    """Read, env-expand and validate a YAML config file, and check the files it names exist."""
    data, lines = _read_yaml(path)
    where = f"config {path}"
    config = parse_config(data, where, lines)
    check_files(config, where, lines)
    return config


def build_serve_config(
    config_path: Path | None,
    source: str | None,
    host: str | None = None,
    port: int | None = None,
    token: str | None = None,
    model: Path | None = None,
    detector: Path | None = None,
    providers: str | None = None,
    runtime: str | None = None,
) -> DaemonConfig:
    """`agetool serve`'s config: the YAML file, or one lane named `default` for --source, with
    command-line options taking precedence over the file."""
    if (config_path is None) == (source is None):
        raise ConfigError("serve: give either --config FILE or --source SOURCE")
    if config_path is not None:
        data, lines = _read_yaml(config_path)
        where = f"config {config_path}"
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a mapping of sections (lanes, model, ...)")
    else:
        assert source is not None
        data, lines, where = {"lanes": [{"name": "default", "source": _source_value(source)}]}, {}, "serve"
    overrides = {
        ("api", "host"): host, ("api", "port"): port, ("api", "bearer_token"): token,
        ("model", "path"): model, ("model", "providers"): providers, ("detector", "path"): detector,
        ("model", "runtime"): runtime,
    }
    given = {}
    for (section, key), value in overrides.items():
        if value is not None:
            existing = data.get(section)
            data[section] = {**(existing if isinstance(existing, dict) else {}), key: value}
            given[(section, key)] = SERVE_OPTIONS[(section, key)]
    config = parse_config(data, where, lines, options=given)
    check_files(config, where, lines)
    return config


# The config key each `agetool serve` option sets.
SERVE_OPTIONS = {
    ("api", "host"): "--host", ("api", "port"): "--port", ("api", "bearer_token"): "--token",
    ("model", "path"): "--model", ("model", "providers"): "--providers", ("detector", "path"): "--detector",
    ("model", "runtime"): "--runtime",
}


def _source_value(source: str) -> int | str:
    return int(source) if source.strip().isdigit() else source


def check_files(config: DaemonConfig, where: str = "config", lines: dict[tuple[Any, ...], int] | None = None) -> None:
    """The model and detector files the config points at exist (a deploy check, before serving)."""
    lines = lines or {}

    def fail(loc: tuple[Any, ...], message: str) -> None:
        line = _line_of(lines, loc)
        at = f" line {line}" if line else ""
        raise ConfigError(f"{where}{at}: {_dotted(loc)}: {message}")

    model_path = config.model.resolved_path()
    if not model_path.is_file():
        if config.model.path is None:
            fail(("model", "path"), f"not set and the default model {model_path} does not exist; "
                 "pass --model PATH or set model.path / $AGETOOL_MODEL")
        fail(("model", "path"), f"{model_path}: file not found")
    detector_path = config.detector.resolved_path()
    if detector_path is not None and not config.detector.is_haar() and not detector_path.is_file():
        fail(("detector", "path"), f"{detector_path}: file not found (a YuNet .onnx was expected)")
    central = config.analytics.central
    if central is not None and central.sslrootcert is not None and not central.sslrootcert.is_file():
        fail(("analytics", "central", "sslrootcert"), f"{central.sslrootcert}: file not found (a CA certificate was expected)")
