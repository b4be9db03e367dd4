"""browse indexes: the dashboard sorts by file name and charts positives per day quickly

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 07:20:00.000000
"""

from collections.abc import Sequence

from alembic import op


revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.create_index("ix_images_filename_id", ["filename", "id"], unique=False)
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_predictions_created_at_label", ["created_at", "label"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.drop_index("ix_predictions_created_at_label")
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_index("ix_images_filename_id")
