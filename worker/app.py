"""The Celery application: one factory for senders (watcher, dashboard) and the worker."""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from config import Settings

PREDICT_TASK = "fracture.predict_batch"
UPLOAD_TASK = "fracture.predict_upload"
RESCORE_TASK = "fracture.rescore_batch"
# A heat map the dashboard asks for: on the uploads queue, ahead of bulk work, because someone
# is looking at the record and waiting.
HEATMAP_TASK = "fracture.draw_heatmap"
BULK_QUEUE = "fracture"
UPLOAD_QUEUE = "fracture.uploads"
# Its own queue, so a rescore of the whole history shares the workers with new arrivals
# instead of holding them back.
RESCORE_QUEUE = "fracture.rescore"


def make_celery(settings: Settings, broker_url: str) -> Celery:
    """A Celery app with our queues and delivery guarantees; tasks are bound by the worker."""
    app = Celery("fracture", broker=broker_url)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_queues=[Queue(BULK_QUEUE), Queue(UPLOAD_QUEUE), Queue(RESCORE_QUEUE)],
        task_default_queue=BULK_QUEUE,
        task_routes={
            UPLOAD_TASK: {"queue": UPLOAD_QUEUE},
            HEATMAP_TASK: {"queue": UPLOAD_QUEUE},
            PREDICT_TASK: {"queue": BULK_QUEUE},
            RESCORE_TASK: {"queue": RESCORE_QUEUE},
        },
        # Late acks are safe because every write is idempotent (unique sha256 and
        # unique image + model version); a killed worker's messages come back.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_time_limit=settings.task_time_limit_s,
        worker_prefetch_multiplier=settings.prefetch,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_transport_options={
            # Redis redelivers unacknowledged messages only after this long; the
            # sweeper re-sends stuck images much sooner, so this is the backstop.
            "visibility_timeout": settings.visibility_timeout_s,
            "socket_timeout": 10,
            "socket_connect_timeout": 5,
        },
        broker_pool_limit=4,
        worker_send_task_events=True,
        task_send_sent_event=False,
    )
    return app
