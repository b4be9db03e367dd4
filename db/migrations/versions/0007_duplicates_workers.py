"""duplicates (files that arrived under another name with a stored image's bytes); workers
and images.claimed_by (whose heartbeat stopped: its images are re-sent at once)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 13:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "duplicates",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "image_id", sa.Integer(), sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("filename", sa.Text(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_duplicates_image_id", "duplicates", ["image_id"])
    op.create_table(
        "workers",
        sa.Column("name", sa.String(length=200), primary_key=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.add_column("images", sa.Column("claimed_by", sa.String(length=200), nullable=True))


def downgrade() -> None:
    op.drop_column("images", "claimed_by")
    op.drop_table("workers")
    op.drop_index("ix_duplicates_image_id", table_name="duplicates")
    op.drop_table("duplicates")
