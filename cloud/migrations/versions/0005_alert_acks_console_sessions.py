"""Acknowledged alerts and console sessions (issue 12).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "alert_acks",
        sa.Column("alert_id", sa.String(200), nullable=False),
        sa.Column("acknowledged_by", sa.String(128), nullable=False),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("note", sa.String(512), nullable=False),
        sa.PrimaryKeyConstraint("alert_id"),
    )
    op.create_table(
        "console_sessions",
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("client_name", sa.String(64), nullable=False),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("last_used_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("digest"),
    )
    op.create_index("ix_console_sessions_client_name", "console_sessions", ["client_name"])
    op.create_index("ix_console_sessions_last_used_at", "console_sessions", ["last_used_at"])


def downgrade() -> None:
    op.drop_index("ix_console_sessions_last_used_at", table_name="console_sessions")
    op.drop_index("ix_console_sessions_client_name", table_name="console_sessions")
    op.drop_table("console_sessions")
    op.drop_table("alert_acks")
