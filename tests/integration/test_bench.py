"""`fracture bench --json` runs end to end and reports every figure the docs quote."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from bench.machine import cpu_name
from bench.pipeline import table as bench_table
from tests.helpers import fracture_cli, fracture_env


def test_bench_json_reports_limit_pipeline_and_naive(tiny_model: Path, tmp_path: Path) -> None:
    completed = subprocess.run(
        [
            *fracture_cli("bench", "--json", "--n", "24", "--trickle", "3"),
            "--model",
            str(tiny_model),
        ],
        env=fracture_env(device="cpu", data_dir=tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    for key in (
        "limit_ips", "pipeline_ips", "naive_ips", "pipeline_over_limit", "pipeline_over_naive",
        "p50_ms", "p95_ms", "p99_ms", "worker_rss_mb", "device", "batch_size", "trickle_p95_ms",
    ):  # fmt: skip
        assert key in result, key
    assert result["n"] == 24 and result["device"] == "cpu" and result["runtime"] == "onnx"
    assert result["pipeline_ips"] > 0 and result["limit_ips"] > 0 and result["naive_ips"] > 0
    # Ratios are taken before the rates are rounded for printing.
    assert result["pipeline_over_limit"] == pytest.approx(
        result["pipeline_ips"] / result["limit_ips"], abs=0.01
    )
    assert result["worker_rss_mb"] > 100  # the sampler really read the worker process
    # Where the CPU went: every part read, and together they cover every core for the run.
    split = result["cpu_ms_per_image"]
    assert set(split) == {
        "worker", "worker_children", "watcher", "watcher_children", "broker", "bench", "other",
        "idle",
    }  # fmt: skip
    assert split["worker"] > 0 and split["watcher"] > 0 and min(split.values()) >= 0
    run_core_ms = 1000 / result["pipeline_ips"] * (os.cpu_count() or 1)
    assert sum(split.values()) >= 0.95 * run_core_ms
    assert result["limit_cpu_ms_per_image"] > 0 and result["network_share_of_cpu"] > 0
    assert "CPU per image" in bench_table(result)
    # The machine is named down to its CPU where the system says it (Linux: /proc/cpuinfo).
    assert result["machine"].endswith(f"{os.cpu_count()} CPU cores")
    if Path("/proc/cpuinfo").is_file():
        assert cpu_name() and cpu_name() in result["machine"]


def _bench(*args: str, model: Path, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*fracture_cli("bench", *args), "--model", str(model)],
        env=fracture_env(device="cpu", data_dir=data_dir),
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_bench_realistic_json_reports_the_same_figures_on_hospital_size_files(
    tiny_model: Path, tmp_path: Path
) -> None:
    completed = _bench(
        "--realistic", "--json", "--n", "6", "--trickle", "0", model=tiny_model, data_dir=tmp_path
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    for key in (
        "limit_ips", "pipeline_ips", "naive_ips", "pipeline_over_limit", "pipeline_over_naive",
        "p95_ms", "worker_rss_mb", "input_set", "input_formats", "input_mb_mean",
        "small_jpeg_pipeline_ips", "pipeline_over_small_jpeg",
    ):  # fmt: skip
        assert key in result, key
    assert result["n"] == 6 and result["input_set"] == "realistic"
    assert "3,000 px 12-bit DX DICOM, uncompressed" in result["input_formats"]
    assert (
        "JPEG 2000" in result["input_formats"] and "16-bit greyscale PNG" in result["input_formats"]
    )
    assert result["input_mb_mean"] > 4  # hospital-size files, not the 13 kB samples
    assert result["pipeline_ips"] > 0 and result["naive_ips"] > 0
    # The ratio is taken before the two rates are rounded for printing.
    assert result["pipeline_over_small_jpeg"] == pytest.approx(
        result["pipeline_ips"] / result["small_jpeg_pipeline_ips"], abs=0.01
    )


def test_bench_images_takes_every_format_the_pipeline_reads(
    tiny_model: Path, tmp_path: Path
) -> None:
    from bench.realistic import dicom_file, png16_file, stored_values
    from tests.helpers import sample_images

    folder = tmp_path / "drop"
    folder.mkdir()
    values = stored_values(sample_images()[0], 600, seed=0)
    (folder / "IM000001").write_bytes(dicom_file(values, syntax="dicom", inverted=True))
    (folder / "scan.png").write_bytes(png16_file(values))
    (folder / "notes.txt").write_text("not an image")  # left out, as it is no image
    (folder / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 64)  # a failed row
    completed = _bench(
        "--images", str(folder), "--json", "--n", "6", "--trickle", "0",
        model=tiny_model, data_dir=tmp_path / "data",
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "Traceback" not in completed.stderr
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["input_set"] == "images" and result["naive_ips"] > 0


def test_realistic_dicom_scores_as_at_full_resolution_with_the_shipped_model() -> None:
    """The reduced route (area reduction before the display mapping, JPEG 2000 at reduced
    resolution) against the display mapping on every full-size pixel: same probability within
    0.005, on the eight sample radiographs made 3,000 px 12-bit DICOM."""
    import io

    import numpy as np
    import pydicom
    import torch
    from pydicom.pixels import pixel_array

    from bench.realistic import dicom_file, stored_values
    from model import dicom
    from model.inference import Classifier
    from tests.helpers import sample_images

    def full_resolution(data: bytes) -> torch.Tensor:
        ds = pydicom.dcmread(io.BytesIO(data))
        view, photometric = dicom._frame_view(ds), str(ds.PhotometricInterpretation)
        return classifier.preset(dicom._monochrome_full(pixel_array(ds), view, photometric))

    def rewindowed(data: bytes, window: tuple[float, float] | None) -> bytes:
        ds = pydicom.dcmread(io.BytesIO(data))
        if window is None:
            del ds.WindowCenter, ds.WindowWidth
        else:
            ds.WindowCenter, ds.WindowWidth = window
        buffer = io.BytesIO()
        ds.save_as(buffer)
        return buffer.getvalue()

    classifier = Classifier.load(
        Path("model/weights/fracture-single-pass.pt").resolve(), device="cpu"
    )
    try:
        worst = {}
        for index, path in enumerate(sample_images()):
            values = stored_values(path, 3000, seed=index)
            files = {
                "MONOCHROME2, window over the range": dicom_file(
                    values, syntax="dicom", inverted=False
                ),
                "MONOCHROME1, window over the range": dicom_file(
                    values, syntax="dicom", inverted=True
                ),
                "JPEG 2000 lossless": dicom_file(values, syntax="dicom-j2k", inverted=False),
            }
            base = files["MONOCHROME2, window over the range"]
            files["window that clips"] = rewindowed(base, (1400.0, 1600.0))
            files["no window (min-max)"] = rewindowed(base, None)
            # an odd width: no factor divides both sides, OpenCV's general area path
            odd = dicom_file(values[:, :-1], syntax="dicom", inverted=False)
            files["odd width, window that clips"] = rewindowed(odd, (1400.0, 1600.0))
            for name, data in files.items():
                reduced = classifier.prepare(data)
                assert reduced.decoded.pixels.shape[0] <= 1500  # reduced, not 3,000 rows
                expected = classifier.probabilities(full_resolution(data)[None])
                seen = classifier.probabilities(reduced.tensor[None])
                worst[name] = max(worst.get(name, 0.0), float(np.abs(seen - expected).max()))
    finally:
        classifier.close()
    assert max(worst.values()) <= 0.005, worst


def test_bench_with_two_workers_runs_both_and_says_so(tiny_model: Path, tmp_path: Path) -> None:
    completed = _bench(
        "--json",
        "--n",
        "16",
        "--trickle",
        "0",
        "--workers",
        "2",
        model=tiny_model,
        data_dir=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["workers"] == 2 and result["n"] == 16 and result["pipeline_ips"] > 0
