"""`fracture results` as a user reads it: duplicates on record beside their image, times with
their offset, one line per image whatever the file name, and a word when rows are cut off."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime
from pathlib import Path

from typer.testing import CliRunner

from db import queries
from db.migrate import upgrade
from db.session import make_engine, make_session_factory, transaction
from fracture.cli import app
from tests.helpers import fracture_cli, fracture_env
from worker.broker import free_port


def _new(name: str, sha: str) -> queries.NewImage:
    return queries.NewImage(sha256=sha, path=f"/inbox/{name}", filename=name, size=10)


def test_results_list_duplicates_zoned_times_and_say_when_rows_are_cut_off(
    tmp_path: Path, database_url: str
) -> None:
    upgrade(database_url)
    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    entries = [_new("a.jpg", "a" * 64), _new("two\nlines.jpg", "b" * 64), _new("c.jpg", "c" * 64)]
    copies = [_new("copy of a.jpg", "a" * 64), _new("a.jpg", "a" * 64)]  # the second: a rescan
    with transaction(factory) as session:
        registered = queries.register_images(session=session, new=entries)
        again = queries.register_images(session=session, new=copies)
        recorded = queries.record_duplicates(
            session=session, pairs=[(i, e) for e, (i, _) in zip(copies, again, strict=True)]
        )
        assert [e.filename for _, e in recorded] == ["copy of a.jpg"]
        # recording the same arrival twice keeps one record
        assert queries.record_duplicates(session=session, pairs=[(again[0][0], copies[0])]) == []
    engine.dispose()
    base = ["--database-url", database_url, "--data-dir", str(tmp_path)]

    listed = CliRunner().invoke(app, ["results", "--json", *base])
    assert listed.exit_code == 0, listed.output
    records = {r["path"]: r for r in map(json.loads, listed.output.splitlines())}
    assert [d["path"] for d in records["a.jpg"]["duplicates"]] == ["copy of a.jpg"]
    assert records["c.jpg"]["duplicates"] == []
    for record in records.values():
        assert datetime.fromisoformat(record["received_at"]).utcoffset() is not None

    text = CliRunner().invoke(app, ["results", "--limit", "2", *base])
    assert text.exit_code == 0, text.output
    lines = text.output.splitlines()
    assert len(lines) == 4  # two images, the cut-off note, the disclaimer
    assert "two\\nlines.jpg" in lines[0] + lines[1]
    assert lines[2] == "(the newest 2 shown; --limit N shows more)"
    full = CliRunner().invoke(app, ["results", *base]).output
    assert "a.jpg" in full and "(also received as: copy of a.jpg)" in full
    assert "shown; --limit" not in full
    assert registered[0][1] and not again[0][1]


def test_a_mistyped_data_dir_or_an_unreachable_database_is_one_line_not_an_empty_answer(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "dat"  # the user meant ./data
    env = fracture_env(data_dir=missing)
    typo = subprocess.run(
        fracture_cli("results"), env=env, capture_output=True, text=True, timeout=60
    )
    assert typo.returncode == 2
    assert typo.stderr.startswith(f"error: no data directory at {missing}")
    assert not missing.exists(), "no empty database was created there"

    url = f"postgresql+psycopg://fracture:s3cret@127.0.0.1:{free_port()}/fracture"
    down = subprocess.run(
        fracture_cli("results", "--database-url", url),
        env=fracture_env(data_dir=tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert down.returncode == 2
    assert down.stderr.startswith("error: cannot use the database:")
    assert "Traceback" not in down.stderr and "s3cret" not in down.stderr
    assert len(down.stderr.strip().splitlines()) == 1
