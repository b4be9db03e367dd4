"""The `fracture` command line: flags override FRACTURE_* environment, which overrides defaults."""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from config import Settings, UserError, build_settings
from fracture import model_commands
from fracture.console import fail, setup_logging

if TYPE_CHECKING:
    from model.inference import Classifier

app = typer.Typer(
    help="X-ray fracture screening pipeline. Decision support only, not for clinical use.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="Database schema commands.", no_args_is_help=True)
app.add_typer(db_app, name="db")

InboxOpt = Annotated[Path | None, typer.Option("--inbox", help="watched folder [FRACTURE_INBOX]")]
DataOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="database, uploads, heatmaps [FRACTURE_DATA_DIR]")
]
ModelOpt = Annotated[
    Path | None, typer.Option("--model", help="checkpoint file [FRACTURE_MODEL_PATH]")
]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto | cpu | cuda")]
DbOpt = Annotated[str | None, typer.Option("--database-url", help="[FRACTURE_DATABASE_URL]")]
SinceOpt = Annotated[
    str | None,
    typer.Option(help="only images received on or after this ISO date or date-time (local)"),
]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="only count the images that would be queued")
]


# Errors of the model that a user can fix (a file, a checkpoint, a flag), by module. They are
# looked up only among the modules already imported, the only ones that can have raised them:
# importing the model here would load torch for every command, `--help` included.
MODEL_ERRORS = (
    ("model.checkpoint", "CheckpointError"),
    ("model.errors", "DecodeError"),
    ("model.decode", "DecodeError"),
    ("model.inference", "ClassifierError"),
)


def is_user_error(exc: BaseException) -> bool:
    """UserError or one of MODEL_ERRORS: shown as one line, without a traceback."""
    if isinstance(exc, UserError):
        return True
    for module_name, class_name in MODEL_ERRORS:
        module = sys.modules.get(module_name)
        if module is not None and isinstance(exc, getattr(module, class_name)):
            return True
    return False


def main() -> None:
    """Console-script entry point: user errors become one line and exit status 2."""
    try:
        app()
    except Exception as exc:
        if _unreachable_database(exc):
            reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
            typer.echo(f"error: cannot use the database: {reason}", err=True)
            sys.exit(2)
        if not is_user_error(exc):
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)


def _unreachable_database(exc: BaseException) -> bool:
    """A database that is down, refuses us or is not a database: the driver's reason, not a
    traceback (the URL, which may hold a password, is never printed)."""
    errors = sys.modules.get("sqlalchemy.exc")
    return errors is not None and isinstance(exc, errors.OperationalError)


@app.command()
def up(
    inbox: InboxOpt = None,
    data_dir: DataOpt = None,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    dashboard: Annotated[bool, typer.Option(help="also serve the dashboard")] = True,
) -> None:
    """Run everything on this machine: broker (if none configured), worker, watcher, dashboard."""
    from fracture.supervisor import run_all

    settings = build_settings(inbox=inbox, data_dir=data_dir, model_path=model, device=device)
    setup_logging(settings.log_level, settings.log_format, "supervisor")
    sys.exit(run_all(settings, with_dashboard=dashboard))


def _broker_url(settings: Settings) -> str:
    if not settings.broker_url:
        raise UserError(
            "FRACTURE_BROKER_URL is not set: use `fracture up` for a private broker, "
            "or point this process at a running Redis (redis://host:6379/0)"
        )
    return settings.broker_url


@app.command()
def worker(
    data_dir: DataOpt = None,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    database_url: DbOpt = None,
    name: Annotated[str | None, typer.Option(help="worker name in the broker")] = None,
    ready_file: Annotated[
        Path | None,
        typer.Option(help="created once the worker consumes (for supervisors, health checks)"),
    ] = None,
) -> None:
    """Consume queued images and store predictions (needs FRACTURE_BROKER_URL)."""
    settings = build_settings(
        data_dir=data_dir, model_path=model, device=device, database_url=database_url
    )
    setup_logging(settings.log_level, settings.log_format, "worker")
    from worker.main import run_worker

    try:
        run_worker(settings, _broker_url(settings), name=name, ready_file=ready_file)
    except ValueError as exc:
        raise UserError(str(exc)) from exc


