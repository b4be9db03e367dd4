"""FRACTURE_WORKER_THREADS: a worker given one thread runs the network in one ONNX Runtime lane
(what `fracture up` gives each of two workers on 2 cores); unset, the worker keeps every core."""

from __future__ import annotations

import torch

from config import Settings
from config.settings import SHIPPED_MODEL
from model.inference import Classifier
from worker.main import use_threads


def test_a_worker_given_one_thread_runs_its_network_in_one_lane() -> None:
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        use_threads(Settings())  # unset: left as it is
        assert torch.get_num_threads() == 2
        two = Classifier.load(SHIPPED_MODEL, device="cpu", runtime="onnx")
        use_threads(Settings(worker_threads=1))
        assert torch.get_num_threads() == 1
        one = Classifier.load(SHIPPED_MODEL, device="cpu", runtime="onnx")
    finally:
        torch.set_num_threads(threads)
    assert (two.lanes, one.lanes) == (2, 1)
    batch = torch.rand(3, 3, one.preset.size, one.preset.size)
    assert torch.allclose(one.all_logits(batch), two.all_logits(batch), atol=1e-4)
    one.close()
    two.close()
