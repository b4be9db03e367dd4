"""What the benchmarks print about the machine they ran on."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name where the system says it (Linux: /proc/cpuinfo), else what Python
    knows ('' where nothing): two VMs with the same core count ran the same network 2.4× apart,
    so a figure names its CPU (docs/PERFORMANCE.md)."""
    try:
        with Path("/proc/cpuinfo").open(encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor()
