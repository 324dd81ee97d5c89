"""bot reflections: the insights a bot drew from its memories (long-term memory)

Revision ID: 0008_bot_reflections
Revises: 0007_world_events
Create Date: 2026-12-05 12:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_bot_reflections"
down_revision: str | None = "0007_world_events"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "bot_reflections",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("bot_id", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("importance", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["bot_id"], ["bots.id"], ondelete="CASCADE",
                                name="fk_bot_reflections_bot_id_bots"),
        sa.PrimaryKeyConstraint("id", name="pk_bot_reflections"),
    )
    op.create_index("ix_bot_reflections_bot_created", "bot_reflections",
                    ["bot_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_bot_reflections_bot_created", table_name="bot_reflections")
    op.drop_table("bot_reflections")
