"""`fracture bench --json` runs end to end and reports every figure the docs quote."""

import json
import subprocess
from pathlib import Path

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
    assert result["pipeline_over_limit"] == round(result["pipeline_ips"] / result["limit_ips"], 3)
    assert result["worker_rss_mb"] > 100  # the sampler really read the worker process
