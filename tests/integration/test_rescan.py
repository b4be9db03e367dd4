"""The watcher's periodic rescan: files whose events were missed are found, and files already
hashed and unchanged are not read again (real broker, real SQLite)."""

from __future__ import annotations

import shutil
from pathlib import Path

from config import Settings
from tests.helpers import make_distinct_images
from watcher.main import build_watcher


def test_rescan_offers_only_new_or_changed_files(tmp_path: Path, broker_url: str) -> None:
    settings = Settings(inbox=tmp_path / "inbox", data_dir=tmp_path / "data", broker_url=broker_url)
    watcher = build_watcher(settings, broker_url)
    sources = make_distinct_images(tmp_path / "src", 4)
    known = []
    for path in sources[:3]:
        known.append(Path(shutil.copy(path, settings.inbox / path.name)))
    assert len(watcher.register(known)) == 3

    assert watcher.rescan() == 0  # nothing new: nothing offered, nothing read
    assert watcher.tracker.ready() == []

    missed = Path(shutil.copy(sources[3], settings.inbox / "missed event.jpg"))
    with known[0].open("ab") as handle:  # changed after it was hashed
        handle.write(b"\0")
    assert watcher.rescan() == 2
    assert set(watcher.tracker._pending) == {missed, known[0]}

    known[1].unlink()  # gone files are forgotten, not offered
    assert watcher.rescan() == 2  # the two still pending are still new or changed
    assert str(known[1]) not in watcher._hashed
