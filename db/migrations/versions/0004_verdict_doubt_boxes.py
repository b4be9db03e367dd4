"""verdict, doubt threshold and boxes: three answers and where the fracture is, per prediction

Existing rows get the verdict their label implies (a model of that time had one operating
point: "fracture" or "no_fracture"); their doubt threshold and boxes stay NULL.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("verdict", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("doubt_threshold", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("boxes", sa.JSON(), nullable=True))
    predictions = sa.table("predictions", sa.column("label", sa.String), sa.column("verdict"))
    op.execute(
        predictions.update()
        .where(predictions.c.verdict.is_(None))
        .values(
            verdict=sa.case(
                (predictions.c.label == "fractured", "fracture"), else_="no_fracture"
            )
        )
    )
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.create_index("ix_predictions_verdict", ["verdict"], unique=False)


def downgrade() -> None:
    # Dropping columns would make batch mode copy the table on SQLite, and dropping the old
    # table there deletes every review through ON DELETE CASCADE; SQLite ≥ 3.35 drops a column
    # in place.
    with op.batch_alter_table("predictions", schema=None, recreate="never") as batch_op:
        batch_op.drop_index("ix_predictions_verdict")
        batch_op.drop_column("boxes")
        batch_op.drop_column("doubt_threshold")
        batch_op.drop_column("verdict")
