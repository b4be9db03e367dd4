"""`fracture bench`: the model's own limit, the real pipeline, and the naive loop, in one run.

Every figure comes from the same images and the same model on the same machine, so the ratios
hold even when the machine is noisy. Nothing here asserts a speed; it prints what it measured.
"""

from __future__ import annotations

import itertools
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

from bench.machine import cpu_name
from config import Settings
from fracture.supervisor import threads_env
from model.inference import Classifier
from worker.broker import PrivateBroker

log = logging.getLogger(__name__)

SAMPLES = Path(__file__).resolve().parent / "samples"  # shipped with the package (README there)
# What the pipeline reads (model.decode): these suffixes, and DICOM under any name.
IMAGE_SUFFIXES = {
    ".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".jp2", ".j2k", ".ppm",
    ".dcm", ".dicom",
}  # fmt: skip


def sample_files(directory: Path) -> list[Path]:
    """Every image file under `directory` that the pipeline would take (hidden and partial
    files aside, as the watcher skips them), DICOM files without a suffix included."""
    from watcher.watch import is_ignored

    files = sorted(
        path
        for path in directory.rglob("*")
        if path.is_file()
        and not is_ignored(path.relative_to(directory))
        and (path.suffix.lower() in IMAGE_SUFFIXES or _is_dicom(path))
    )
    if not files:
        raise ValueError(
            f"no images under {directory} (JPEG, PNG, TIFF, BMP, GIF, WebP, JPEG 2000, PPM "
            "or DICOM, the last under any name)"
        )
    return files


def _is_dicom(path: Path) -> bool:
    from model.dicom import is_dicom

    try:
        with path.open("rb") as handle:
            return is_dicom(handle.read(132))
    except OSError:
        return False


def distinct_copies(sources: list[Path], n: int, directory: Path) -> list[Path]:
    """N files cycled from `sources`, each with different bytes (a trailer after the image data,
    which decoders ignore) so the pipeline's de-duplication does not skip the repeats."""
    directory.mkdir(parents=True, exist_ok=True)
    made = []
    for index in range(n):
        source = sources[index % len(sources)]
        target = directory / f"bench_{index:06d}{source.suffix.lower()}"
        if _is_dicom(source):
            # Bytes after a DICOM dataset would be read as one more (broken) element.
            shutil.copyfile(source, target)
            if index >= len(sources):
                _give_new_instance_uid(target, index)
            made.append(target)
            continue
        data = source.read_bytes()
        if index >= len(sources):
            data += f"\nfracture-bench-copy-{index}".encode()
        target.write_bytes(data)
        made.append(target)
    return made


def _give_new_instance_uid(path: Path, index: int) -> None:
    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(path, force=True)
    uid = generate_uid(entropy_srcs=[str(path), str(index)])
    ds.SOPInstanceUID = uid
    if hasattr(ds, "file_meta"):
        ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.save_as(path)


# -- 1. the limit --------------------------------------------------------------------------
@dataclass(frozen=True)
class Limit:
    ips: float
    cpu_ms: float  # this process's CPU (ms of one core) per image


def measure_limit(classifier: Classifier, files: list[Path], batch_size: int) -> Limit:
    """Forward passes only, on tensors decoded beforehand: the most this machine can do, and
    what one image costs the network in CPU."""
    tensors = [
        p.tensor for p in classifier.prepare_many(files[: batch_size * 4]) if hasattr(p, "tensor")
    ]
    if not tensors:
        raise ValueError("none of the images decodes: nothing to measure the model on")
    while len(tensors) < batch_size:
        tensors += tensors
    batch = torch.stack(tensors[:batch_size])
    classifier.predict(batch)  # warm-up
    me = psutil.Process()
    count, started, cpu_before = 0, time.perf_counter(), sum(me.cpu_times()[:2])
    while time.perf_counter() - started < 8 or count < 3 * batch_size:
        classifier.predict(batch)
        count += batch_size
    seconds, cpu = time.perf_counter() - started, sum(me.cpu_times()[:2]) - cpu_before
    return Limit(count / seconds, 1000 * cpu / count)


