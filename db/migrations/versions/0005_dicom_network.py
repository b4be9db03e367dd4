"""DICOM network: instance identity on images, and the table of results sent back to PACS

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 09:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN and CREATE INDEX work in place on both databases; a batch copy of
    # `images` on SQLite would cascade-delete its predictions.
    for name in ("study_uid", "series_uid", "sop_instance_uid", "sop_class_uid"):
        op.add_column("images", sa.Column(name, sa.String(length=64), nullable=True))
    op.add_column("images", sa.Column("calling_ae", sa.String(length=16), nullable=True))
    op.create_index("ix_images_study_uid", "images", ["study_uid"], unique=False)
    op.create_index(
        "ix_images_sop_instance_uid", "images", ["sop_instance_uid"], unique=True
    )
    op.create_table(
        "dicom_exports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("prediction_id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("destination", sa.String(length=200), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["prediction_id"], ["predictions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("prediction_id"),
    )
    op.create_index(
        "ix_dicom_exports_state_next", "dicom_exports", ["state", "next_attempt_at"], unique=False
    )
    op.create_index("ix_dicom_exports_image_id", "dicom_exports", ["image_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_dicom_exports_image_id", table_name="dicom_exports")
    op.drop_index("ix_dicom_exports_state_next", table_name="dicom_exports")
    op.drop_table("dicom_exports")
    # In place (SQLite ≥ 3.35): a batch copy of `images` would cascade-delete its predictions.
    with op.batch_alter_table("images", schema=None, recreate="never") as batch_op:
        batch_op.drop_index("ix_images_sop_instance_uid")
        batch_op.drop_index("ix_images_study_uid")
        batch_op.drop_column("calling_ae")
        batch_op.drop_column("sop_class_uid")
        batch_op.drop_column("sop_instance_uid")
        batch_op.drop_column("series_uid")
        batch_op.drop_column("study_uid")
