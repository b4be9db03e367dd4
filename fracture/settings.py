"""The one settings object: FRACTURE_* environment variables over defaults, CLI flags over both."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

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

    batch_size: int = Field(16, description="images per inference batch")
    batch_interval_ms: int = Field(250, description="longest wait before a partial batch runs")
    worker_prefetch: int | None = Field(
        None, description="messages a worker holds unacknowledged; default: two batches"
    )

    dashboard_port: int = 8501
    dashboard_password: SecretStr | None = None
    upload_max_mb: int = 64
    upload_timeout_s: float = 60.0

    polling: bool = Field(False, description="use a polling observer (network shares)")
    settle_s: float = Field(1.0, description="a file is complete when unchanged this long")
    hash_threads: int = 2

    sweep_interval_s: float = 15.0
    stuck_after_s: float = Field(
        120.0, description="re-send images queued/processing this long (> task time limit)"
    )
    visibility_timeout_s: int = Field(600, description="broker redelivery of unacked messages")
    task_time_limit_s: int = Field(60, description="a batch running longer is aborted")

    patient_salt: SecretStr | None = Field(
        None, description="secret salt: DICOM patient IDs are kept only as a salted hash"
    )
    heatmaps: Literal["positive", "all", "none"] = "positive"
    max_pixels: int = Field(80_000_000, description="refuse images with more pixels than this")
    log_level: str = "INFO"

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
    def prefetch(self) -> int:
        return self.worker_prefetch if self.worker_prefetch is not None else 2 * self.batch_size

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