# -- 3. the naive loop ------------------------------------------------------------------------
def measure_naive(
    classifier: Classifier, files: list[Path], *, mirror: bool, limit_s: float = 12
) -> float:
    """The original single-image app: open, resize, run the network as the checkpoint builds it
    (PyTorch, no inference rewrites, default memory format) on a batch of one, repeat. With
    `mirror` it also runs the mirror image and averages, as a flip-TTA checkpoint is defined:
    the same answers the pipeline gives, got the simple way. DICOM is read as a simple app
    reads it (pydicom's `pixel_array`, stretched to its own range, then resized); a file that
    neither reads is skipped, as the app would show an error and go on."""
    from torchvision.transforms import functional as TF

    preset = classifier.preset
    net = classifier.checkpoint.build_network().to(classifier.device)
    count, started = 0, time.perf_counter()
    with torch.no_grad():
        for path in files:
            rgb = _naive_read(path, preset.size)
            if rgb is None:
                continue
            tensor = TF.normalize(TF.to_tensor(rgb), list(preset.mean), list(preset.std))
            one = tensor[None].to(classifier.device)
            logit = net(one)[:, 0]
            if mirror:
                logit = (logit + net(one.flip(-1))[:, 0]) / 2
            torch.sigmoid(logit / classifier.temperature)
            count += 1
            if time.perf_counter() - started > limit_s:
                break
    return count / (time.perf_counter() - started)


def _naive_read(path: Path, size: int) -> Any:
    """An RGB `size`×`size` Pillow image, read the simple way; None if it does not read."""
    import pydicom
    from PIL import Image, UnidentifiedImageError

    try:
        if _is_dicom(path):
            pixels = pydicom.dcmread(path, force=True).pixel_array.astype(np.float32)
            low, high = float(pixels.min()), float(pixels.max())
            grey = (pixels - low) / (high - low) if high > low else np.zeros_like(pixels)
            image = Image.fromarray(np.uint8(255 * grey), mode="L")
        else:
            image = Image.open(path)
        with image:
            return image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    except (OSError, ValueError, TypeError, AttributeError, UnidentifiedImageError) as exc:
        log.info("naive loop skips %s: %s", path.name, type(exc).__name__)
        return None


