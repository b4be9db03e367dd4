"""CPU inference in ONNX Runtime: the same network, exported when the model loads.

On a 2-core x86 machine ONNX Runtime ran the shipped EfficientNet-Lite0 (256 px, batch norms
folded) at 187 img/s against 64 img/s for PyTorch in channels-last, with outputs equal to
3e-6 (docs/PERFORMANCE.md). PyTorch stays the runtime on GPUs and for networks this module
cannot split.

Grad-CAM needs the gradient of the fracture logit with respect to the last convolution's
output, which ONNX Runtime cannot give. The exported graph therefore also returns that
activation, and the small part of the network after it (the "tail": activation, pooling,
heads) runs in PyTorch with autograd to get the gradient. Load checks both against PyTorch on
a random input and refuses the export if either differs.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from model import architectures, explain

log = logging.getLogger(__name__)

# Largest difference tolerated between ONNX Runtime and PyTorch outputs on the load-time check
# (float32 with different kernel orders: measured 3e-6 on the shipped model).
TOLERANCE = 1e-3


class UnsupportedNetwork(ValueError):
    """A network this module cannot run in ONNX Runtime (with the reason)."""


def available() -> bool:
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class _WithActivations(nn.Module):
    """The network's outputs plus its last convolution's output, for the export."""

    def __init__(self, net: nn.Module, layer: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.layer = layer

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        captured: list[torch.Tensor] = []
        handle = self.layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            outputs = self.net(x)
        finally:
            handle.remove()
        return outputs, captured[0]


class OnnxNetwork:
    """`net` (eval mode, on the CPU) exported to an ONNX Runtime session.

    `run` returns (outputs, activations) as float32 tensors; `tail(activations)` recomputes the
    outputs in PyTorch, differentiably.
    """

    def __init__(self, net: nn.Module, size: int, *, threads: int) -> None:
        import onnxruntime as ort

        tail = architectures.tail(net)
        heat = architectures.has_heat(net)
        if tail is None and not heat:
            raise UnsupportedNetwork(f"no known split after the last convolution of {type(net)}")
        # A heat-head network explains itself with its own map: no Grad-CAM, so no tail, and
        # the export returns the outputs alone.
        self.tail: Callable[[torch.Tensor], torch.Tensor] | None = tail
        exported = _WithActivations(net, explain.last_conv_layer(net)) if tail else net
        exported.eval()
        names = ["outputs", "activations"] if tail else ["outputs"]
        example = torch.zeros(2, 3, size, size)
        buffer = io.BytesIO()
        with warnings.catch_warnings(), torch.no_grad():
            # The TorchScript-based exporter: it traces Python hooks and needs no onnxscript.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                exported,
                (example,),
                buffer,  # type: ignore[arg-type]  # a file object works; the stub says path
                input_names=["images"],
                output_names=names,
                dynamic_axes={name: {0: "n"} for name in ("images", *names)},
                opset_version=17,
                dynamo=False,
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle intra-op threads spin by default; here they would take CPU from the decode
        # threads working beside each forward pass.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # ONNX Runtime's memory arena stays on (the default). Without it, each run allocated
        # its planned block of activations from the C library, which with the lanes' threads
        # mapped and unmapped it every time: 7-8 ms of kernel time per image. With it, the
        # pipeline ran 17-21 % faster at the same worker peak (docs/PERFORMANCE.md).
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            buffer.getvalue(), options, providers=["CPUExecutionProvider"]
        )
        self._check(exported, size)

    def run(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(outputs, last-convolution activations); the activations are empty for a network
        without a tail."""
        images = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        returned = self.session.run(None, {"images": images})
        if len(returned) == 1:
            return torch.from_numpy(returned[0]), torch.zeros(0)
        return torch.from_numpy(returned[0]), torch.from_numpy(returned[1])

    def _check(self, exported: nn.Module, size: int) -> None:
        probe = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            outputs, activations = self.run(probe)
            if self.tail is None:
                checks = [("outputs", outputs, exported(probe))]
            else:
                expected, expected_activations = exported(probe)
                checks = [
                    ("outputs", outputs, expected),
                    ("activations", activations, expected_activations),
                    ("tail outputs", self.tail(activations), expected),
                ]
        for name, got, want in checks:
            difference = float((got - want).abs().max())
            if got.shape != want.shape or not difference <= TOLERANCE:
                raise UnsupportedNetwork(
                    f"ONNX Runtime {name} differ from PyTorch by {difference:.2g} "
                    f"(tolerance {TOLERANCE:g})"
                )
