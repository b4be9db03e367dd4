"""images.file_signature (size, times and inode of a file when it was hashed, so the worker
need not hash it again while it is unchanged)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 01:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("images", sa.Column("file_signature", sa.String(length=96), nullable=True))


def downgrade() -> None:
    # In place (SQLite ≥ 3.35): a batch copy of `images` would cascade-delete its predictions.
    with op.batch_alter_table("images", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("file_signature")
