"""`fracture dicom-listen`: a C-STORE SCP. Each image instance is written, fsynced and registered
(through the same arrow as a file from the folder) before the sender is told Success.

Non-image instances (reports, presentation states, key objects) are acknowledged and ignored;
a dataset that cannot be parsed is kept, recorded as failed with the reason, and answered
with a failure status. Patient data stays in the stored files (a private directory): logs name
instances by SOP Instance UID only.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pydicom.config
from celery import Celery
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, VerificationPresentationContexts, evt
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.orm import Session, sessionmaker

from db import queries
from db.models import ImageSource
from model.files import file_signature
from telemetry import metrics
from worker import client

log = logging.getLogger(__name__)

# Values read here are checked below; pydicom's own validation would log element values.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

# What model/decode.py decodes (pydicom with the pylibjpeg plugins): offered for every
# storage SOP class. JPEG Extended (12-bit) and JPEG-LS are not offered, so a sender converts.
TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent by old devices)
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (8-bit)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless, Non-Hierarchical (Process 14)
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless, First-Order Prediction (Process 14 SV1)
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless Only
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
)
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
OUR_MANUFACTURER = "fracture-screening"  # results we made, routed back to us by a PACS

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # "Refused: Out of Resources": the sender should try again
CANNOT_UNDERSTAND = 0xC210  # "Error: Cannot understand"

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


class MalformedDataset(ValueError):
    """The instance's bytes are not a dataset this listener can read."""


@dataclass(frozen=True)
class Instance:
    """What the listener reads from a received instance's header."""

    identity: queries.DicomIdentity
    has_pixels: bool
    sop_class_name: str
    ours: bool  # made by this product (a result sent back to us)


def read_instance(encoded: bytes, calling_ae: str | None) -> Instance:
    """Parse the header (not the pixels) of a Part 10 byte stream; MalformedDataset if it
    cannot be read."""
    try:
        ds = pydicom.dcmread(io.BytesIO(encoded), force=True, stop_before_pixels=False)
        # Convert every top-level element now: a broken one must fail here, not in the worker.
        for element in ds.iterall():
            if element.keyword not in PIXEL_KEYWORDS:
                _ = element.value
    except Exception as exc:  # pydicom raises many types for broken input
        raise MalformedDataset(f"malformed DICOM dataset ({type(exc).__name__})") from exc
    sop_class = _uid(ds, "SOPClassUID")
    if sop_class is None:
        raise MalformedDataset("malformed DICOM dataset (no valid SOP Class UID)")
    return Instance(
        identity=queries.DicomIdentity(
            study_uid=_uid(ds, "StudyInstanceUID"),
            series_uid=_uid(ds, "SeriesInstanceUID"),
            sop_instance_uid=_uid(ds, "SOPInstanceUID"),
            sop_class_uid=sop_class,
            calling_ae=calling_ae,
        ),
        has_pixels=any(keyword in ds for keyword in PIXEL_KEYWORDS),
        sop_class_name=_sop_class_name(sop_class),
        ours=str(ds.get("Manufacturer", "")) == OUR_MANUFACTURER,
    )


def _uid(ds: Dataset, keyword: str) -> str | None:
    value = str(ds.get(keyword, "") or "").strip().rstrip("\x00")
    return value if _UID.fullmatch(value) and len(value) <= 64 else None


def _sop_class_name(uid: str | None) -> str:
    if uid is None:
        return "unknown SOP class"
    name = pydicom.uid.UID(uid).name
    return name if name != uid else f"SOP class {uid}"


