"""`fracture rescore` arguments, rescore messages grouped by model, and the worker's model pool."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from fracture.cli import app
from model.checkpoint import CheckpointError
from worker.models import ModelPool, ModelUnavailable
from worker.tasks import rescore_groups


def one_error_line(*args: str) -> str:
    result = CliRunner().invoke(app, ["rescore", *args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize("since", ["yesterday", "2026-13-01", "01/03/2026", ""])
def test_since_that_is_not_an_iso_date_is_one_line_exit_2(since: str) -> None:
    line = one_error_line("--since", since)
    assert line == f"error: --since must be an ISO date (YYYY-MM-DD) or date-time, not {since!r}"


@pytest.mark.parametrize("status", ["queued", "processing", "Done", "all"])
def test_status_outside_done_and_failed_is_one_line_listing_them_exit_2(status: str) -> None:
    line = one_error_line("--status", "done", "--status", status)
    assert line.startswith(f"error: unknown --status {status!r}; choose from done, failed")


def test_broker_is_the_configured_one_else_that_of_fracture_up_on_this_data_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from config import Settings, UserError
    from fracture.cli import _rescore_broker_url
    from worker.broker import URL_FILE

    monkeypatch.delenv("FRACTURE_BROKER_URL", raising=False)
    configured = Settings(data_dir=tmp_path, broker_url="redis://elsewhere:6379/0")
    assert _rescore_broker_url(configured) == "redis://elsewhere:6379/0"
    local = Settings(data_dir=tmp_path)
    with pytest.raises(UserError, match="FRACTURE_BROKER_URL is not set and no `fracture up`"):
        _rescore_broker_url(local)
    local.broker_dir.mkdir(parents=True)
    (local.broker_dir / URL_FILE).write_text("redis://127.0.0.1:40123/0\n")
    assert _rescore_broker_url(local) == "redis://127.0.0.1:40123/0"


def test_rescore_messages_grouped_by_model_in_arrival_order() -> None:
    groups = rescore_groups(
        [
            [3, "/m/b.pt", "vb"],
            [1, None, None],
            [2, "/m/b.pt", "vb"],
            ["4"],  # no model named: the configured one
            [5, "/m/c.pt", "vc"],
        ]
    )
    assert groups == {("/m/b.pt", "vb"): [3, 2], (None, None): [1, 4], ("/m/c.pt", "vc"): [5]}


class FakeClassifier:
    def __init__(self, version: str) -> None:
        self.version = version
        self.closed = False

    def close(self) -> None:
        self.closed = True


def fake_processor(version: str) -> Any:
    return SimpleNamespace(classifier=FakeClassifier(version))


class Loader:
    """Stands in for loading a checkpoint: `versions[path]` is what the file holds now."""

    def __init__(self, versions: dict[str, str]) -> None:
        self.versions = versions
        self.loads: list[str] = []

    def __call__(self, path: Path) -> Any:
        self.loads.append(path.name)
        if path.name not in self.versions:
            raise CheckpointError(f"model file not found: {path}")
        return fake_processor(self.versions[path.name])


def pool(tmp_path: Path, loader: Loader, main: Any) -> ModelPool:
    return ModelPool(lambda: main, tmp_path / "main.pt", lambda p: loader(p), extra=2)


def test_no_path_or_the_configured_path_is_the_workers_own_model(tmp_path: Path) -> None:
    main = fake_processor("v-main")
    loader = Loader({})
    models = pool(tmp_path, loader, main)
    assert models.get(None) is main
    assert models.get(str(tmp_path / "main.pt"), "v-main") is main
    assert loader.loads == []


def test_other_models_load_once_and_the_least_recently_used_is_dropped(tmp_path: Path) -> None:
    loader = Loader({"a.pt": "va", "b.pt": "vb", "c.pt": "vc"})
    models = pool(tmp_path, loader, fake_processor("v-main"))
    a: Any = models.get(str(tmp_path / "a.pt"), "va")
    a_model: Any = a.classifier
    b: Any = models.get(str(tmp_path / "b.pt"), "vb")
    assert models.get(str(tmp_path / "a.pt"), "va") is a  # cached, and now the most recent
    models.get(str(tmp_path / "c.pt"), "vc")  # a third: b goes
    assert loader.loads == ["a.pt", "b.pt", "c.pt"]
    assert b.classifier.closed and not a_model.closed
    assert sorted(p.name for p in models.loaded) == ["a.pt", "c.pt"]


def test_a_file_replaced_since_it_was_loaded_is_loaded_again(tmp_path: Path) -> None:
    loader = Loader({"a.pt": "va"})
    models = pool(tmp_path, loader, fake_processor("v-main"))
    old: Any = models.get(str(tmp_path / "a.pt"), "va")
    loader.versions["a.pt"] = "va2"
    new = models.get(str(tmp_path / "a.pt"), "va2")
    assert new.classifier.version == "va2" and old.classifier.closed


def test_a_model_that_is_not_the_version_queued_or_cannot_load_is_unavailable(
    tmp_path: Path,
) -> None:
    loader = Loader({"a.pt": "va"})
    models = pool(tmp_path, loader, fake_processor("v-main"))
    with pytest.raises(ModelUnavailable, match="is now model va, not vx as queued"):
        models.get(str(tmp_path / "a.pt"), "vx")
    with pytest.raises(ModelUnavailable, match="is now model v-main, not vx as queued"):
        models.get(str(tmp_path / "main.pt"), "vx")
    with pytest.raises(ModelUnavailable, match="model file not found"):
        models.get(str(tmp_path / "missing.pt"), "vm")
