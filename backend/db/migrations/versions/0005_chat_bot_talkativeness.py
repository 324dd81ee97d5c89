"""a bot's talkativeness per chat (chat_bots.talkativeness, NULL: the persona's)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 15:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("chat_bots") as batch:
        batch.add_column(sa.Column("talkativeness", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("chat_bots") as batch:
        batch.drop_column("talkativeness")