def write_durably(path: Path, data: bytes) -> None:
    """Write, fsync, rename into place, fsync the folder: on disk before we say Success."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".part")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


class StoreHandler:
    """Receives instances: durable file, image row, queued; one call per C-STORE request."""

    def __init__(self, *, directory: Path, app: Celery, factory: sessionmaker[Session]) -> None:
        self.directory = directory
        self.app = app
        self.factory = factory
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)

    def store(self, encoded: bytes, calling_ae: str | None) -> int:
        """The status for the sender, after the instance is safely kept (or not)."""
        metrics.FILES_SEEN.labels("dicom").inc()
        sha = hashlib.sha256(encoded).hexdigest()
        try:
            instance = read_instance(encoded, calling_ae)
        except MalformedDataset as exc:
            return self._keep_malformed(encoded, sha, str(exc), calling_ae)
        sop_uid = instance.identity.sop_instance_uid
        if not instance.has_pixels:
            log.info("ignored non-image instance %s (%s)", sop_uid, instance.sop_class_name)
            return SUCCESS
        if instance.ours:
            log.info("ignored instance %s: a result made by this product", sop_uid)
            return SUCCESS
        if sop_uid is None:
            return self._keep_malformed(
                encoded, sha, "no valid SOP Instance UID: cannot be told apart", calling_ae
            )
        study = instance.identity.study_uid or "no-study"
        path = self.directory / study / f"{sop_uid}.dcm"
        try:
            with self.factory() as session:
                known = queries.image_by_sop_instance(session=session, sop_instance_uid=sop_uid)
            if known is not None:
                log.info("instance %s already received (image %d)", sop_uid, known.id)
                return SUCCESS
            write_durably(path, encoded)
            # Only this process writes its folder (0700), so the file's signature is taken at
            # once: the worker need not hash the bytes again (see model.files).
            signature = file_signature(os.stat(path))
            entry = self._entry(path, sha, len(encoded), instance.identity, signature=signature)
            client.register(self.app, self.factory, [entry], source=ImageSource.DICOM)
        except Exception:
            log.exception("could not store instance %s; the sender is asked to retry", sop_uid)
            return OUT_OF_RESOURCES
        return SUCCESS

    def _entry(
        self,
        path: Path,
        sha: str,
        size: int,
        identity: queries.DicomIdentity | None,
        rejection: str | None = None,
        signature: str | None = None,
    ) -> queries.NewImage:
        return queries.NewImage(
            sha256=sha,
            path=str(path),
            filename=str(path.relative_to(self.directory.parent)),
            size=size,
            fmt="dcm",
            rejection=rejection,
            dicom=identity,
            signature=signature,
        )

    def _keep_malformed(self, encoded: bytes, sha: str, reason: str, calling_ae: str | None) -> int:
        """Keep the bytes and a failed row with the reason; tell the sender it failed."""
        path = self.directory / "unreadable" / f"{sha[:32]}.dcm"
        try:
            write_durably(path, encoded)
            identity = queries.DicomIdentity(None, None, None, None, calling_ae)
            entry = self._entry(path, sha, len(encoded), identity, rejection=reason)
            client.register(self.app, self.factory, [entry], source=ImageSource.DICOM)
        except Exception:
            log.exception("could not keep an unreadable instance")
            return OUT_OF_RESOURCES
        log.warning("refused an instance from %s: %s", calling_ae or "?", reason)
        return CANNOT_UNDERSTAND


class Listener:
    """The SCP: its AE, the accepted calling AE titles, C-STORE and C-ECHO handlers."""

    def __init__(
        self,
        handler: StoreHandler,
        *,
        ae_title: str,
        host: str,
        port: int,
        calling_aes: list[str],
    ) -> None:
        self.handler = handler
        self.address = (host, port)
        self.ae = AE(ae_title=ae_title)
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:
                self.ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)
        self.ae.supported_contexts = [
            *self.ae.supported_contexts,
            *VerificationPresentationContexts,
        ]
        self.ae.require_calling_aet = calling_aes
        self.ae.maximum_associations = 16
        # A sender that stops mid-association is dropped after a minute, not held forever.
        self.ae.network_timeout = 60
        self.ae.dimse_timeout = 60
        self.ae.acse_timeout = 30
        if not calling_aes:
            log.warning(
                "accepting instances from ANY calling AE title: set FRACTURE_DICOM_CALLING_AES"
            )
        self.server: ThreadedAssociationServer | None = None
        self.received = 0
        self._lock = threading.Lock()

    def _on_store(self, event: Any) -> int:
        calling = str(event.assoc.requestor.ae_title).strip() or None
        status = self.handler.store(event.encoded_dataset(), calling)
        with self._lock:
            self.received += 1
        return status

    @staticmethod
    def _on_echo(_event: Any) -> int:
        return SUCCESS

    def start(self) -> None:
        server = self.ae.start_server(
            self.address,
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, self._on_echo)],
        )
        if server is None:  # pragma: no cover - only a blocking server returns None
            raise RuntimeError("the DICOM server did not start")
        self.server = server
        host, port = server.server_address[:2]
        log.info("DICOM listener %s on %s:%d", self.ae.ae_title, host, port)

    @property
    def port(self) -> int:
        if self.server is None:
            return self.address[1]
        return int(self.server.server_address[1])

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None
