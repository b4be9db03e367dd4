"""Results back to PACS: for each stored prediction of a DICOM image, a secondary capture and a
structured report sent by C-STORE to the configured destination, with retries and backoff.

The queue is the `dicom_exports` table (db/exports.py), so nothing is lost when the sender or
the destination is down. Each result's UIDs are derived from the original instance and the
model version, so a result sent twice (a crash between the send and its record) is one result
in PACS, not two.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from sqlalchemy.orm import Session, sessionmaker

from config import Destination
from db import exports
from db.models import Prediction, utcnow
from db.session import transaction
from model.decode import DecodeError, decode
from pacs.objects import Finding, ResultUIDs, secondary_capture, structured_report
from telemetry import metrics

log = logging.getLogger(__name__)

LEASE = timedelta(minutes=2)  # a claimed export is hidden from other senders this long
SUCCESS_STATUSES = {0x0000, 0xB000, 0xB007, 0xB006}  # success, and warnings that stored it


class SendError(RuntimeError):
    """One result could not be sent; the message is stored and shown."""


@dataclass
class SendOutcome:
    queued: int = 0
    sent: list[int] = field(default_factory=list)
    retrying: dict[int, str] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)


def finding_of(prediction: Prediction) -> Finding:
    return Finding(
        verdict=prediction.verdict or "no_fracture",
        probability=float(prediction.probability),
        threshold=float(prediction.threshold),
        doubt_threshold=prediction.doubt_threshold,
        region=prediction.region,
        model_version=prediction.model_version,
        boxes=prediction.boxes,
    )


def build_results(path: str, prediction: Prediction) -> tuple[Dataset, Dataset]:
    """(secondary capture, structured report) for the stored file at `path`."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SendError(f"original file unreadable: {exc.strerror or exc}") from exc
    try:
        original = pydicom.dcmread(io.BytesIO(data), force=True)
        pixels = decode(data, target_size=None).pixels
    except DecodeError as exc:
        raise SendError(f"original image cannot be decoded: {exc}") from exc
    except Exception as exc:  # pydicom raises many types for a file it cannot read
        raise SendError(f"original is not a readable DICOM file ({type(exc).__name__})") from exc
    if "SOPInstanceUID" not in original or "StudyInstanceUID" not in original:
        raise SendError("original has no SOP Instance UID or Study Instance UID")
    finding = finding_of(prediction)
    uids = ResultUIDs.for_result(str(original.SOPInstanceUID), prediction.model_version)
    return (
        secondary_capture(original, pixels, finding, uids),
        structured_report(original, finding, uids),
    )


