"""token and user lifecycle: token scope and expiry, revocation time, credentials versions

API tokens get a ``scope`` (``read`` or ``admin``; existing tokens were admin-only, so
``admin``), an ``expires_at`` (existing tokens never expired: they get 90 days from the
upgrade), a ``revoked_at`` and an index on ``user_id``. Users, sessions and tokens get a
``credentials_version`` (0): a password change moves the user's on, which ends every
session and token issued under the old one.

Revision ID: 0009_token_and_user_lifecycle
Revises: 0008_bot_reflections
Create Date: 2026-12-06 12:00:00
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import sqlalchemy as sa
from alembic import op

from backend.db.types import UTCDateTime, utcnow

revision: str = "0009_token_and_user_lifecycle"
down_revision: str | None = "0008_bot_reflections"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Days an existing (until now never-expiring) token keeps working after the upgrade.
LEGACY_TOKEN_DAYS = 90


def _version() -> sa.Column[int]:
    return sa.Column("credentials_version", sa.Integer(), nullable=False, server_default="0")


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(_version())
    with op.batch_alter_table("api_sessions") as batch:
        batch.add_column(_version())
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("scope", sa.String(8), nullable=False,
                                   server_default="admin"))
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(_version())
    until = sa.bindparam("until", utcnow() + timedelta(days=LEGACY_TOKEN_DAYS),
                         type_=UTCDateTime())
    op.execute(sa.text("UPDATE api_tokens SET expires_at = :until WHERE expires_at IS NULL")
               .bindparams(until))
    with op.batch_alter_table("api_tokens") as batch:
        batch.alter_column("expires_at", existing_type=sa.DateTime(timezone=True),
                           nullable=False)
        batch.create_check_constraint(op.f("ck_api_tokens_scope_known"),
                                      "scope IN ('read', 'admin')")
        batch.create_index("ix_api_tokens_user", ["user_id"])


def downgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_index("ix_api_tokens_user")
        batch.drop_constraint(op.f("ck_api_tokens_scope_known"), type_="check")
        batch.drop_column("credentials_version")
        batch.drop_column("revoked_at")
        batch.drop_column("expires_at")
        batch.drop_column("scope")
    with op.batch_alter_table("api_sessions") as batch:
        batch.drop_column("credentials_version")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("credentials_version")
