"""The one settings object (FRACTURE_* environment over defaults, flags over both), built once per
entry point by `build_settings`, and UserError for what the user must fix."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class UserError(Exception):
    """A problem the user can fix (a setting, an argument): shown as one line, no traceback."""


@dataclass(frozen=True)
class Destination:
    """A DICOM peer: its AE title, host and port."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def check_ae_title(value: str, setting: str) -> str:
    """An AE title as DICOM allows it: 1-16 printable ASCII characters, no backslash."""
    if not 1 <= len(value.strip()) <= 16 or not value.isascii() or not value.isprintable():
        raise ValueError(f"{setting}: an AE title is 1-16 printable ASCII characters: {value!r}")
    if "\\" in value:
        raise ValueError(f"{setting}: an AE title may not contain a backslash: {value!r}")
    return value.strip()


def parse_destination(text: str) -> Destination:
    """`AET@host:port` → Destination; ValueError naming the expected form otherwise."""
    title, at, address = text.strip().partition("@")
    host, colon, port = address.rpartition(":")
    if not (at and colon and title and host and port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(
            f"FRACTURE_DICOM_DESTINATION must look like AET@host:port (e.g. PACS@10.0.0.5:104), "
            f"got {text!r}"
        )
    return Destination(check_ae_title(title, "FRACTURE_DICOM_DESTINATION"), host, int(port))


SHIPPED_MODEL = Path(__file__).resolve().parent.parent / "model" / "weights" / "fracture.pt"


class Settings(BaseSettings):
    """Everything a process needs to know, read once per entry point and passed down."""

    model_config = SettingsConfigDict(env_prefix="FRACTURE_", extra="ignore")

    inbox: Path = Path("./inbox")
    data_dir: Path = Path("./data")
    database_url: str | None = None
    broker_url: str | None = None
    model_path: Path | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    runtime: Literal["auto", "torch", "onnx"] = Field(
        "auto", description="auto: ONNX Runtime on CPU where the network allows, else PyTorch"
    )

    # 32 rather than 16 since the ONNX Runtime lanes and arena: 7 % more images per second on
    # 2 cores, the same worker peak (docs/PERFORMANCE.md); a trickle waits the flush interval.
    batch_size: int = Field(32, description="images per inference batch")
    batch_interval_ms: int = Field(250, description="longest wait before a partial batch runs")
    worker_prefetch: int | None = Field(
        None, description="messages a worker holds unacknowledged; default: two batches"
    )

    dashboard_port: int = 8501
    dashboard_host: str = Field(
        "127.0.0.1",
        description="address the dashboard listens on; 0.0.0.0 exposes it (set a password)",
    )
    dashboard_password: SecretStr | None = None
    upload_max_mb: int = 64
    upload_timeout_s: float = 60.0

    polling: bool = Field(False, description="use a polling observer (network shares)")
    settle_s: float = Field(1.0, description="a file is complete when unchanged this long")
    hash_threads: int = 2

    sweep_interval_s: float = 15.0
    rescan_interval_s: float = Field(
        60.0, gt=0, description="inbox rescan for missed events; unchanged files are not read"
    )
    heartbeat_s: float = Field(
        5.0, gt=0, description="how often a worker says it is alive (in the database)"
    )
    dead_after_s: float = Field(
        15.0, gt=0, description="a worker silent this long is dead: its images are re-sent"
    )
    stuck_after_s: float = Field(
        120.0, description="re-send images queued/processing this long (> task time limit)"
    )
    visibility_timeout_s: int = Field(600, description="broker redelivery of unacked messages")
    task_time_limit_s: int = Field(60, description="a batch running longer is aborted")
    max_attempts: int = Field(
        3, ge=1, description="tries before an image is failed; a retried image runs alone"
    )
    workers: int = Field(
        1, ge=1, description="worker processes `fracture up` starts, each with its own model"
    )
    worker_threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads one worker's network uses; default: every core, or an equal "
        "share of them for each of `fracture up`'s FRACTURE_WORKERS",
    )
    decode_isolation: Literal["process", "thread"] = Field(
        "process",
        description="worker decoding in child processes (a decoder crash costs one image) "
        "or in threads of the worker itself",
    )

    dicom_port: int | None = Field(
        None, description="DICOM listener port (C-STORE SCP); unset: no listener in `up`"
    )
    dicom_host: str = Field("127.0.0.1", description="address the DICOM listener binds")
    dicom_ae_title: str = Field("FRACTURE", description="the listener's own AE title")
    dicom_calling_aes: str = Field(
        "", description="comma-separated AE titles allowed to send; empty: anyone (warned)"
    )
    dicom_destination: str | None = Field(
        None, description="where results go: AET@host:port (C-STORE); unset: not sent"
    )
    dicom_send_attempts: int = Field(10, description="sends tried before a result is failed")
    dicom_send_backoff_s: float = Field(
        5.0, description="wait after the first failed send; doubles each time, at most 10 min"
    )
    dicom_export_folder_files: bool = Field(
        False, description="also send results for DICOM files dropped in the folder"
    )

    restart_limit: int = Field(
        5, description="`fracture up` restarts a child this often within the window, then gives up"
    )
    restart_window_s: float = Field(60.0, description="the window restart_limit counts in")

    patient_salt: SecretStr | None = Field(
        None, description="secret salt: DICOM patient IDs are kept only as a salted hash"
    )
    heatmaps: Literal["positive", "all", "none"] = "positive"
    max_pixels: int = Field(80_000_000, description="refuse images with more pixels than this")
    max_file_mb: int = Field(
        1024, ge=1, description="larger files are recorded as failed and never read"
    )
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = Field(
        "text", description="json: one JSON object per line, for a log shipper"
    )
    metrics_port: int | None = Field(
        None,
        description="Prometheus metrics on this port (0 or unset: none); `fracture up` serves "
        "its own here and gives its worker, watcher and DICOM listener the next three",
    )
    metrics_host: str = Field("127.0.0.1", description="address the metrics endpoint binds")

    @field_validator("worker_threads", mode="before")
    @classmethod
    def _threads_unset_when_empty(cls, value: object) -> object:
        # The compose file passes FRACTURE_WORKER_THREADS on as "" when the host leaves it unset.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("batch_size")
    @classmethod
    def _batch_size_positive(cls, value: int) -> int:
        if not 1 <= value <= 4096:
            raise ValueError("FRACTURE_BATCH_SIZE must be between 1 and 4096")
        return value

    @field_validator("batch_interval_ms")
    @classmethod
    def _interval_positive(cls, value: int) -> int:
        if not 1 <= value <= 60_000:
            raise ValueError("FRACTURE_BATCH_INTERVAL_MS must be between 1 and 60000")
        return value

    @field_validator("dicom_ae_title")
    @classmethod
    def _ae_title_valid(cls, value: str) -> str:
        return check_ae_title(value, "FRACTURE_DICOM_AE_TITLE")

    @field_validator("dicom_calling_aes")
    @classmethod
    def _calling_aes_valid(cls, value: str) -> str:
        for title in value.split(","):
            if title.strip():
                check_ae_title(title.strip(), "FRACTURE_DICOM_CALLING_AES")
        return value

    @field_validator("dicom_destination")
    @classmethod
    def _destination_valid(cls, value: str | None) -> str | None:
        if value:
            parse_destination(value)
        return value or None

    @field_validator("dicom_port")
    @classmethod
    def _port_valid(cls, value: int | None) -> int | None:
        if value is not None and not 1 <= value <= 65535:
            raise ValueError("FRACTURE_DICOM_PORT must be between 1 and 65535")
        return value

    @field_validator("metrics_port")
    @classmethod
    def _metrics_port_valid(cls, value: int | None) -> int | None:
        if value is not None and not 0 <= value <= 65535 - 3:
            raise ValueError("FRACTURE_METRICS_PORT must be between 1 and 65532 (0: no metrics)")
        return value or None

    @model_validator(mode="after")
    def _prefetch_fills_batches(self) -> Settings:
        # celery-batches only flushes by size if the worker may hold a whole batch.
        if self.worker_prefetch is not None and self.worker_prefetch < self.batch_size:
            raise ValueError(
                "FRACTURE_WORKER_PREFETCH must be at least FRACTURE_BATCH_SIZE "
                f"({self.worker_prefetch} < {self.batch_size}), or batches never fill"
            )
        return self

    @model_validator(mode="after")
    def _timeouts_ordered(self) -> Settings:
        # A batch may run up to the time limit; only after that may the sweeper assume it
        # was lost, and the broker's own redelivery is the slowest backstop.
        if not self.task_time_limit_s < self.stuck_after_s <= self.visibility_timeout_s:
            raise ValueError(
                "timeouts must satisfy FRACTURE_TASK_TIME_LIMIT_S < FRACTURE_STUCK_AFTER_S <= "
                f"FRACTURE_VISIBILITY_TIMEOUT_S (got {self.task_time_limit_s}, "
                f"{self.stuck_after_s}, {self.visibility_timeout_s})"
            )
        # A prefetched message may wait for the running batch and then run in its own.
        if not 2 * self.task_time_limit_s < self.visibility_timeout_s:
            raise ValueError(
                "FRACTURE_VISIBILITY_TIMEOUT_S must exceed twice FRACTURE_TASK_TIME_LIMIT_S, or "
                f"healthy work is handed out twice (got {self.visibility_timeout_s} and "
                f"{self.task_time_limit_s})"
            )
        if not self.heartbeat_s < self.dead_after_s:
            raise ValueError(
                "FRACTURE_DEAD_AFTER_S must be longer than FRACTURE_HEARTBEAT_S "
                f"(got {self.dead_after_s} and {self.heartbeat_s})"
            )
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'fracture.db').resolve()}"

    @property
    def resolved_model_path(self) -> Path:
        return self.model_path if self.model_path is not None else SHIPPED_MODEL

    @property
    def debug(self) -> bool:
        """FRACTURE_LOG_LEVEL=DEBUG: libraries' start-up output (banners, migrations) shown too."""
        return self.log_level.upper() == "DEBUG"

    @property
    def prefetch(self) -> int:
        return self.worker_prefetch if self.worker_prefetch is not None else 2 * self.batch_size

    @property
    def calling_ae_titles(self) -> list[str]:
        return [t.strip() for t in self.dicom_calling_aes.split(",") if t.strip()]

    @property
    def destination(self) -> Destination | None:
        return parse_destination(self.dicom_destination) if self.dicom_destination else None

    @property
    def dicom_dir(self) -> Path:
        """Instances received over the network, as sent (they hold patient data: private)."""
        return self.data_dir / "dicom"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def heatmaps_dir(self) -> Path:
        return self.data_dir / "heatmaps"

    @property
    def broker_dir(self) -> Path:
        return self.data_dir / "broker"

    def ensure_dirs(self) -> None:
        for path in (self.inbox, self.data_dir, self.uploads_dir, self.heatmaps_dir):
            path.mkdir(parents=True, exist_ok=True)


def build_settings(**overrides: Any) -> Settings:
    """Settings from the environment with the given (non-None) values on top; UserError naming
    every invalid setting otherwise."""
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        raise UserError(f"invalid settings: {problems}") from exc
