"""Tables: one row per distinct image (by sha256), its predictions, and readers' reviews."""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """A stored time in UTC, with its zone: SQLite hands stored UTC times back without one."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class ImageStatus(enum.StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"


class Verdict(enum.StrEnum):
    """The model's answer: two operating points give three answers (doubt between them)."""

    FRACTURE = "fracture"
    DOUBT = "doubt"
    NO_FRACTURE = "no_fracture"

    @property
    def display(self) -> str:
        return {"fracture": "Fracture", "doubt": "Doubt", "no_fracture": "No fracture"}[self]


class ImageSource(enum.StrEnum):
    WATCH = "watch"
    UPLOAD = "upload"
    DICOM = "dicom"  # received over the network (C-STORE)


class ExportState(enum.StrEnum):
    """Where a result's trip back to PACS stands."""

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


class Image(Base):
    __tablename__ = "images"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    path: Mapped[str] = mapped_column(Text, doc="where the bytes live (inbox or upload store)")
    filename: Mapped[str] = mapped_column(Text, doc="display name, relative to the inbox")
    source: Mapped[str] = mapped_column(String(16), default=ImageSource.WATCH)
    bytes: Mapped[int] = mapped_column(BigInteger)
    file_signature: Mapped[str | None] = mapped_column(
        String(96), doc="size, times and inode when hashed: unchanged, the worker trusts sha256"
    )
    format: Mapped[str | None] = mapped_column(String(32))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    status: Mapped[str] = mapped_column(String(16), default=ImageStatus.QUEUED)
    error: Mapped[str | None] = mapped_column(Text)
    claimed_by: Mapped[str | None] = mapped_column(
        String(200), doc="the worker scoring it now (or last)"
    )
    warning: Mapped[str | None] = mapped_column(Text, doc="e.g. does not look like a radiograph")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )
    # Non-identifying acquisition metadata (DICOM); patient identity only as a salted hash.
    modality: Mapped[str | None] = mapped_column(String(16))
    body_part: Mapped[str | None] = mapped_column(String(64))
    view_position: Mapped[str | None] = mapped_column(String(16))
    study_date: Mapped[str | None] = mapped_column(String(8))
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    photometric: Mapped[str | None] = mapped_column(String(32))
    bits_stored: Mapped[int | None] = mapped_column(Integer)
    patient_hash: Mapped[str | None] = mapped_column(String(64))
    # DICOM identity, for instances received over the network: groups them by study, keeps a
    # re-sent instance from being scored twice, and puts the results back into the same study.
    study_uid: Mapped[str | None] = mapped_column(String(64))
    series_uid: Mapped[str | None] = mapped_column(String(64))
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    sop_class_uid: Mapped[str | None] = mapped_column(String(64))
    calling_ae: Mapped[str | None] = mapped_column(String(16), doc="AE title that sent it")

    predictions: Mapped[list[Prediction]] = relationship(
        back_populates="image", cascade="all, delete-orphan"
    )

    __table_args__ = (
        Index("ix_images_status", "status"),
        Index("ix_images_received_at", "received_at"),
        Index("ix_images_source", "source"),
        Index("ix_images_filename_id", "filename", "id"),
        Index("ix_images_study_uid", "study_uid"),
        # hash on PostgreSQL: equality is all it serves, and a B-tree refuses paths over ~2.7 KB
        Index("ix_images_path", "path", postgresql_using="hash"),
        Index("ix_images_sop_instance_uid", "sop_instance_uid", unique=True),
    )


class Prediction(Base):
    __tablename__ = "predictions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    model_version: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(32))
    probability: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    threshold_source: Mapped[str] = mapped_column(String(32), default="global")
    region: Mapped[str | None] = mapped_column(String(32))
    region_probability: Mapped[float | None] = mapped_column(Float)
    region_disagrees: Mapped[bool | None] = mapped_column(Boolean)
    heatmap_path: Mapped[str | None] = mapped_column(Text)
    # A Verdict; rows stored before migration 0004 were given theirs from `label`.
    verdict: Mapped[str | None] = mapped_column(String(16))
    doubt_threshold: Mapped[float | None] = mapped_column(Float, doc="None: two answers only")
    # [[x, y, width, height, score], ...] in the original image's pixels, best first; [] when
    # the model found none, NULL (not JSON null) when the model draws no boxes.
    boxes: Mapped[list[list[float]] | None] = mapped_column(JSON(none_as_null=True))
    batch_size: Mapped[int] = mapped_column(Integer)
    inference_ms: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    image: Mapped[Image] = relationship(back_populates="predictions")
    reviews: Mapped[list[Review]] = relationship(
        back_populates="prediction", cascade="all, delete-orphan"
    )

    __table_args__ = (
        UniqueConstraint("image_id", "model_version", name="uq_prediction_image_model"),
        Index("ix_predictions_label", "label"),
        Index("ix_predictions_probability", "probability"),
        Index("ix_predictions_created_at", "created_at"),
        Index("ix_predictions_created_at_label", "created_at", "label"),
        Index("ix_predictions_region", "region"),
        Index("ix_predictions_verdict", "verdict"),
    )


class Review(Base):
    """A reader's verdict on a prediction, stored beside it: the prediction is never changed."""

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prediction_id: Mapped[int] = mapped_column(ForeignKey("predictions.id", ondelete="CASCADE"))
    reviewer: Mapped[str] = mapped_column(String(128))
    verdict: Mapped[str] = mapped_column(String(32), doc="the reader's label")
    agrees: Mapped[bool] = mapped_column(Boolean)
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    prediction: Mapped[Prediction] = relationship(back_populates="reviews")

    __table_args__ = (Index("ix_reviews_prediction_id", "prediction_id"),)


class Duplicate(Base):
    """A file that arrived under another name with the bytes of a stored image: not scored
    again, but kept on record so a user looking for that file finds where it went."""

    __tablename__ = "duplicates"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(Text)
    filename: Mapped[str] = mapped_column(Text, doc="display name, relative to the inbox")
    bytes: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (Index("ix_duplicates_image_id", "image_id"),)


class Worker(Base):
    """A worker process that is alive as long as its heartbeat is recent."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    model_version: Mapped[str | None] = mapped_column(
        String(64), doc="the configured model's version: the one it can draw heat maps with"
    )


class DicomExport(Base):
    """One prediction's results (a secondary capture and a structured report) on their way to
    the configured DICOM destination: the send queue and its record in one row."""

    __tablename__ = "dicom_exports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prediction_id: Mapped[int] = mapped_column(
        ForeignKey("predictions.id", ondelete="CASCADE"), unique=True
    )
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    state: Mapped[str] = mapped_column(String(16), default=ExportState.PENDING)
    destination: Mapped[str | None] = mapped_column(String(200), doc="AET@host:port last used")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, doc="why the last attempt failed")
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    __table_args__ = (
        Index("ix_dicom_exports_state_next", "state", "next_attempt_at"),
        Index("ix_dicom_exports_image_id", "image_id"),
    )