@app.command()
def watch(
    inbox: InboxOpt = None,
    data_dir: DataOpt = None,
    database_url: DbOpt = None,
    polling: Annotated[bool | None, typer.Option(help="poll instead of OS events")] = None,
) -> None:
    """Watch the inbox: register each complete file and queue it (needs FRACTURE_BROKER_URL)."""
    settings = build_settings(
        inbox=inbox, data_dir=data_dir, database_url=database_url, polling=polling
    )
    setup_logging(settings.log_level, settings.log_format, "watcher")
    from watcher.main import run_watcher

    run_watcher(settings, _broker_url(settings))


@app.command("dicom-listen")
def dicom_listen(
    port: Annotated[int | None, typer.Option(help="[FRACTURE_DICOM_PORT], default 11112")] = None,
    ae_title: Annotated[
        str | None, typer.Option("--ae-title", help="[FRACTURE_DICOM_AE_TITLE]")
    ] = None,
    host: Annotated[str | None, typer.Option(help="bind address [FRACTURE_DICOM_HOST]")] = None,
    data_dir: DataOpt = None,
    database_url: DbOpt = None,
) -> None:
    """Receive images over DICOM (C-STORE, C-ECHO) and queue them; send results back to
    FRACTURE_DICOM_DESTINATION when set (needs FRACTURE_BROKER_URL)."""
    settings = build_settings(
        dicom_port=port,
        dicom_ae_title=ae_title,
        dicom_host=host,
        data_dir=data_dir,
        database_url=database_url,
    )
    setup_logging(settings.log_level, settings.log_format, "dicom")
    from pacs.main import run_listener

    try:
        run_listener(settings, _broker_url(settings))
    except OSError as exc:
        raise UserError(f"cannot listen on {settings.dicom_host}:{port or '11112'}: {exc}") from exc


@app.command("dicom-send")
def dicom_send(
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="give failed results fresh attempts first")
    ] = False,
    follow: Annotated[
        bool, typer.Option("--follow", help="keep sending new results until Ctrl-C")
    ] = False,
    data_dir: DataOpt = None,
    database_url: DbOpt = None,
) -> None:
    """Send stored results of DICOM images to FRACTURE_DICOM_DESTINATION (secondary capture
    and structured report); prints what was sent, retried and failed."""
    settings = build_settings(data_dir=data_dir, database_url=database_url)
    setup_logging(settings.log_level if follow else "WARNING", settings.log_format, "dicom-send")
    if settings.destination is None:
        raise UserError("FRACTURE_DICOM_DESTINATION is not set (AET@host:port)")
    from db import exports
    from db.migrate import upgrade
    from db.models import utcnow
    from db.session import transaction
    from pacs.main import build_sender

    upgrade(settings.resolved_database_url)
    sender = build_sender(settings)
    assert sender is not None
    if retry_failed:
        with transaction(sender.factory) as session:
            again = exports.retry_failed(session=session, now=utcnow())
        typer.echo(f"{again} failed result(s) given fresh attempts")
    if follow:
        import signal

        signal.signal(signal.SIGTERM, lambda *_: sender.stop())
        sender.start()
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
        finally:
            sender.stop()
        return
    outcome = sender.run_pass()
    with sender.factory() as session:
        states = exports.counts(session=session)
    typer.echo(
        f"to {settings.destination}: {len(outcome.sent)} sent, {len(outcome.retrying)} to retry, "
        f"{len(outcome.failed)} failed now; stored: "
        + ", ".join(f"{count} {state}" for state, count in states.items())
    )
    for export_id, error in {**outcome.retrying, **outcome.failed}.items():
        typer.echo(f"  result {export_id}: {error}", err=True)


@app.command("dashboard")
def dashboard_cmd(
    data_dir: DataOpt = None,
    port: Annotated[int | None, typer.Option(help="[FRACTURE_DASHBOARD_PORT]")] = None,
) -> None:
    """Serve the Streamlit dashboard."""
    from fracture.supervisor import dashboard_command

    settings = build_settings(data_dir=data_dir, dashboard_port=port)
    setup_logging(settings.log_level, settings.log_format, "dashboard")
    command = dashboard_command(settings)
    # Replace this process so Streamlit itself receives SIGTERM and stops cleanly.
    os.execv(command[0], command)