# -- 2. the pipeline -------------------------------------------------------------------------
@dataclass
class PipelineRun:
    n: int
    seconds: float
    latencies_ms: list[float]
    worker_rss_mb: float
    cpu_percent: float
    failed: int = 0
    # CPU (ms of one core) per image stored, by part: see `CpuAccount`.
    cpu_ms: dict[str, float] = field(default_factory=dict)

    @property
    def ips(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


@dataclass
class _Sampler:
    processes: list[psutil.Process]  # the workers: their RSS and their children's, summed
    peak_rss: int = 0
    cpu: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        psutil.cpu_percent(None)
        family: list[psutil.Process] = []
        for tick in itertools.count():
            if self._stop.wait(0.2):
                return
            try:
                # Finding the children reads every process's /proc entry: half of the bench's
                # own CPU when done every 0.2 s, so once a second (and when one has gone).
                if tick % 5 == 0 or not family:
                    family = [
                        member
                        for p in self.processes
                        for member in (p, *p.children(recursive=True))
                    ]
                rss = sum(member.memory_info().rss for member in family)
            except psutil.Error:
                family = []
                continue
            self.peak_rss = max(self.peak_rss, rss)
            self.cpu.append(psutil.cpu_percent(None))


class CpuAccount:
    """Where the machine's CPU goes during a drop: the worker processes themselves, their
    decoding children, the watcher (with its children), the broker, this bench process (moving
    files in and polling the database), anything else on the machine, and idle cores."""

    PARTS = ("worker", "worker_children", "watcher", "watcher_children", "broker", "bench")

    def __init__(self, roots: dict[str, list[psutil.Process]]) -> None:
        self.roots = roots
        self.bench = psutil.Process()
        self.started = self._snapshot()

    def _snapshot(self) -> tuple[float, dict[tuple[str, int], float], float]:
        seconds: dict[tuple[str, int], float] = {}
        family: list[tuple[str, psutil.Process]] = [("bench", self.bench)]
        for name, processes in self.roots.items():
            for process in processes:
                family.append((name, process))
                try:
                    kids = process.children(recursive=True)
                except psutil.Error:
                    continue
                family += [(f"{name}_children", kid) for kid in kids]
        for part, process in family:
            try:
                times = process.cpu_times()
            except psutil.Error:  # gone in between: its last slice goes uncounted
                continue
            seconds[(part, process.pid)] = times.user + times.system
        machine = psutil.cpu_times()
        return time.monotonic(), seconds, machine.idle + getattr(machine, "iowait", 0.0)

    def per_image(self, images: int) -> dict[str, float]:
        """ms of one core per image, by part, since this account was opened."""
        began, before, idle_before = self.started
        ended, after, idle_after = self._snapshot()
        parts = dict.fromkeys(self.PARTS, 0.0)
        for (part, pid), seconds in after.items():
            parts[part] = parts.get(part, 0.0) + seconds - before.get((part, pid), 0.0)
        total = (ended - began) * (os.cpu_count() or 1)
        idle = idle_after - idle_before
        parts["other"] = max(0.0, total - idle - sum(parts.values()))
        parts["idle"] = idle
        return {part: round(1000 * seconds / max(images, 1), 2) for part, seconds in parts.items()}


class Pipeline:
    """Broker, worker and watcher as `fracture up` runs them, on a fresh inbox and database."""

    def __init__(self, root: Path, model: Path, device: str, **settings: Any) -> None:
        self.root = root
        self.inbox = root / "inbox"
        self.data = root / "data"
        self.inbox.mkdir(parents=True)
        self.broker = PrivateBroker(root / "broker").start()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FRACTURE_")}
        env.update(
            FRACTURE_INBOX=str(self.inbox),
            FRACTURE_DATA_DIR=str(self.data),
            FRACTURE_BROKER_URL=self.broker.url,
            FRACTURE_MODEL_PATH=str(model),
            FRACTURE_DEVICE=device,
            FRACTURE_SETTLE_S="0.3",
            FRACTURE_LOG_LEVEL="INFO",
        )
        env.update({f"FRACTURE_{k.upper()}": str(v) for k, v in settings.items()})
        count = int(settings.get("workers", 1))
        env.update(threads_env(Settings(workers=count)))  # each one's share, as `fracture up`
        self.env = env
        self.database_url = f"sqlite:///{self.data / 'fracture.db'}"
        cli = [sys.executable, "-m", "fracture"]
        self.logs = (root / "worker.log").open("wb"), (root / "watcher.log").open("wb")
        self.workers = [
            subprocess.Popen(
                [*cli, "worker"], env=env, stdout=self.logs[0], stderr=subprocess.STDOUT
            )
            for _ in range(count)
        ]
        self.watcher = subprocess.Popen(
            [*cli, "watch"], env=env, stdout=self.logs[1], stderr=subprocess.STDOUT
        )
        from db.session import make_engine, make_session_factory
        from worker import client
        from worker.app import make_celery

        app = make_celery(Settings(), self.broker.url)
        deadline = time.monotonic() + 300
        while len(client.live_workers(app, timeout=1.0)) < count:
            if time.monotonic() > deadline or any(w.poll() is not None for w in self.workers):
                self.close()
                tail = (root / "worker.log").read_text(errors="replace")[-1500:]
                raise RuntimeError(f"the worker did not start:\n{tail}")
        self.engine = make_engine(self.database_url)
        self.factory = make_session_factory(self.engine)

    def finished(self) -> int:
        """Images stored or failed so far: one cheap count, polled while the run goes on (the
        full listing below grew to a measurable share of the 2-core machine)."""
        from sqlalchemy import func, select

        from db.models import Image, ImageStatus

        finished = (ImageStatus.DONE, ImageStatus.FAILED)
        with self.factory() as session:
            count = session.scalar(
                select(func.count()).select_from(Image).where(Image.status.in_(finished))
            )
        return int(count or 0)

    def stored(self) -> dict[str, datetime]:
        from sqlalchemy import select

        from db.models import Image, Prediction

        with self.factory() as session:
            rows = session.execute(
                select(Image.filename, Prediction.created_at).join(Prediction)
            ).all()
            failed = session.execute(
                select(Image.filename, Image.updated_at).where(Image.status == "failed")
            ).all()
        return {name: when for name, when in [*rows, *failed]}

    def feed(self, files: list[Path], interval_s: float = 0.0, timeout: float = 600) -> PipelineRun:
        """Move files into the inbox (atomic renames, as a modality export does) and time them."""
        staging = self.root / "staging"
        staging.mkdir(exist_ok=True)
        staged = []
        for path in files:
            target = staging / path.name
            shutil.copyfile(path, target)
            staged.append(target)
        workers = [psutil.Process(worker.pid) for worker in self.workers]
        sampler = _Sampler(workers)
        account = CpuAccount(
            {
                "worker": workers,
                "watcher": [psutil.Process(self.watcher.pid)],
                "broker": [psutil.Process(self.broker.process.pid)] if self.broker.process else [],
            }
        )
        thread = threading.Thread(target=sampler.run, daemon=True)
        thread.start()
        arrivals: dict[str, float] = {}
        for path in staged:
            os.replace(path, self.inbox / path.name)
            arrivals[path.name] = time.time()
            if interval_s:
                time.sleep(interval_s)
        deadline = time.monotonic() + timeout
        stored: dict[str, datetime] = {}
        while time.monotonic() < deadline:
            if self.finished() >= len(arrivals):
                stored = self.stored()
                if all(name in stored for name in arrivals):
                    break
            time.sleep(0.2)
        else:
            stored = self.stored()
        cpu_ms = account.per_image(len(arrivals))
        sampler._stop.set()
        thread.join()
        done_at = {n: stored[n].replace(tzinfo=UTC).timestamp() for n in arrivals if n in stored}
        if len(done_at) < len(arrivals):
            raise RuntimeError(f"only {len(done_at)} of {len(arrivals)} stored in {timeout:.0f} s")
        latencies = [(done_at[n] - arrivals[n]) * 1000 for n in arrivals]
        return PipelineRun(
            n=len(arrivals),
            seconds=max(done_at.values()) - min(arrivals.values()),
            latencies_ms=latencies,
            worker_rss_mb=sampler.peak_rss / 2**20,
            cpu_percent=statistics.fmean(sampler.cpu) if sampler.cpu else float("nan"),
            cpu_ms=cpu_ms,
        )

    def close(self) -> None:
        for process in (self.watcher, *self.workers):
            if process.poll() is None:
                process.terminate()
        for process in (self.watcher, *self.workers):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        if hasattr(self, "engine"):
            self.engine.dispose()
        self.broker.stop()
        for handle in self.logs:
            handle.close()


def run_pipeline(
    model: Path, device: str, files: list[Path], *, interval_s: float = 0.0, **settings: Any
) -> PipelineRun:
    with tempfile.TemporaryDirectory(prefix="fracture-bench-") as tmp:
        pipeline = Pipeline(Path(tmp), model, device, **settings)
        try:
            return pipeline.feed(files, interval_s=interval_s)
        finally:
            pipeline.close()


# -- the whole benchmark ----------------------------------------------------------------------
def run(
    *,
    images: Path | None,
    n: int,
    device: str,
    runtime: str,
    model: Path,
    batch_size: int,
    batch_interval_ms: int,
    heatmaps: str,
    trickle: int,
    sweep: bool,
    plot: Path | None,
    realistic: tuple[str, ...] = (),
    workers: int = 1,
) -> dict[str, Any]:
    """`realistic`: instead of `images`, hospital-size files in these formats made from the
    samples (`bench.realistic`), plus a pipeline run on as many small sample JPEGs in the same
    run, for the ratio between the two."""
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory(prefix="fracture-bench-files-") as tmp:
        if realistic:
            from bench import realistic as hospital

            files = hospital.make_set(sample_files(SAMPLES), n, Path(tmp) / "set", realistic)
        else:
            files = distinct_copies(sample_files(images or SAMPLES), n, Path(tmp))
        # This VM's speed drifts by tens of percent within minutes, so the in-process figures are
        # taken before and after the pipeline run and averaged: the ratios then compare like
        # with like.
        limits: list[Limit] = []
        naives: list[float] = []
        one_pass: list[float] = []

        def measure_in_process() -> dict[str, Any]:
            classifier = Classifier.load(model, device=device, runtime=runtime)
            flip_tta = classifier.checkpoint.flip_tta
            limits.append(measure_limit(classifier, files, batch_size))
            naives.append(measure_naive(classifier, files, mirror=flip_tta))
            if flip_tta:
                one_pass.append(measure_naive(classifier, files, mirror=False))
            classifier.close()
            return {
                "device": str(classifier.device),
                "runtime": classifier.runtime,
                "flip_tta": flip_tta,
                "model_version": classifier.version,
            }

        first = measure_in_process()
        common: dict[str, Any] = {
            "batch_size": batch_size,
            "batch_interval_ms": batch_interval_ms,
            "heatmaps": heatmaps,
            "runtime": runtime,
            "workers": workers,
        }
        bulk = run_pipeline(model, device, files, **common)
        small = None
        if realistic:
            small_files = distinct_copies(sample_files(SAMPLES), n, Path(tmp) / "small")
            small = run_pipeline(model, device, small_files, **common)
        measure_in_process()
        limit, naive = statistics.fmean(x.ips for x in limits), statistics.fmean(naives)
        network_ms = statistics.fmean(x.cpu_ms for x in limits)
        busy_ms = sum(v for k, v in bulk.cpu_ms.items() if k != "idle")
        resolved_device = first["device"]
        result: dict[str, Any] = {
            **first,
            "machine": ", ".join(
                part
                for part in (
                    platform.machine(),
                    cpu_name(),
                    f"{os.cpu_count()} CPU cores",
                    torch.cuda.get_device_name() if resolved_device.startswith("cuda") else "",
                )
                if part
            ),
            "n": n,
            "workers": workers,
            "batch_size": batch_size,
            "batch_interval_ms": batch_interval_ms,
            "heatmaps": heatmaps,
            "limit_ips": round(limit, 2),
            "limit_ips_before_after": [round(x.ips, 2) for x in limits],
            "limit_cpu_ms_per_image": round(network_ms, 2),
            "naive_ips_before_after": [round(v, 2) for v in naives],
            "pipeline_ips": round(bulk.ips, 2),
            "naive_ips": round(naive, 2),
            "pipeline_over_limit": round(bulk.ips / limit, 3),
            "pipeline_over_naive": round(bulk.ips / naive, 3),
            "p50_ms": round(bulk.percentile(50), 1),
            "p95_ms": round(bulk.percentile(95), 1),
            "p99_ms": round(bulk.percentile(99), 1),
            "worker_rss_mb": round(bulk.worker_rss_mb, 1),
            "cpu_percent": round(bulk.cpu_percent, 1),
            "cpu_ms_per_image": bulk.cpu_ms,
            # The network's own cost over everything the machine did per image: the pipeline's
            # share of the limit cannot pass it unless its cores idle less than the limit's.
            "network_share_of_cpu": round(network_ms / busy_ms, 3) if busy_ms else None,
            "input_set": "realistic" if realistic else ("images" if images else "samples"),
            "input_mb_mean": round(statistics.fmean(p.stat().st_size for p in files) / 1e6, 3),
        }
        if realistic:
            result["input_formats"] = hospital.describe(realistic)
        if small is not None:
            # Both drops in the same run, with the same number of files.
            result["small_jpeg_pipeline_ips"] = round(small.ips, 2)
            result["small_jpeg_worker_rss_mb"] = round(small.worker_rss_mb, 1)
            result["pipeline_over_small_jpeg"] = round(bulk.ips / small.ips, 3)
        if one_pass:
            # The original app scored one pass per image; a flip-TTA model scores two.
            naive_one_pass = statistics.fmean(one_pass)
            result["naive_one_pass_ips"] = round(naive_one_pass, 2)
            result["pipeline_over_naive_one_pass"] = round(bulk.ips / naive_one_pass, 3)
        if trickle:
            slow = run_pipeline(model, device, files[:trickle], interval_s=1.0, **common)
            result.update(
                trickle_n=trickle,
                trickle_p50_ms=round(slow.percentile(50), 1),
                trickle_p95_ms=round(slow.percentile(95), 1),
            )
        if sweep:
            result["sweep"] = run_sweep(model, device, files, plot, **common)
    return result


def run_sweep(
    model: Path, device: str, files: list[Path], plot: Path | None, **settings: Any
) -> list[dict[str, Any]]:
    """Throughput by batch size (bulk drop) and p95 latency by flush interval (2 files/s)."""
    rows = []
    for batch_size in (1, 4, 16, 32):
        sized = settings | {"batch_size": batch_size, "batch_interval_ms": 250}
        bulk = run_pipeline(model, device, files, **sized)
        rows.append(
            {
                "kind": "bulk",
                "batch_size": batch_size,
                "batch_interval_ms": 250,
                "ips": round(bulk.ips, 2),
                "p95_ms": round(bulk.percentile(95), 1),
            }
        )
    for interval in (50, 250, 1000):
        slow = run_pipeline(
            model,
            device,
            files[:20],
            interval_s=0.5,
            **(settings | {"batch_size": 16, "batch_interval_ms": interval}),
        )
        rows.append(
            {
                "kind": "trickle",
                "batch_size": 16,
                "batch_interval_ms": interval,
                "ips": round(slow.ips, 2),
                "p95_ms": round(slow.percentile(95), 1),
            }
        )
    if plot is not None:
        write_plot(rows, plot)
    return rows


def write_plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bulk = [r for r in rows if r["kind"] == "bulk"]
    trickle = [r for r in rows if r["kind"] == "trickle"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot([r["batch_size"] for r in bulk], [r["ips"] for r in bulk], "o-")
    left.set(
        xscale="log",
        xlabel="batch size (flush interval 250 ms)",
        ylabel="images/s",
        title="Bulk drop: throughput",
    )
    right.plot(
        [r["batch_interval_ms"] for r in trickle],
        [r["p95_ms"] for r in trickle],
        "o-",
        color="tab:red",
    )
    right.set(
        xscale="log",
        xlabel="flush interval (ms), batch size 16",
        ylabel="p95 arrival→stored (ms)",
        title="Trickle of 2 files/s: latency",
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def cpu_lines(result: dict[str, Any]) -> list[str]:
    """Where the CPU went per image (ms of one core), beside what the network alone costs."""
    split = result.get("cpu_ms_per_image") or {}
    if not split:
        return []
    names = {"worker_children": "decoding children", "watcher_children": "watcher's children"}
    parts = ", ".join(f"{names.get(k, k)} {v:.1f}" for k, v in split.items() if v >= 0.05)
    return [
        f"{'CPU per image (core ms)':<28}{parts}",
        f"{'':<28}network alone {result['limit_cpu_ms_per_image']:.1f}: "
        f"{result['network_share_of_cpu']:.2f} of the busy CPU per image",
    ]


def table(result: dict[str, Any]) -> str:
    lines = [
        f"device {result['device']} ({result['machine']}), runtime {result['runtime']}, "
        f"model {result['model_version']}{' with flip TTA' if result['flip_tta'] else ''}, "
        f"{result['n']} images, batch {result['batch_size']}, heatmaps {result['heatmaps']}"
        + (f", {result['workers']} workers" if result.get("workers", 1) > 1 else ""),
        f"{'input':<28}{result['input_set']}, {result['input_mb_mean']:.2f} MB a file on average"
        + (f" ({result['input_formats']})" if "input_formats" in result else ""),
        f"{'limit (forward only)':<28}{result['limit_ips']:>10.1f} img/s   "
        f"(before / after the pipeline: {' / '.join(map(str, result['limit_ips_before_after']))})",
        f"{'pipeline (end to end)':<28}{result['pipeline_ips']:>10.1f} img/s   "
        f"{result['pipeline_over_limit']:.2f}× limit, {result['pipeline_over_naive']:.2f}× naive",
        f"{'naive (one at a time)':<28}{result['naive_ips']:>10.1f} img/s   "
        f"(before / after: {' / '.join(map(str, result['naive_ips_before_after']))})",
        *(
            [
                f"{'naive, one pass (no TTA)':<28}{result['naive_one_pass_ips']:>10.1f} img/s   "
                f"{result['pipeline_over_naive_one_pass']:.2f}× for the pipeline"
            ]
            if "naive_one_pass_ips" in result
            else []
        ),
        f"{'arrival→stored':<28}p50 {result['p50_ms']:.0f} ms, p95 {result['p95_ms']:.0f} ms, "
        f"p99 {result['p99_ms']:.0f} ms (bulk drop)",
        f"{'worker peak RSS' + (' (all)' if result.get('workers', 1) > 1 else ''):<28}"
        f"{result['worker_rss_mb']:>10.0f} MB, "
        f"machine CPU {result['cpu_percent']:.0f}%",
        *cpu_lines(result),
    ]
    if "small_jpeg_pipeline_ips" in result:
        lines.append(
            f"{'pipeline, small JPEGs':<28}{result['small_jpeg_pipeline_ips']:>10.1f} img/s   "
            f"(same run, as many files): realistic set at "
            f"{result['pipeline_over_small_jpeg']:.2f}×, worker RSS "
            f"{result['small_jpeg_worker_rss_mb']:.0f} MB"
        )
    if "trickle_p95_ms" in result:
        lines.append(
            f"{'trickle, 1 file/s':<28}p50 {result['trickle_p50_ms']:.0f} ms, "
            f"p95 {result['trickle_p95_ms']:.0f} ms ({result['trickle_n']} files)"
        )
    for row in result.get("sweep", []):
        lines.append(
            f"  sweep {row['kind']:<8} batch {row['batch_size']:>3} "
            f"interval {row['batch_interval_ms']:>5} ms: "
            f"{row['ips']:.1f} img/s, p95 {row['p95_ms']:.0f} ms"
        )
    return "\n".join(lines)
