"""`fracture bench --dicom`: instances per second through the DICOM listener, from DCMTK's
`storescu` over one association to stored predictions, on the same machine.

Two figures from one run: how fast the listener acknowledges instances (each written,
fsynced and registered before Success), and how fast they come out scored at the other end.
Nothing here asserts a speed.
"""

from __future__ import annotations

import io
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

from bench.pipeline import SAMPLES, Pipeline
from worker.broker import free_port


def dicom_copies(sources: list[Path], n: int, directory: Path) -> list[Path]:
    """N 12-bit DX instances of one study, cycled from the sample radiographs: the pixels of
    each repeat are shifted by one grey level step so no two are the same image."""
    directory.mkdir(parents=True, exist_ok=True)
    greys = []
    for source in sources:
        with Image.open(source) as image:
            greys.append(np.asarray(ImageOps.grayscale(image), dtype=np.uint16) * 16)
    study, series = generate_uid(), generate_uid()
    made = []
    for index in range(n):
        grey = greys[index % len(greys)] + index // len(greys)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = DigitalXRayImageStorageForPresentation
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.Modality, ds.InstanceNumber = "DX", index + 1
        ds.PatientName, ds.PatientID = "Bench^Patient", "BENCH-0001"
        ds.Rows, ds.Columns = grey.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = np.clip(grey, 0, 4095).astype(np.uint16).tobytes()
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        path = directory / f"bench_{index:06d}.dcm"
        path.write_bytes(buffer.getvalue())
        made.append(path)
    return made


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def run(*, n: int, model: Path, device: str, batch_size: int) -> dict[str, Any]:
    storescu = shutil.which("storescu")
    if storescu is None:
        raise RuntimeError("storescu not found: install DCMTK (apt-get install dcmtk)")
    with tempfile.TemporaryDirectory(prefix="fracture-bench-dicom-") as tmp:
        root = Path(tmp)
        files = dicom_copies(sorted(SAMPLES.glob("*.jpg")), n, root / "instances")
        size = files[0].stat().st_size
        port = free_port()
        pipeline = Pipeline(root / "run", model, device, dicom_port=port, batch_size=batch_size)
        log = (root / "run" / "dicom.log").open("wb")
        listener = subprocess.Popen(
            [sys.executable, "-m", "fracture", "dicom-listen"],
            env=pipeline.env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while not _listening(port):
                if time.monotonic() > deadline or listener.poll() is not None:
                    raise RuntimeError("the DICOM listener did not start")
                time.sleep(0.2)
            started = time.monotonic()
            sent = subprocess.run(
                [storescu, "-aet", "BENCH", "-aec", "FRACTURE", "127.0.0.1", str(port)]
                + [str(path) for path in files],
                capture_output=True, text=True, timeout=3600, check=False,
            )  # fmt: skip
            received = time.monotonic()
            if sent.returncode != 0:
                raise RuntimeError(f"storescu failed: {sent.stderr[-500:]}")
            while pipeline.finished() < n:
                if time.monotonic() - received > 600:
                    raise RuntimeError(f"only {pipeline.finished()} of {n} scored in 10 min")
                time.sleep(0.1)
            scored = time.monotonic()
        finally:
            listener.terminate()
            listener.wait(timeout=30)
            log.close()
            pipeline.close()
    return {
        "n": n,
        "instance_kb": round(size / 1024, 1),
        "receive_ips": round(n / (received - started), 1),
        "scored_ips": round(n / (scored - started), 1),
        "receive_s": round(received - started, 2),
        "scored_s": round(scored - started, 2),
        "device": device,
        "batch_size": batch_size,
        "cpus": __import__("os").cpu_count(),
        "machine": platform.machine(),
    }


def table(result: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"DICOM listener, {result['n']} instances ({result['instance_kb']} KB each) from "
            "storescu over one association:",
            f"  acknowledged   {result['receive_ips']:8.1f} instances/s "
            f"({result['receive_s']} s; each fsynced and registered before Success)",
            f"  scored         {result['scored_ips']:8.1f} instances/s "
            f"({result['scored_s']} s, to the last stored prediction)",
            f"  device {result['device']}, batch size {result['batch_size']}, "
            f"{result['cpus']} CPUs. Decision support only, not for clinical use.",
        ]
    )