class ResultSender:
    """Queues new results, claims due ones and sends them over one association per pass."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        destination: Destination,
        *,
        ae_title: str,
        max_attempts: int = 10,
        backoff_s: float = 5.0,
        include_folder_files: bool = False,
        clock: Callable[[], datetime] = utcnow,
        timeout_s: float = 10.0,
    ) -> None:
        self.factory = factory
        self.destination = destination
        self.ae_title = ae_title
        self.max_attempts = max_attempts
        self.backoff = timedelta(seconds=backoff_s)
        self.include_folder_files = include_folder_files
        self.clock = clock
        self.timeout_s = timeout_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_pass(self) -> SendOutcome:
        """Queue new results, then send every due one (in rounds of 32)."""
        outcome = SendOutcome()
        with transaction(self.factory) as session:
            outcome.queued = exports.queue_results(
                session=session, include_folder_files=self.include_folder_files, now=self.clock()
            )
        while not self._stop.is_set():
            with transaction(self.factory) as session:
                due = exports.claim_due(session=session, now=self.clock(), lease=LEASE)
            if not due:
                break
            self._send_round(due, outcome)
            if outcome.retrying and not outcome.sent:
                break  # the destination is down: wait for the backoff, not a tight loop
        if outcome.sent or outcome.retrying or outcome.failed:
            log.info(
                "results to %s: %d sent, %d to retry, %d failed",
                self.destination,
                len(outcome.sent),
                len(outcome.retrying),
                len(outcome.failed),
            )
        return outcome

    def _send_round(self, due: list[exports.DueExport], outcome: SendOutcome) -> None:
        built: dict[int, tuple[Dataset, Dataset]] = {}
        for item in due:
            try:
                built[item.export_id] = build_results(item.path, item.prediction)
            except SendError as exc:
                self._record_failure(item.export_id, str(exc), outcome)
        if not built:
            return
        association: Association | None = None
        try:
            association = self._associate()
            for export_id, objects in built.items():
                try:
                    for dataset in objects:
                        self._store(association, dataset)
                except SendError as exc:
                    self._record_failure(export_id, str(exc), outcome)
                    if not association.is_established:
                        association = self._associate()
                else:
                    with transaction(self.factory) as session:
                        exports.mark_sent(
                            session=session,
                            export_id=export_id,
                            destination=str(self.destination),
                            now=self.clock(),
                        )
                    outcome.sent.append(export_id)
                    metrics.DICOM_SENT.inc()
        except SendError as exc:
            recorded = {*outcome.sent, *outcome.retrying, *outcome.failed}
            for export_id in built:
                if export_id not in recorded:  # each attempt is counted once
                    self._record_failure(export_id, str(exc), outcome)
        finally:
            if association is not None and association.is_established:
                association.release()

    def _associate(self) -> Association:
        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout = self.timeout_s
        ae.dimse_timeout = 4 * self.timeout_s
        ae.network_timeout = 4 * self.timeout_s
        ae.connection_timeout = self.timeout_s
        ae.add_requested_context(pydicom.uid.SecondaryCaptureImageStorage, ExplicitVRLittleEndian)
        for sop_class in (
            pydicom.uid.Comprehensive3DSRStorage,
            pydicom.uid.ComprehensiveSRStorage,
            pydicom.uid.EnhancedSRStorage,
        ):
            ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
        destination = self.destination
        association = ae.associate(
            destination.host, destination.port, ae_title=destination.ae_title
        )
        if not association.is_established:
            reason = "rejected the association" if association.is_rejected else "unreachable"
            raise SendError(f"destination {destination} {reason}")
        return association

    @staticmethod
    def _store(association: Association, dataset: Dataset) -> None:
        if not association.is_established:
            raise SendError("the association was lost")
        status = association.send_c_store(dataset)
        code = getattr(status, "Status", None)
        if code is None:
            raise SendError("no answer from the destination (timeout or connection lost)")
        if int(code) not in SUCCESS_STATUSES:
            raise SendError(f"destination refused {dataset.Modality} object: status 0x{code:04X}")

    def _record_failure(self, export_id: int, error: str, outcome: SendOutcome) -> None:
        with transaction(self.factory) as session:
            failed = exports.mark_attempt_failed(
                session=session,
                export_id=export_id,
                destination=str(self.destination),
                error=error,
                now=self.clock(),
                max_attempts=self.max_attempts,
                backoff=self.backoff,
            )
        (outcome.failed if failed else outcome.retrying)[export_id] = error
        metrics.DICOM_FAILED.labels("true" if failed else "false").inc()
        log.warning("result %d %s: %s", export_id, "failed" if failed else "will be retried", error)

    # -- as a background thread (inside `fracture dicom-listen`) ----------------------------
    def _loop(self, interval_s: float) -> None:
        while not self._stop.is_set():
            try:
                self.run_pass()
            except Exception:
                log.exception("sending results failed; trying again in %.0f s", interval_s)
            self._stop.wait(interval_s)

    def start(self, interval_s: float = 1.0) -> None:
        self._thread = threading.Thread(
            target=self._loop, args=(interval_s,), name="dicom-send", daemon=True
        )
        self._thread.start()
        log.info("sending results to %s", self.destination)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
