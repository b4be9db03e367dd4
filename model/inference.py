"""Inference: load a checkpoint once → decode/preprocess → predict a batch → typed results."""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from model import checkpoint as ckpt
from model import onnx_engine, optimise
from model.decode import DEFAULT_MAX_PIXELS, Decoded, DecodeError, decode
from model.isolation import (
    DecodeJob,
    IsolatedDecoder,
    Ready,
    SharedGreys,
    StoredFile,
    ready_job,
)
from model.onnx_engine import OnnxNetwork
from model.preprocess import normalise_batch

log = logging.getLogger(__name__)

# Images per forward run on the CPU. One at a time beat runs of 2 and 4 on the AMD EPYC VM
# for every network and runtime we ship, in alternating rounds of 32 images: v2.4 in two ONNX
# lanes 30.5 against 26.7 img/s (2 per run), the Lite0 single-pass file 82.0 against 68.1
# (4 per run), v2.4 in PyTorch 13.9 against 10.5 (docs/PERFORMANCE.md): one image's
# activations stay in the cores' caches.
DEFAULT_CPU_MICRO_BATCH = 1
# ONNX Runtime runs a batch's micro-batches this many at a time, each on its share of the
# threads: on 2 cores two single-threaded runs side by side beat one run on two threads, as
# the threads no longer wait for each other after every small operation: forward only 47 img/s
# against 41, end to end 8-10 % more (docs/PERFORMANCE.md).
DEFAULT_ONNX_LANES = 2
RUNTIMES = ("auto", "torch", "onnx")
# Where stored files are decoded: in child processes (a decoder crash costs one file) or in
# threads of this process.
ISOLATION = ("process", "thread")


class ClassifierError(ValueError):
    """A model that cannot be set up as asked: its device or runtime is not available here."""


@dataclass(frozen=True)
class Result:
    label: str
    probability: float  # calibrated probability of "fractured"
    threshold: float
    model_version: str
    threshold_source: str = "global"  # or "region:<name>" for a per-region operating point
    region: str | None = None  # predicted body region (two-head checkpoints only)
    region_probability: float | None = None
    # "fracture" (probability ≥ threshold), "doubt" (≥ doubt_threshold) or "no_fracture".
    verdict: str = "no_fracture"
    doubt_threshold: float | None = None
    # Fracture boxes [x, y, width, height, score] in the original image's pixels (after EXIF
    # rotation), best first; filled by `predict_prepared` for checkpoints with a heat head.
    boxes: tuple[tuple[float, float, float, float, float], ...] = ()


@dataclass
class Prepared:
    tensor: torch.Tensor  # (3, size, size), normalised
    decoded: Decoded  # for stored files its pixels are released (`isolation.RELEASED`)
    pixels_shape: tuple[int, int]  # (height, width) of the decoded pixels the tensor came from


def heat_maps(outputs: torch.Tensor, grid: int) -> np.ndarray:
    """(N, grid, grid) fracture probability maps: the last grid² output columns of a heat-head
    network, through a sigmoid."""
    cells = outputs[:, outputs.shape[1] - grid * grid :].detach().float().cpu()
    return torch.sigmoid(cells).reshape(-1, grid, grid).numpy()


def resolve_device(requested: str) -> torch.device:
    if requested not in ("auto", "cpu", "cuda"):
        raise ClassifierError(f"device must be auto, cpu or cuda, not {requested!r}")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ClassifierError("FRACTURE_DEVICE=cuda but no CUDA device is available")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


