"""Metrics an operator scrapes and logs an operator ships: a real drop through the watcher and
worker processes, scraped by a real Prometheus (Debian's package), and the alert rules checked
by Prometheus's own rule tester."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select

from db.models import Image
from telemetry.metrics import failure_reason
from tests.helpers import (
    IN_CI,
    REPO,
    OrthancServer,
    dicom_tool,
    load_compose,
    make_distinct_images,
    make_tiny_heat_checkpoint,
    process_pipeline,
    sample_images,
    service_environment,
    stop_process,
    wait_for,
)
from tests.make_inputs import PATIENT_ID, PATIENT_NAME, dicom_bytes, grey_radiograph
from worker.broker import PrivateBroker, free_port

RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        if IN_CI:
            pytest.fail(f"{name} is required in CI (apt-get install prometheus)")
        pytest.skip(f"{name} not installed (apt-get install prometheus)")
    return found


class PrometheusServer:
    """Prometheus on a free loopback port, scraping `targets` (job → host:port) every second."""

    def __init__(self, root: Path, targets: dict[str, str]) -> None:
        self.root = root
        self.port = free_port()
        self.targets = targets
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> PrometheusServer:
        self.root.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [target]}]}
                for job, target in self.targets.items()
            ],
        }
        (self.root / "prometheus.yml").write_text(yaml.safe_dump(config))
        with (self.root / "prometheus.log").open("ab") as log:
            self.process = subprocess.Popen(
                [
                    _binary("prometheus"),
                    f"--config.file={self.root / 'prometheus.yml'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    f"--storage.tsdb.path={self.root / 'data'}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if not wait_for(self._ready, timeout, 0.2):
            self.stop()
            raise RuntimeError(f"Prometheus did not start: {self.log()[-2000:]}")
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2):
                return True
        except OSError:
            return False

    def query(self, expression: str) -> dict[tuple[tuple[str, str], ...], float]:
        """An instant query: each series' labels (sorted, __name__ left out) → its value."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": expression}
        )
        with urllib.request.urlopen(url, timeout=10) as response:
            answer: dict[str, Any] = json.load(response)
        assert answer["status"] == "success", answer
        return {
            tuple(sorted((k, v) for k, v in r["metric"].items() if k != "__name__")): float(
                r["value"][1]
            )
            for r in answer["data"]["result"]
        }

    def value(self, expression: str) -> float | None:
        """The value of an expression that gives one series (None when it gives none)."""
        series = self.query(expression)
        assert len(series) <= 1, series
        return next(iter(series.values()), None)

    def log(self) -> str:
        return (self.root / "prometheus.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every non-empty line as a JSON object (fails on the first line that is not one)."""
    entries = []
    for line in text.splitlines():
        if line.strip():
            entry = json.loads(line)
            assert isinstance(entry, dict), line
            entries.append(entry)
    return entries


def test_a_drop_is_counted_in_prometheus_and_logged_as_json_lines(
    tmp_path: Path, broker_url: str, tiny_model: Path
) -> None:
    _binary("prometheus")
    good = make_distinct_images(tmp_path / "src", 6)
    ports = {"worker": free_port(), "watcher": free_port()}
    with process_pipeline(
        tmp_path, broker_url, tiny_model, log_format="json", metrics_host="127.0.0.1"
    ) as p:
        for name, port in ports.items():  # one port each: both run on this host
            p.env["FRACTURE_METRICS_PORT"] = str(port)
            p.start(name)
        prometheus = PrometheusServer(
            tmp_path / "prometheus", {name: f"127.0.0.1:{port}" for name, port in ports.items()}
        ).start()
        try:
            both_up = wait_for(lambda: prometheus.value('sum(up{job=~"worker|watcher"})') == 2, 90)
            assert both_up, (prometheus.query("up"), p.logs())

            for path in good:
                shutil.copy(path, p.inbox / path.name)
            shutil.copy(good[0], p.inbox / "copy.jpg")  # a duplicate
            (p.inbox / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
            (p.inbox / "empty.jpg").write_bytes(b"")
            assert wait_for(lambda: p.settled(8), timeout=90), (p.counts(), p.logs())
            assert p.counts() == {"done": 6, "failed": 2}
            with p.factory() as session:
                errors = session.scalars(select(Image.error).where(Image.status == "failed"))
                reasons = Counter(failure_reason(error) for error in errors)

            def scraped(expression: str, expected: float) -> bool:
                return prometheus.value(expression) == expected

            expected = {
                'sum(fracture_files_seen_total{source="watch"})': 9,
                'sum(fracture_images_registered_total{source="watch"})': 8,
                'sum(fracture_duplicates_total{source="watch"})': 1,
                "sum(fracture_images_done_total)": 6,
                "sum(fracture_images_failed_total)": 2,
                # each good image in exactly one model run
                "sum(fracture_batch_size_sum)": 6,
                "sum(fracture_arrival_to_stored_seconds_count)": 6,
                'sum(fracture_queue_images{job="watcher"})': 0,
                'fracture_workers_live{job="watcher"}': 1,
                'fracture_queue_oldest_age_seconds{job="watcher"}': 0,
            }
            for expression, value in expected.items():
                assert wait_for(lambda e=expression, v=value: scraped(e, v), 30), (  # type: ignore[misc]
                    expression,
                    prometheus.query(expression),
                )
            by_reason = prometheus.query("sum by (reason) (fracture_images_failed_total) > 0")
            assert {dict(k)["reason"]: v for k, v in by_reason.items()} == reasons
            assert reasons["empty"] == 1  # refused by the watcher; the corrupt file by the worker
            # the watcher's readings come from the watcher alone (a 0 elsewhere would mislead)
            assert (
                prometheus.query('{__name__=~"fracture_(queue|workers).*", job!="watcher"}') == {}
            )
            runs = prometheus.value('fracture_batch_model_seconds_count{job="worker"}')
            assert runs == prometheus.value('fracture_batch_size_count{job="worker"}')
            assert runs is not None and runs >= 1
        finally:
            prometheus.stop()

    for name in ports:
        entries = json_lines((tmp_path / f"{name}.log").read_text())
        assert entries, name
        for entry in entries:
            assert {"time", "level", "service", "image_id", "message"} <= set(entry), entry
            assert entry["service"] == name
        text = json.dumps(entries)
        assert "corrupt.jpg" not in text and "empty.jpg" not in text  # file names stay out
    worker_entries = json_lines((tmp_path / "worker.log").read_text())
    failed = [e for e in worker_entries if e["message"].startswith("image ")]
    assert [e["level"] for e in failed] == ["WARNING"] and isinstance(failed[0]["image_id"], int)


def test_dicom_instances_in_and_results_out_are_counted(
    tmp_path: Path, broker_url: str, orthanc: OrthancServer
) -> None:
    _binary("prometheus")
    model = make_tiny_heat_checkpoint(tmp_path / "heat.pt", threshold=0.5, doubt_threshold=0.3)
    files = []
    for index, source in enumerate(sample_images()[:3]):
        path = tmp_path / f"instance_{index}.dcm"
        path.write_bytes(dicom_bytes(grey_radiograph(source), bits=12))
        files.append(path)
    dicom_port, ports = free_port(), {"worker": free_port(), "dicom": free_port()}
    destination = f"{OrthancServer.AE_TITLE}@127.0.0.1:{orthanc.dicom_port}"
    with process_pipeline(
        tmp_path,
        broker_url,
        model,
        log_format="json",
        dicom_port=dicom_port,
        dicom_destination=destination,
    ) as p:
        for name, port in ports.items():
            p.env["FRACTURE_METRICS_PORT"] = str(port)
            p.start(name)
        prometheus = PrometheusServer(
            tmp_path / "prometheus", {name: f"127.0.0.1:{port}" for name, port in ports.items()}
        ).start()
        try:
            command = ["storescu", "-aec", "FRACTURE", "127.0.0.1", str(dicom_port)]
            sent = wait_for(lambda: dicom_tool(*command, *map(str, files)).returncode == 0, 90, 1)
            assert sent, p.logs()
            expected = {
                'sum(fracture_files_seen_total{source="dicom"})': 3,
                'sum(fracture_images_registered_total{source="dicom"})': 3,
                "sum(fracture_images_done_total)": 3,
                "sum(fracture_dicom_results_sent_total)": 3,
                'sum(fracture_dicom_results_failed_total{final="true"})': 0,
            }
            for expression, value in expected.items():
                counted = wait_for(lambda e=expression, v=value: prometheus.value(e) == v, 120)  # type: ignore[misc]
                assert counted, (expression, prometheus.query(expression), p.logs())
        finally:
            prometheus.stop()
    text = (tmp_path / "dicom.log").read_text()
    assert {e["service"] for e in json_lines(text)} == {"dicom"}
    assert PATIENT_NAME not in text and PATIENT_ID not in text


def test_a_lost_broker_is_one_json_line_in_the_worker_log(tmp_path: Path, tiny_model: Path) -> None:
    broker = PrivateBroker(tmp_path / "broker").start()
    try:
        with process_pipeline(tmp_path, broker.url, tiny_model, log_format="json") as p:
            p.start("worker")
            assert wait_for(lambda: "ready" in (tmp_path / "worker.log").read_text(), 90)
            broker.stop()
            lost = wait_for(lambda: "broker lost" in (tmp_path / "worker.log").read_text(), 60)
            assert lost, p.logs()
            broker.start()  # same port: the worker reconnects
            for path in make_distinct_images(tmp_path / "src", 2):
                shutil.copy(path, p.inbox / path.name)
            p.start("watcher")
            assert wait_for(lambda: p.counts() == {"done": 2}, 90), (p.counts(), p.logs())
    finally:
        broker.stop()
    entries = json_lines((tmp_path / "worker.log").read_text())
    (lost_line,) = [e for e in entries if "Connection to broker lost" in e["message"]]
    assert lost_line["level"] == "WARNING" and "exception" not in lost_line, lost_line
    assert "Error" in lost_line["message"]  # the exception's type and text, not its traceback


# -- the alert rules, by Prometheus's own rule tester ----------------------------------------
def series(name: str, values: str, **labels: str) -> dict[str, str]:
    text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{text}}}", "values": values}


