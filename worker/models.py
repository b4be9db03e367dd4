"""The worker's models: its configured one, and a few more loaded on demand for rescoring."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from worker.processing import BatchProcessor

log = logging.getLogger(__name__)

# Extra models a worker keeps loaded besides its own; each costs a network's memory (GPU
# memory on a GPU worker), and a rescore rarely uses more than one at a time.
EXTRA_MODELS = 2


class ModelUnavailable(RuntimeError):
    """A rescore asked for a model this worker cannot load, or a file that is now another
    model version than the one queued."""


class ModelPool:
    """`get(path, version)`: the processor for the model a rescore message names. No path is
    the worker's configured model; other paths are loaded on first use and the least recently
    used extra model is dropped when more than `extra` are loaded."""

    def __init__(
        self,
        main: Callable[[], BatchProcessor],
        main_path: Path,
        load: Callable[[Path], BatchProcessor],
        *,
        extra: int = EXTRA_MODELS,
    ) -> None:
        if extra < 1:
            raise ValueError("extra must be at least 1 (one model besides the configured one)")
        self.main = main
        self.main_path = main_path.resolve()
        self.load = load
        self.extra = extra
        self.loaded: OrderedDict[Path, BatchProcessor] = OrderedDict()

    def get(self, model_path: str | None, version: str | None = None) -> BatchProcessor:
        if model_path is None:
            return self.main()
        path = Path(model_path).resolve()
        chosen = self.main() if path == self.main_path else self._extra(path, version)
        if version and chosen.classifier.version != version:
            raise ModelUnavailable(
                f"{path} is now model {chosen.classifier.version}, not {version} as queued "
                "(replaced since, or another file at that path on this host)"
            )
        return chosen

    def with_version(self, version: str) -> BatchProcessor | None:
        """The loaded model of `version` (the configured one or an extra), if any; nothing is
        loaded for it."""
        if self.main().classifier.version == version:
            return self.main()
        for processor in self.loaded.values():
            if processor.classifier.version == version:
                return processor
        return None

    def _extra(self, path: Path, version: str | None) -> BatchProcessor:
        cached = self.loaded.pop(path, None)
        if cached is not None and version and cached.classifier.version != version:
            cached.classifier.close()  # the file was replaced since it was loaded
            cached = None
        if cached is None:
            cached = self._load(path)
        self.loaded[path] = cached
        while len(self.loaded) > self.extra:
            dropped, old = self.loaded.popitem(last=False)
            old.classifier.close()
            log.info("unloaded model %s (%s)", old.classifier.version, dropped)
        return cached

    def _load(self, path: Path) -> BatchProcessor:
        from model.checkpoint import CheckpointError
        from model.inference import ClassifierError

        try:
            processor = self.load(path)
        except (CheckpointError, ClassifierError) as exc:
            raise ModelUnavailable(str(exc)) from exc
        log.info("loaded model %s from %s for rescoring", processor.classifier.version, path)
        return processor