class Classifier:
    """A loaded model plus its preprocessing; one per process."""

    def __init__(
        self,
        checkpoint: ckpt.Checkpoint,
        *,
        device: str = "auto",
        decode_threads: int = 2,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        patient_salt: str | None = None,
        micro_batch: int | None = None,
        runtime: str = "auto",
        isolation: str = "thread",
        max_file_bytes: int | None = None,
        lanes: int = DEFAULT_ONNX_LANES,
    ) -> None:
        if isolation not in ISOLATION:
            raise ClassifierError(f"isolation must be one of {', '.join(ISOLATION)}")
        self.patient_salt = patient_salt
        self.max_file_bytes = max_file_bytes
        self.checkpoint = checkpoint
        self.device = resolve_device(device)
        self.preset = checkpoint.preset
        self.version = checkpoint.version
        self.threshold = checkpoint.threshold
        self.temperature = checkpoint.temperature
        self.max_pixels = max_pixels
        # Batch norms and padding folded into the convolutions (same outputs, ~20 % faster on
        # CPU); channels-last roughly doubles CPU throughput of depthwise-conv networks.
        self.net = optimise.for_inference(checkpoint.build_network()).to(self.device)
        self.net = self.net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.lanes = 1
        self._lane_pool: ThreadPoolExecutor | None = None
        self.onnx = self._onnx_network(runtime, lanes)
        # On CPU, forward passes of more than a few images overflow the caches: EfficientNet-
        # Lite0 at 256 px ran 46 img/s in chunks of 4 but 26 img/s in one batch of 16 on a
        # 2-core machine. A queue batch is therefore run in micro-batches (each lane takes the
        # next as it finishes one); GPUs take it whole.
        if micro_batch is None:
            micro_batch = DEFAULT_CPU_MICRO_BATCH if self.device.type == "cpu" else 0
        if micro_batch < 0:
            raise ValueError("micro_batch must be 0 (whole batch) or a positive number")
        self.micro_batch = micro_batch
        self.decode_threads = max(1, decode_threads)
        self._pool = ThreadPoolExecutor(max_workers=self.decode_threads)
        self.isolated: IsolatedDecoder[Ready] | None = None
        self._greys: SharedGreys | None = None
        self._greys_lock = threading.Lock()
        if isolation == "process":
            self.isolated = IsolatedDecoder(self.decode_threads, decode_fn=ready_job)
            if SharedGreys.available():
                self._greys = SharedGreys(self.preset.size)

    def _onnx_network(self, runtime: str, lanes: int) -> OnnxNetwork | None:
        """ONNX Runtime on the CPU where it can run this network (`auto`), always (`onnx`,
        an error if it cannot) or never (`torch`); `lanes` micro-batches run at a time."""
        if runtime not in RUNTIMES:
            raise ClassifierError(f"runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
        if runtime == "torch" or (runtime == "auto" and self.device.type != "cpu"):
            return None
        if self.device.type != "cpu":
            raise ClassifierError("runtime onnx runs on the CPU only; use auto or torch with cuda")
        if not onnx_engine.available():
            if runtime == "onnx":
                raise ClassifierError("runtime onnx needs the onnx and onnxruntime packages")
            return None
        try:
            threads = torch.get_num_threads()
            # Grad-CAM networks (no heat head) run their PyTorch tail after each micro-batch:
            # they keep one run at a time on every thread.
            lanes = max(1, min(lanes, threads)) if self.checkpoint.heat else 1
            network = OnnxNetwork(self.net, self.preset.size, threads=max(1, threads // lanes))
            self.lanes = lanes
            self._lane_pool = ThreadPoolExecutor(max_workers=lanes) if lanes > 1 else None
        except onnx_engine.UnsupportedNetwork as exc:
            if runtime == "onnx":
                message = f"FRACTURE_RUNTIME=onnx cannot run this model: {exc}"
                raise ClassifierError(message) from exc
            log.info("running the model in PyTorch: %s", exc)
            return None
        for parameter in self.net.parameters():  # PyTorch now runs only the tail, for Grad-CAM
            parameter.requires_grad_(False)
        return network

    @property
    def runtime(self) -> str:
        return "onnx" if self.onnx else "torch"

    @classmethod
    def load(cls, path: Path, *, device: str = "auto", **kwargs: Any) -> Classifier:
        started = time.perf_counter()
        classifier = cls(ckpt.load(path), device=device, **kwargs)
        log.info(
            "model %s loaded on %s (%s) in %.1f s",
            classifier.version,
            classifier.device,
            classifier.runtime,
            time.perf_counter() - started,
        )
        return classifier

    def prepare(self, source: Path | bytes) -> Prepared:
        """Decode and preprocess one file; raises DecodeError for a bad one."""
        decoded = decode(
            source,
            target_size=self.preset.size,
            max_pixels=self.max_pixels,
            patient_salt=self.patient_salt,
        )
        height, width = decoded.pixels.shape
        return Prepared(self.preset(decoded.pixels), decoded, (height, width))

    def prepare_many(self, sources: Sequence[Path | bytes]) -> list[Prepared | DecodeError]:
        """Decode in a thread pool (Pillow releases the GIL); errors come back in place."""

        def one(source: Path | bytes) -> Prepared | DecodeError:
            try:
                return self.prepare(source)
            except DecodeError as exc:
                return exc

        return list(self._pool.map(one, sources))

    def prepare_files(self, files: Sequence[StoredFile]) -> list[Prepared | DecodeError]:
        """Read, verify and decode stored files — in child processes when isolated — keeping
        only each one's network input (made here from the grey image that the children write
        to shared memory or send back): neither its bytes nor its decoded pixels outlive the
        call."""
        with self._greys_lock:
            shared = self._greys if self.isolated is not None else None
            slots = shared.slots(len(files)) if shared is not None else []
            jobs = [
                DecodeJob(
                    str(path),
                    sha256,
                    self.preset,
                    self.max_pixels,
                    max_bytes=self.max_file_bytes,
                    patient_salt=self.patient_salt,
                    signature=signature,
                    slot=slots[index] if slots else None,
                )
                for index, (path, sha256, signature) in enumerate(files)
            ]

            def one(job: DecodeJob) -> Ready | DecodeError:
                try:
                    return ready_job(job)
                except DecodeError as exc:
                    return exc

            ready = (
                list(self._pool.map(one, jobs))
                if self.isolated is None
                else self.isolated.decode_many(jobs)
            )
            # The inputs of the files that decoded are the consecutive rows of one batch,
            # which `predict_prepared` then runs as it is, without stacking copies of them.
            decoded = [r for r in ready if not isinstance(r, DecodeError)]
            greys = [
                r.grey if shared is None or r.slot is None else shared.row(r.slot) for r in decoded
            ]
            rows = iter(torch.from_numpy(normalise_batch(self.preset, greys)))
        return [
            r if isinstance(r, DecodeError) else Prepared(next(rows), r.decoded, r.pixels_shape)
            for r in ready
        ]

    def warm_up(self, batch_size: int = 16) -> float:
        """Decode a generated JPEG in every decode thread and run the network with Grad-CAM (or
        the heat head, its boxes and stored map) on a batch of it, so the first real batch pays
        for no lazy imports, thread starts, kernel selection or memory allocation (measured:
        the first CPU batch of 16 took 981 ms, later ones about 330 ms, when only the network
        was warmed up; decoding alone took 144 ms the first time, 23 ms after). Returns the
        seconds spent."""
        started = time.perf_counter()
        if self.isolated is not None:
            self.isolated.warm_up()
        sample = _warm_up_jpeg(self.preset.size)
        prepared = self.prepare_many([sample] * self.decode_threads)
        tensors = [p.tensor for p in prepared if isinstance(p, Prepared)]
        if not tensors:  # cannot happen for a JPEG we just wrote; the network still warms up
            log.warning("warm-up image did not decode: %s", prepared[0])
            tensors = [torch.zeros(3, self.preset.size, self.preset.size)]
        batch = torch.stack([tensors[0]] * batch_size)
        for _ in range(2):
            _, maps = self.predict_explained(batch, "all")
        if self.checkpoint.heat and maps:
            # A fracture answer's boxes and stored map: their first use imports SciPy's image
            # module, about 0.4 s that the first batch with a fracture would otherwise pay.
            from model import boxes as box_ops

            size = self.preset.size
            box_ops.from_heat(maps[0], size, floor=0.0, stop_below=self.checkpoint.box_threshold)
            box_ops.trim_map(maps[0], self.preset, (size, size))
        return time.perf_counter() - started

    def _to_device(self, batch: torch.Tensor) -> torch.Tensor:
        """The batch as the network takes it: on its device in channels-last for PyTorch; ONNX
        Runtime takes the contiguous NCHW batch as it is (channels-last would cost a copy there
        and another one back)."""
        if self.onnx:
            return batch
        return batch.to(self.device, non_blocking=True).contiguous(
            memory_format=torch.channels_last
        )

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, 1 + R) float logits: fracture, then the regions of a two-head checkpoint; with
        flip TTA, the mean over the image and its mirror image (the image itself goes first, so
        Grad-CAM reads its activations)."""
        if self.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return self._outputs(batch).float()
        return self._outputs(batch).float()

    def _outputs(self, batch: torch.Tensor) -> torch.Tensor:
        if self.onnx:
            return self._onnx_outputs(batch)[0]
        views = self._views()
        if len(views) == 1:
            return self.net(batch)
        return self._view_mean([self.net(_view(batch, *v)) for v in views], views)

    def _views(self) -> list[tuple[int, bool]]:
        """The (quarter turns, mirrored) views each image is scored in; the image itself
        first, so Grad-CAM reads its activations."""
        turns = (0, 1, 2, 3) if self.checkpoint.turn_tta else (0,)
        flips = (False, True) if self.checkpoint.flip_tta else (False,)
        return [(k, f) for k in turns for f in flips]

    def _view_mean(
        self, outputs: list[torch.Tensor], views: list[tuple[int, bool]]
    ) -> torch.Tensor:
        """Mean of the outputs over the views; each view's heat map is turned and flipped back
        first, so all maps point at the same place."""
        grid = self.checkpoint.heat_grid
        aligned = []
        for out, (turns, mirrored) in zip(outputs, views, strict=True):
            if grid:
                columns = out.shape[1] - grid * grid
                heat = out[:, columns:].reshape(-1, grid, grid)
                heat = torch.rot90(heat, -turns, dims=(-2, -1))
                if mirrored:
                    heat = heat.flip(-1)
                out = torch.cat([out[:, :columns], heat.reshape(-1, grid * grid)], dim=1)
            aligned.append(out)
        return torch.stack(aligned).mean(dim=0)

    def _onnx_outputs(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ONNX Runtime outputs (averaged with the mirror image's under flip TTA, both in one
        call) and the last convolution's activations for the images themselves."""
        assert self.onnx is not None
        return self._onnx_mean(batch.shape[0], self.onnx.run(self._onnx_input(batch)))

    def _onnx_input(self, batch: torch.Tensor) -> torch.Tensor:
        """The images and, under TTA, their views after them: one ONNX Runtime call."""
        views = self._views()
        return batch if len(views) == 1 else torch.cat([_view(batch, *v) for v in views])

    def _onnx_mean(
        self, n: int, ran: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One ONNX Runtime call's (outputs, activations) for `n` images → averaged over the
        views, and the images' own activations."""
        outputs, activations = ran
        views = self._views()
        if len(views) == 1:
            return outputs, activations
        return self._view_mean(list(torch.split(outputs, n)), views), activations[:n]

    def _chunks(self, batch: torch.Tensor) -> list[torch.Tensor]:
        size = self.micro_batch or batch.shape[0]
        if self._lane_pool is not None:  # a small batch is shared between the lanes too
            size = min(size, -(-batch.shape[0] // self.lanes))
        return list(torch.split(batch, size)) if batch.shape[0] else [batch]

    def all_logits(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, 1 + R) raw outputs on the CPU."""
        with torch.inference_mode():
            chunks = self._chunks(batch)
            if self._lane_pool is not None:
                return self._in_lanes(chunks)
            return torch.cat([self._forward(self._to_device(chunk)).cpu() for chunk in chunks])

    def _in_lanes(self, chunks: list[torch.Tensor]) -> torch.Tensor:
        """`all_logits` with the ONNX Runtime calls shared between the lanes: the micro-batches,
        or a lone micro-batch's views (a single upload, a trickle).

        Only ONNX Runtime runs in the lanes: torch operations started from other threads make
        thread teams of their own, which then slowed every later torch call in the process (a
        plain PyTorch loop beside it ran at half speed).
        """
        assert self.onnx is not None and self._lane_pool is not None
        run, submit = self.onnx.run, self._lane_pool.submit
        views = self._views()
        # Each input goes to the lanes as soon as it is made, so they start on the first while
        # the calling thread makes the rest.
        if len(chunks) == 1 and len(views) > 1:
            ran = [submit(run, _view(chunks[0], *v)) for v in views]
            return self._view_mean([r.result()[0] for r in ran], views).float()
        ran = [submit(run, self._onnx_input(chunk)) for chunk in chunks]
        return torch.cat(
            [self._onnx_mean(c.shape[0], r.result())[0] for c, r in zip(chunks, ran, strict=True)]
        ).float()

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """(N,) raw fracture logits."""
        return self.all_logits(batch)[:, 0]

    def probabilities(self, batch: torch.Tensor) -> np.ndarray:
        return torch.sigmoid(self.logits(batch) / self.temperature).numpy()

    def predict(self, batch: torch.Tensor) -> list[Result]:
        """(N, 3, size, size) → N results, in order."""
        results = self.results(self.all_logits(batch))
        assert len(results) == batch.shape[0], "one result per input"
        return results

    def results(self, logits: torch.Tensor) -> list[Result]:
        """Results from (N, 1 + R) raw outputs: calibrated fracture probability, region and the
        threshold that applies to that region."""
        logits = logits.detach().float().cpu()
        probabilities = torch.sigmoid(logits[:, 0] / self.temperature).tolist()
        if not self.checkpoint.regions:
            return [self.result(p) for p in probabilities]
        region_columns = logits[:, 1 : 1 + len(self.checkpoint.regions)]
        region_probabilities, region_index = torch.softmax(region_columns, dim=1).max(dim=1)
        return [
            self.result(p, self.checkpoint.regions[int(i)], float(q))
            for p, i, q in zip(probabilities, region_index, region_probabilities, strict=True)
        ]

    def predict_explained(
        self, batch: torch.Tensor, explain: str = "positive"
    ) -> tuple[list[Result], dict[int, np.ndarray]]:
        """Results plus Grad-CAM maps from the same forward pass, for positive rows
        (`positive`), every row (`all`) or none (`none`: plain inference)."""
        if explain == "none":
            return self.predict(batch), {}
        if explain not in ("positive", "all"):
            raise ValueError(f"explain must be positive, all or none, not {explain!r}")
        if self.checkpoint.heat:
            return self._heat_explained(batch, explain)
        self.net.eval()
        explained = self._onnx_explained if self.onnx else self._torch_explained
        results: list[Result] = []
        maps: dict[int, np.ndarray] = {}
        for chunk in self._chunks(batch):
            chunk_results, chunk_maps = explained(chunk, explain)
            maps.update({len(results) + row: grid for row, grid in chunk_maps.items()})
            results.extend(chunk_results)
        assert len(results) == batch.shape[0], "one result per input"
        return results, maps

    def _torch_explained(
        self, chunk: torch.Tensor, explain: str
    ) -> tuple[list[Result], dict[int, np.ndarray]]:
        """Results and Grad-CAM from one PyTorch pass, gradients tracked from the last
        convolution on."""
        from model import explain as cam

        with cam.capture_activations(self.net) as captured:
            outputs = self._forward(self._to_device(chunk))
            results = self.results(outputs)
            rows = self._positive_rows(results, explain)
            grids = cam.cams(outputs[:, 0], captured["activations"], rows)
        return results, dict(zip(rows, grids, strict=True))

    def _positive_rows(self, results: list[Result], explain: str) -> list[int]:
        """Rows to explain: all, or those answered "fracture" or "doubt"."""
        return [i for i, r in enumerate(results) if explain == "all" or r.verdict != "no_fracture"]

    def heat(self, outputs: torch.Tensor) -> np.ndarray:
        """(N, G, G) fracture probability maps from the outputs of a heat-head checkpoint."""
        return heat_maps(outputs, self.checkpoint.heat_grid)

    def _heat_explained(
        self, batch: torch.Tensor, explain: str
    ) -> tuple[list[Result], dict[int, np.ndarray]]:
        """Results plus the heat head's own maps: the trained localisation, no gradients."""
        outputs = self.all_logits(batch)
        results = self.results(outputs)
        maps = self.heat(outputs)
        rows = self._positive_rows(results, explain)
        assert len(results) == batch.shape[0], "one result per input"
        return results, {row: maps[row] for row in rows}

    def predict_prepared(
        self, prepared: Sequence[Prepared], explain: str = "positive"
    ) -> tuple[list[Result], dict[int, np.ndarray]]:
        """Results for decoded inputs, with boxes in each original image's pixels (heat-head
        checkpoints: for the rows answered "fracture" or "doubt"), and the maps asked for."""
        from model import boxes as box_ops

        if not prepared:
            return [], {}
        batch = batched([p.tensor for p in prepared])
        if not self.checkpoint.heat:
            return self.predict_explained(batch, explain)
        results, maps = self._heat_explained(batch, "all")
        size, floor = self.preset.size, self.checkpoint.box_threshold
        for row, (item, result) in enumerate(zip(prepared, results, strict=True)):
            if result.verdict == "no_fracture":
                continue
            found = box_ops.from_heat(maps[row], size, floor=0.0, stop_below=floor)
            kept = [b for b in found if b[4] >= floor] or found[:1]
            mapped = box_ops.to_original(
                kept,
                self.preset,
                pixels_shape=item.pixels_shape,
                original_size=item.decoded.upright_size,
            )
            results[row] = replace(result, boxes=tuple(tuple(b) for b in mapped))  # type: ignore[misc]
        rows = self._positive_rows(results, explain) if explain != "none" else []
        shapes = [item.pixels_shape for item in prepared]
        return results, {row: box_ops.trim_map(maps[row], self.preset, shapes[row]) for row in rows}

    def _onnx_explained(
        self, chunk: torch.Tensor, explain: str
    ) -> tuple[list[Result], dict[int, np.ndarray]]:
        """Results from ONNX Runtime; Grad-CAM from its activations through the PyTorch tail."""
        from model import explain as cam

        assert self.onnx is not None and self.onnx.tail is not None  # heat networks: no tail
        tail = self.onnx.tail
        outputs, activations = self._onnx_outputs(chunk)
        results = self.results(outputs)
        rows = self._positive_rows(results, explain)
        if not rows:
            return results, {}
        with torch.enable_grad():
            tracked = activations[rows].requires_grad_(True)  # indexing by a list copies
            logits = tail(tracked)[:, 0]
            grids = cam.cams(logits, tracked, list(range(len(rows))))
        return results, dict(zip(rows, grids, strict=True))

    def result(
        self, probability: float, region: str | None = None, region_probability: float | None = None
    ) -> Result:
        threshold, source = self.checkpoint.threshold_for(region)
        return Result(
            label=self.checkpoint.class_names[1 if probability >= threshold else 0],
            probability=probability,
            threshold=threshold,
            model_version=self.version,
            threshold_source=source,
            region=region,
            region_probability=region_probability,
            verdict=self.checkpoint.verdict(probability, threshold),
            doubt_threshold=self.checkpoint.doubt_threshold,
        )

    def predict_sources(self, sources: Sequence[Path | bytes]) -> list[Result | DecodeError]:
        """Decode and score files; results carry boxes where the model gives them."""
        prepared = self.prepare_many(sources)
        good = [p for p in prepared if isinstance(p, Prepared)]
        results = iter(self.predict_prepared(good, "none")[0])
        return [next(results) if isinstance(p, Prepared) else p for p in prepared]

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        if self._lane_pool is not None:
            self._lane_pool.shutdown(wait=False)
        if self.isolated is not None:
            self.isolated.close()
        if self._greys is not None:
            self._greys.close()

    def heatmaps(self, prepared: Sequence[Prepared]) -> list[np.ndarray]:
        """Grad-CAM overlays (RGB uint8, at the decoded image's size) for prepared inputs."""
        from model import explain

        if not prepared:
            return []
        if any(p.decoded.pixels.size == 0 for p in prepared):
            raise ValueError("overlays need the decoded pixels: use prepare(), not prepare_files()")
        _, maps = self.predict_prepared(prepared, "all")
        return [explain.overlay(p.decoded.pixels, maps[i]) for i, p in enumerate(prepared)]


def batched(inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """(N, 3, size, size) from N inputs: the batch they are consecutive rows of, when they are
    (`Classifier.prepare_files` makes them so), else a stacked copy. Stacking 32 inputs at 352 px
    costs tens of milliseconds a batch on the worker's main thread (docs/PERFORMANCE.md)."""
    first, base = inputs[0], inputs[0]._base
    if base is not None and base.dim() == 4 and base.is_contiguous():
        row_bytes = base.stride(0) * base.element_size()
        start, offset = divmod(first.data_ptr() - base.data_ptr(), row_bytes)
        rows = base[start : start + len(inputs)]
        if (
            offset == 0
            and len(rows) == len(inputs)
            and all(
                tensor.shape == row.shape and tensor.data_ptr() == row.data_ptr()
                for tensor, row in zip(inputs, rows, strict=True)
            )
        ):
            return rows
    return torch.stack(list(inputs))


def _view(batch: torch.Tensor, turns: int, mirrored: bool) -> torch.Tensor:
    """The batch mirrored (left-right), then turned by `turns` quarter turns."""
    out = batch.flip(-1) if mirrored else batch
    return torch.rot90(out, turns, dims=(-2, -1)) if turns else out


def _warm_up_jpeg(size: int) -> bytes:
    """A small greyscale JPEG made here (a gradient): decodes through the same path as a
    radiograph, and holds no patient data."""
    buffer = io.BytesIO()
    Image.linear_gradient("L").resize((size + size // 2, size * 2)).save(buffer, "JPEG")
    return buffer.getvalue()