@app.command()
def predict(
    files: Annotated[list[Path], typer.Argument(help="image files to score")],
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
    model: ModelOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Score files directly with the model (no queue, no database). Exit status 1 when a file
    could not be scored."""
    from model.inference import Classifier

    settings = build_settings(model_path=model, device=device)
    setup_logging("WARNING")
    classifier = Classifier.load(
        settings.resolved_model_path, device=settings.device, runtime=settings.runtime
    )
    failed = 0
    # A batch at a time, so a thousand files never sit in memory at once.
    for start in range(0, len(files), settings.batch_size):
        chunk = files[start : start + settings.batch_size]
        failed += _predict_chunk(classifier, chunk, as_json=as_json)
    if not as_json:
        typer.echo("Decision support only, not for clinical use.")
    if failed:
        typer.echo(f"{failed} of {len(files)} file(s) could not be scored", err=True)
        raise typer.Exit(1)


def _predict_chunk(classifier: Classifier, files: list[Path], *, as_json: bool) -> int:
    """Score and print one batch of files; how many failed."""
    import hashlib

    from model.decode import DecodeError
    from model.files import read_file

    sources: list[Path | bytes] = []
    for path in files:  # each file is read once: hashed, then decoded from these bytes
        try:
            sources.append(read_file(path))
        except DecodeError:
            sources.append(path)  # decoding reports why it cannot be read
    outcomes = classifier.predict_sources(sources)
    failed = 0
    for path, source, outcome in zip(files, sources, outcomes, strict=True):
        failed += isinstance(outcome, DecodeError)
        sha = hashlib.sha256(source).hexdigest() if isinstance(source, bytes) else None
        scored = None if isinstance(outcome, DecodeError) else outcome
        record: dict[str, Any] = {
            "path": str(path),
            "sha256": sha,
            "status": "done" if scored else "failed",
            "label": scored.label if scored else None,
            "probability": scored.probability if scored else None,
            "threshold": scored.threshold if scored else classifier.threshold,
            "threshold_source": scored.threshold_source if scored else None,
            "region": scored.region if scored else None,
            "region_probability": scored.region_probability if scored else None,
            "verdict": scored.verdict if scored else None,
            "doubt_threshold": (
                scored.doubt_threshold if scored else classifier.checkpoint.doubt_threshold
            ),
            "boxes": [[float(v) for v in box] for box in scored.boxes] if scored else None,
            "model_version": classifier.version,
            "error": None if scored else str(outcome),
        }
        if as_json:
            typer.echo(json.dumps(record))
        elif scored is None:
            typer.echo(f"{path}: failed: {record['error']}")
        else:
            region = (
                f", {scored.region} {scored.region_probability:.0%}"
                if scored.region is not None and scored.region_probability is not None
                else ""
            )
            doubt = (
                f", doubt from {scored.doubt_threshold:.3f}"
                if scored.doubt_threshold is not None
                else ""
            )
            boxes = _box_count(len(scored.boxes)) if classifier.checkpoint.heat else ""
            typer.echo(
                f"{path}: {_answer(scored.verdict, scored.label)} (p={scored.probability:.3f}, "
                f"threshold {scored.threshold:.3f}{doubt}{region}){boxes}"
            )
    return failed


@app.command()
def results(
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
    limit: Annotated[int, typer.Option(min=1, help="newest N images")] = 50,
    status: Annotated[str | None, typer.Option(help="queued|processing|done|failed")] = None,
    data_dir: DataOpt = None,
    database_url: DbOpt = None,
) -> None:
    """List stored images and their latest prediction, newest first."""
    from db import exports, queries
    from db.migrate import upgrade
    from db.models import ImageStatus, as_utc
    from db.session import make_engine, make_session_factory

    if status is not None and status not in {s.value for s in ImageStatus}:
        raise UserError(
            f"unknown status {status!r}; choose one of {', '.join(s.value for s in ImageStatus)}"
        )
    settings = build_settings(data_dir=data_dir, database_url=database_url)
    _require_stored_data(settings)
    upgrade(settings.resolved_database_url)
    factory = make_session_factory(make_engine(settings.resolved_database_url))
    with factory() as session:
        images = queries.list_images(session=session, limit=limit, status=status)
        duplicates = queries.duplicates_of(session=session, image_ids=[i.id for i in images])
        for image in images:
            prediction = queries.latest_prediction(image)
            sent = next(
                (
                    e
                    for e in exports.for_image(session=session, image_id=image.id)
                    if prediction and e.prediction_id == prediction.id
                ),
                None,
            )
            record = {
                "id": image.id,
                "path": image.filename,
                "sha256": image.sha256,
                "source": image.source,
                "status": image.status,
                "label": prediction.label if prediction else None,
                "probability": prediction.probability if prediction else None,
                "threshold": prediction.threshold if prediction else None,
                "model_version": prediction.model_version if prediction else None,
                "threshold_source": prediction.threshold_source if prediction else None,
                "region": prediction.region if prediction else None,
                "region_probability": prediction.region_probability if prediction else None,
                "region_disagrees": prediction.region_disagrees if prediction else None,
                "verdict": prediction.verdict if prediction else None,
                "doubt_threshold": prediction.doubt_threshold if prediction else None,
                "boxes": (prediction.boxes or []) if prediction else None,
                "body_part": image.body_part,
                "error": image.error,
                "warning": image.warning,
                "received_at": as_utc(image.received_at).isoformat(),
                "study_uid": image.study_uid,
                # the latest prediction's results on their way to PACS (DICOM images only)
                "pacs": {"state": sent.state, "attempts": sent.attempts, "error": sent.error}
                if sent
                else None,
                # the same bytes received later under other names: recorded, not scored again
                "duplicates": [
                    {"path": d.filename, "received_at": as_utc(d.received_at).isoformat()}
                    for d in duplicates.get(image.id, [])
                ],
            }
            if as_json:
                typer.echo(json.dumps(record))
            else:
                answer = (
                    _answer(prediction.verdict, prediction.label)
                    + f" p={prediction.probability:.3f}"
                    + (f" {prediction.region}" if prediction.region else "")
                    + ("" if prediction.boxes is None else _box_count(len(prediction.boxes)))
                    if prediction
                    else (image.error or "")
                )
                also = [d.filename for d in duplicates.get(image.id, [])]
                if also:
                    answer += f" (also received as: {', '.join(also)})"
                # one line per image, whatever characters a file name holds
                line = f"{image.id:>6}  {image.status:<10}  {image.filename}  {answer}"
                typer.echo(line.replace("\n", "\\n").replace("\r", "\\r"))
    if not as_json:
        if len(images) == limit:
            typer.echo(f"(the newest {limit} shown; --limit N shows more)")
        typer.echo("Decision support only, not for clinical use.")


def _require_stored_data(settings: Settings) -> None:
    """A command that reads results refuses a data directory that does not exist, rather
    than creating an empty database there and finding nothing (a mistyped --data-dir)."""
    if settings.database_url is None and not settings.data_dir.is_dir():
        raise UserError(
            f"no data directory at {settings.data_dir.resolve()}: nothing has been stored there "
            "(check --data-dir or FRACTURE_DATA_DIR; `fracture up` creates it)"
        )


def _box_count(count: int) -> str:
    return f", {count} box" if count == 1 else f", {count} boxes"


def _answer(verdict: str | None, label: str) -> str:
    """The verdict in readers' words (Fracture, Doubt, No fracture)."""
    from db.models import Verdict
    from db.queries import verdict_of_label

    return (Verdict(verdict) if verdict else verdict_of_label(label)).display


@app.command()
def bench(
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    images: Annotated[
        Path | None,
        typer.Option(help="folder of images in any format the pipeline reads (default: samples)"),
    ] = None,
    realistic: Annotated[
        bool,
        typer.Option(
            "--realistic",
            help="hospital-size files made from the samples (3,000 px 12-bit DICOM, JPEG 2000, "
            "2,500 px 16-bit PNG), and the small samples through the pipeline in the same run",
        ),
    ] = False,
    formats: Annotated[
        str, typer.Option(help="with --realistic: a comma-separated mix of dicom, dicom-j2k, png16")
    ] = "dicom,dicom-j2k,png16",
    n: Annotated[
        int | None,
        typer.Option(min=1, help="images, cycled from the folder [default: 1024; 128 realistic]"),
    ] = None,
    device: DeviceOpt = None,
    runtime: Annotated[
        str | None, typer.Option(help="auto | torch | onnx [FRACTURE_RUNTIME]")
    ] = None,
    model: ModelOpt = None,
    batch_size: Annotated[int | None, typer.Option(help="[FRACTURE_BATCH_SIZE]")] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="worker processes, as `fracture up` starts [FRACTURE_WORKERS]"),
    ] = None,
    heatmaps: Annotated[
        str | None, typer.Option(help="positive | all | none [FRACTURE_HEATMAPS]")
    ] = None,
    trickle: Annotated[int, typer.Option(help="files for the 1 file/s latency run (0: skip)")] = 20,
    sweep: Annotated[bool, typer.Option(help="also sweep batch size and flush interval")] = False,
    dicom: Annotated[
        bool,
        typer.Option(
            "--dicom", help="instead: N instances over DICOM (storescu → listener → scored)"
        ),
    ] = False,
    plot: Annotated[Path, typer.Option(help="where the sweep plot goes")] = Path(
        "docs/performance_sweep.png"
    ),
) -> None:
    """Measure model limit, end-to-end pipeline and naive loop throughput in one run."""
    from bench import pipeline as benchmark

    settings = build_settings(
        model_path=model,
        device=device,
        runtime=runtime,
        batch_size=batch_size,
        heatmaps=heatmaps,
        workers=workers,
    )
    setup_logging("WARNING")
    if images is not None and not images.is_dir():
        raise UserError(f"--images must be a folder of radiographs: {images}")
    if images is not None and realistic:
        raise UserError("--images and --realistic are two different input sets: give one")
    mix: tuple[str, ...] = ()
    if realistic:
        from bench.realistic import parse_formats

        try:
            mix = parse_formats(formats)
        except ValueError as exc:
            raise UserError(str(exc)) from exc
    count = n if n is not None else (128 if realistic else 1024)
    if dicom:
        from bench import dicom as dicom_bench

        try:
            found = dicom_bench.run(
                n=count,
                model=settings.resolved_model_path,
                device=settings.device,
                batch_size=settings.batch_size,
            )
        except RuntimeError as exc:
            raise UserError(str(exc)) from exc
        typer.echo(json.dumps(found) if as_json else dicom_bench.table(found))
        return
    try:
        result = benchmark.run(
            images=images,
            n=count,
            device=settings.device,
            runtime=settings.runtime,
            model=settings.resolved_model_path,
            batch_size=settings.batch_size,
            batch_interval_ms=settings.batch_interval_ms,
            heatmaps=settings.heatmaps,
            trickle=trickle,
            sweep=sweep,
            plot=plot if sweep else None,
            realistic=mix,
            workers=settings.workers,
        )
    except (ValueError, RuntimeError) as exc:
        raise UserError(str(exc)) from exc
    typer.echo(json.dumps(result) if as_json else benchmark.table(result))


