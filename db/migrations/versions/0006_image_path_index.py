"""index on images.path: a settled file is matched to its unfinished row by path

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 11:10:00.000000
"""

from collections.abc import Sequence

from alembic import op


revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # hash on PostgreSQL: equality is all it serves, and a B-tree refuses paths over ~2.7 KB
    op.create_index("ix_images_path", "images", ["path"], unique=False, postgresql_using="hash")


def downgrade() -> None:
    op.drop_index("ix_images_path", table_name="images")
