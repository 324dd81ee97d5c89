"""chat members as Telegram reports them, and a chat's id before its migration

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 21:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("chats") as batch:
        batch.add_column(sa.Column("migrated_from_telegram_chat_id", sa.BigInteger(),
                                   nullable=True))
        batch.create_unique_constraint("uq_chats_migrated_from_telegram_chat_id",
                                       ["migrated_from_telegram_chat_id"])
    op.create_table(
        "chat_members",
        sa.Column("chat_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("bot_id", sa.Integer(), nullable=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("can_send", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.String(255), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["chat_id"], ["chats.id"], ondelete="CASCADE",
                                name="fk_chat_members_chat_id_chats"),
        sa.ForeignKeyConstraint(["bot_id"], ["bots.id"], ondelete="CASCADE",
                                name="fk_chat_members_bot_id_bots"),
        sa.PrimaryKeyConstraint("chat_id", "user_id", name="pk_chat_members"),
    )
    op.create_index("ix_chat_members_bot_id", "chat_members", ["bot_id"])


def downgrade() -> None:
    op.drop_index("ix_chat_members_bot_id", table_name="chat_members")
    op.drop_table("chat_members")
    with op.batch_alter_table("chats") as batch:
        batch.drop_constraint("uq_chats_migrated_from_telegram_chat_id", type_="unique")
        batch.drop_column("migrated_from_telegram_chat_id")