RESCORE_STATUSES = ("done", "failed")


def _parse_since(text: str) -> datetime:
    """An ISO date or date-time; without an offset it is local time."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        fail(f"--since must be an ISO date (YYYY-MM-DD) or date-time, not {text!r}")
    return moment if moment.tzinfo is not None else moment.astimezone()


def _rescore_broker_url(settings: Settings) -> str:
    """FRACTURE_BROKER_URL, else the private broker of a `fracture up` on this data folder."""
    from worker.broker import URL_FILE

    if settings.broker_url:
        return settings.broker_url
    published = settings.broker_dir / URL_FILE
    if published.is_file():
        return published.read_text().strip()
    raise UserError(
        "FRACTURE_BROKER_URL is not set and no `fracture up` is running on "
        f"{settings.data_dir}: start the pipeline, or point FRACTURE_BROKER_URL at its broker"
    )


@app.command()
def rescore(
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            help="checkpoint to score with, at this same path on every worker host "
            "(default: the workers' configured model [FRACTURE_MODEL_PATH])",
        ),
    ] = None,
    since: SinceOpt = None,
    status: Annotated[
        list[str] | None,
        typer.Option("--status", help="done | failed; repeat for both (default: both)"),
    ] = None,
    dry_run: DryRunOpt = False,
    data_dir: DataOpt = None,
    database_url: DbOpt = None,
) -> None:
    """Score stored images again through the queue; earlier predictions are kept, and images
    this model version has already scored are skipped."""
    statuses = tuple(dict.fromkeys(status or RESCORE_STATUSES))
    if unknown := [s for s in statuses if s not in RESCORE_STATUSES]:
        fail(
            f"unknown --status {unknown[0]!r}; choose from {', '.join(RESCORE_STATUSES)} "
            "(queued and processing images are scored already)"
        )
    since_moment = _parse_since(since) if since is not None else None

    from db import queries
    from db.migrate import upgrade
    from db.session import make_engine, make_session_factory
    from model.checkpoint import CheckpointError
    from model.checkpoint import load as load_checkpoint

    settings = build_settings(data_dir=data_dir, database_url=database_url)
    setup_logging("WARNING")
    checkpoint_path = model.resolve() if model is not None else settings.resolved_model_path
    try:
        version = load_checkpoint(checkpoint_path).version
    except CheckpointError as exc:
        fail(str(exc))
    upgrade(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    try:
        with make_session_factory(engine)() as session:
            ids, already = queries.images_to_rescore(
                session=session, model_version=version, statuses=statuses, since=since_moment
            )
    finally:
        engine.dispose()
    scope = "/".join(statuses) + (f" since {since}" if since else "")
    skipped = f"; {already} already scored by it, skipped"
    if dry_run or not ids:
        verb = "would queue" if dry_run else "queued"
        typer.echo(f"{verb} {len(ids)} {scope} image(s) for model {version}{skipped}")
        return

    from worker import client
    from worker.app import make_celery

    broker_url = _rescore_broker_url(settings)
    celery = make_celery(settings, broker_url)
    try:
        # No path in the message means "your configured model": workers need not share ours.
        sent = client.send_rescore(
            celery,
            ids,
            model_path=str(checkpoint_path) if model is not None else None,
            model_version=version if model is not None else None,
        )
        if not sent:
            raise UserError(
                f"broker unreachable at {broker_url}: nothing (or only part) was queued; "
                "run the same command again once it is up"
            )
        waiting = "" if client.live_workers(celery) else " (no worker answered yet: they wait)"
    finally:
        celery.close()
    typer.echo(f"queued {len(ids)} {scope} image(s) for model {version}{skipped}{waiting}")


@app.command()
def retry(
    reason: Annotated[
        str | None, typer.Option(help="only failed images whose error contains this text")
    ] = None,
    since: SinceOpt = None,
    dry_run: DryRunOpt = False,
    data_dir: DataOpt = None,
    database_url: DbOpt = None,
) -> None:
    """Queue failed images again (e.g. a file that was moved out and back, or a decoder fixed
    since): their error and attempts are cleared and the workers score them."""
    from db import queries
    from db.migrate import upgrade
    from db.session import make_engine, make_session_factory, transaction

    since_moment = _parse_since(since) if since is not None else None
    settings = build_settings(data_dir=data_dir, database_url=database_url)
    setup_logging("WARNING")
    upgrade(settings.resolved_database_url)
    engine = make_engine(settings.resolved_database_url)
    factory = make_session_factory(engine)
    scope = "failed" + (f" ({reason!r})" if reason else "") + (f" since {since}" if since else "")
    try:
        with factory() as session:
            ids = queries.images_to_retry(session=session, reason=reason, since=since_moment)
        if dry_run or not ids:
            typer.echo(f"{'would queue' if dry_run else 'queued'} {len(ids)} {scope} image(s)")
            return
        from worker import client
        from worker.app import make_celery

        broker_url = _rescore_broker_url(settings)
        with transaction(factory) as session:
            queued = queries.requeue(session=session, image_ids=ids)
        celery = make_celery(settings, broker_url)
        try:
            # Rows left unsent (broker down) are sent by the watcher's sweeper.
            sent = client.enqueue(celery, factory, ids)
        finally:
            celery.close()
    finally:
        engine.dispose()
    later = "" if sent else " (broker unreachable: the sweeper sends them once it is up)"
    typer.echo(f"queued {queued} {scope} image(s){later}")


@db_app.command("upgrade")
def db_upgrade(data_dir: DataOpt = None, database_url: DbOpt = None) -> None:
    """Apply all migrations to the configured database."""
    from db.migrate import upgrade

    settings = build_settings(data_dir=data_dir, database_url=database_url)
    setup_logging(settings.log_level, settings.log_format, "migrate")
    upgrade(settings.resolved_database_url)
    typer.echo("database schema is up to date")


model_commands.register(app)

if __name__ == "__main__":
    main()