def rule_annotations(alert: str, summary: str) -> dict[str, str]:
    (rule,) = [
        r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]
        if r.get("alert") == alert
    ]  # fmt: skip
    return {"summary": summary, "description": rule["annotations"]["description"]}


def run_rule_tests(tmp_path: Path, tests: list[dict[str, Any]]) -> None:
    path = tmp_path / "alerts_test.yml"
    path.write_text(
        yaml.safe_dump({"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": tests})
    )
    result = subprocess.run(
        [_binary("promtool"), "test", "rules", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


HEALTHY = [
    series("fracture_workers_live", "1x60", job="watcher"),
    series("up", "1x60", job="watcher"),
]


def test_promtool_accepts_the_shipped_rules_and_config() -> None:
    for command in (["check", "rules", str(RULES)], ["check", "config", str(CONFIG)]):
        result = subprocess.run(
            [_binary("promtool"), *command], capture_output=True, text=True, cwd=CONFIG.parent
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_compose_prometheus_scrapes_every_service_on_its_metrics_port() -> None:
    services = load_compose()["services"]
    prometheus = services["prometheus"]
    assert prometheus["profiles"] == ["monitoring"]
    assert prometheus["image"] == "prom/prometheus:v2.53.0"  # PROMETHEUS_IMAGE in .env.example
    assert "./deploy/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert all(p.startswith("127.0.0.1:") for p in prometheus["ports"])

    jobs = {
        job["job_name"]: job["dns_sd_configs"][0]
        for job in yaml.safe_load(CONFIG.read_text())["scrape_configs"]
        if "dns_sd_configs" in job
    }
    scraped = {name: job["port"] for job in jobs.values() for name in job["names"]}
    for name in ("worker", "worker-cpu", "watcher", "dicom", "dashboard"):
        environment = service_environment(services[name])
        assert scraped[name] == int(environment["FRACTURE_METRICS_PORT"]), name
        assert environment["FRACTURE_METRICS_HOST"] == "0.0.0.0", name
        assert not any(str(p).endswith(":9464") for p in services[name].get("ports", [])), name


def test_stalled_queue_alert_fires_only_when_nothing_finishes(tmp_path: Path) -> None:
    stalled = {
        "interval": "1m",
        "input_series": [
            *HEALTHY,
            series("fracture_queue_images", "5x60", job="watcher", status="queued"),
            series("fracture_images_done_total", "0+10x10 100x50", job="worker"),
            series("fracture_images_failed_total", "0x60", job="worker", reason="corrupt"),
        ],
        "alert_rule_test": [
            {"eval_time": "12m", "alertname": "FractureQueueStalled", "exp_alerts": []},
            {
                "eval_time": "30m",
                "alertname": "FractureQueueStalled",
                "exp_alerts": [
                    {
                        "exp_labels": {"severity": "critical"},
                        "exp_annotations": rule_annotations(
                            "FractureQueueStalled",
                            "5 image(s) wait for a result and none finished in 10 minutes",
                        ),
                    }
                ],
            },
        ],
    }
    busy = {
        "interval": "1m",
        "input_series": [
            *HEALTHY,
            series("fracture_queue_images", "50x60", job="watcher", status="queued"),
            series("fracture_images_done_total", "0+10x60", job="worker"),
            series("fracture_images_failed_total", "0x60", job="worker", reason="corrupt"),
        ],
        "alert_rule_test": [
            {"eval_time": "40m", "alertname": "FractureQueueStalled", "exp_alerts": []}
        ],
    }
    run_rule_tests(tmp_path, [stalled, busy])


def test_failure_rate_alert_fires_on_a_jump_not_on_a_trickle(tmp_path: Path) -> None:
    jump = {
        "interval": "1m",
        "input_series": [
            *HEALTHY,
            series("fracture_images_done_total", "0+20x60", job="worker"),
            # one failure in a hundred, then twenty a minute from minute 30
            series(
                "fracture_images_failed_total", "0+0.2x30 6+20x30", job="worker", reason="corrupt"
            ),
            series("fracture_images_failed_total", "0x60", job="watcher", reason="empty"),
        ],
        "alert_rule_test": [
            {"eval_time": "25m", "alertname": "FractureFailureRateHigh", "exp_alerts": []},
            {
                "eval_time": "50m",
                "alertname": "FractureFailureRateHigh",
                "exp_alerts": [
                    {
                        "exp_labels": {"severity": "warning"},
                        "exp_annotations": rule_annotations(
                            "FractureFailureRateHigh",
                            "300 images failed in 15 minutes (over a quarter of those finished)",
                        ),
                    }
                ],
            },
        ],
    }
    run_rule_tests(tmp_path, [jump])


def test_no_live_worker_alert_fires_two_minutes_after_the_last_heartbeat(tmp_path: Path) -> None:
    gone = {
        "interval": "1m",
        "input_series": [
            series("fracture_workers_live", "1x10 0x20", job="watcher"),
            series("up", "1x30", job="watcher"),
        ],
        "alert_rule_test": [
            {"eval_time": "10m", "alertname": "FractureNoLiveWorker", "exp_alerts": []},
            {
                "eval_time": "14m",
                "alertname": "FractureNoLiveWorker",
                "exp_alerts": [
                    {
                        "exp_labels": {"severity": "critical"},
                        "exp_annotations": rule_annotations(
                            "FractureNoLiveWorker",
                            "no worker is alive; images are registered but not scored",
                        ),
                    }
                ],
            },
        ],
    }
    run_rule_tests(tmp_path, [gone])


def test_the_dashboard_counts_uploads_stored_and_refused(tmp_path: Path) -> None:
    from config import Settings
    from dashboard import services
    from telemetry import metrics
    from tests.helpers import make_distinct_images

    settings = Settings(data_dir=tmp_path / "data", inbox=tmp_path / "inbox", broker_url=None)
    dashboard = services.Dashboard.start(settings)
    stored = metrics.UPLOADS.labels("stored")._value.get()
    refused = metrics.UPLOADS.labels("refused")._value.get()
    with pytest.raises(services.UploadError):
        services.store_upload(dashboard, "empty.jpg", b"")
    with pytest.raises(services.UploadError):
        services.store_upload(dashboard, "notes.txt", b"not a radiograph")
    (image,) = make_distinct_images(tmp_path / "src", 1)
    services.store_upload(dashboard, image.name, image.read_bytes())
    assert metrics.UPLOADS.labels("refused")._value.get() == refused + 2
    assert metrics.UPLOADS.labels("stored")._value.get() == stored + 1
