from pathlib import Path

import pytest
from pydantic import ValidationError

from config import SHIPPED_MODEL, Settings


def test_defaults_point_at_local_folders_and_shipped_model(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("FRACTURE_DATA_DIR", "FRACTURE_MODEL_PATH", "FRACTURE_DATABASE_URL"):
        monkeypatch.delenv(key, raising=False)
    settings = Settings()
    assert settings.inbox == Path("./inbox")
    assert settings.resolved_database_url.startswith("sqlite:///")
    assert settings.resolved_database_url.endswith("data/fracture.db")
    assert settings.resolved_model_path == SHIPPED_MODEL
    assert settings.dashboard_port == 8501


def test_environment_overrides_defaults_and_arguments_override_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FRACTURE_BATCH_SIZE", "24")
    monkeypatch.setenv("FRACTURE_DATA_DIR", str(tmp_path))
    assert Settings().batch_size == 24
    assert Settings(batch_size=8).batch_size == 8
    assert Settings().resolved_database_url == f"sqlite:///{tmp_path / 'fracture.db'}"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"batch_size": 0}, "FRACTURE_BATCH_SIZE must be between 1 and 4096"),
        ({"batch_interval_ms": 0}, "FRACTURE_BATCH_INTERVAL_MS must be between"),
        ({"batch_size": 16, "worker_prefetch": 4}, "batches never fill"),
        ({"device": "tpu"}, "'auto', 'cpu' or 'cuda'"),
        ({"dicom_destination": "pacs.example.org:104"}, "must look like AET@host:port"),
        ({"dicom_destination": "PACS@host:99999"}, "must look like AET@host:port"),
        ({"dicom_ae_title": "A_VERY_LONG_AE_TITLE"}, "1-16 printable ASCII"),
        ({"dicom_calling_aes": "CT1,BAD\\AE"}, "may not contain a backslash"),
        ({"dicom_port": 70000}, "FRACTURE_DICOM_PORT must be between 1 and 65535"),
        (
            {"task_time_limit_s": 200, "stuck_after_s": 300, "visibility_timeout_s": 300},
            "must exceed twice FRACTURE_TASK_TIME_LIMIT_S",
        ),
        ({"task_time_limit_s": 60, "stuck_after_s": 50}, "FRACTURE_TASK_TIME_LIMIT_S < FRACTURE"),
        ({"heartbeat_s": 20, "dead_after_s": 15}, "longer than FRACTURE_HEARTBEAT_S"),
        ({"max_attempts": 0}, "greater than or equal to 1"),
        ({"decode_isolation": "fork"}, "'process' or 'thread'"),
    ],
)
def test_invalid_settings_name_the_rule(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**values)  # type: ignore[arg-type]


def test_an_empty_worker_threads_variable_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compose file passes FRACTURE_WORKER_THREADS on as "" when the host leaves it unset."""
    monkeypatch.setenv("FRACTURE_WORKER_THREADS", "")
    assert Settings().worker_threads is None
    monkeypatch.setenv("FRACTURE_WORKER_THREADS", "2")
    assert Settings().worker_threads == 2
    monkeypatch.setenv("FRACTURE_WORKER_THREADS", "0")
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        Settings()


def test_prefetch_defaults_to_two_batches() -> None:
    assert Settings(batch_size=8).prefetch == 16


def test_dicom_destination_and_calling_titles_are_parsed() -> None:
    settings = Settings(dicom_destination="ORTHANC@10.0.0.5:4242", dicom_calling_aes=" CT1, DX2 ,")
    assert settings.destination is not None
    assert (settings.destination.ae_title, settings.destination.host) == ("ORTHANC", "10.0.0.5")
    assert (
        settings.destination.port == 4242 and str(settings.destination) == "ORTHANC@10.0.0.5:4242"
    )
    assert settings.calling_ae_titles == ["CT1", "DX2"]
    assert Settings(dicom_destination="").destination is None
