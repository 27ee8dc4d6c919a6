"""The registry as Roadside 0.1 made it with ``create_all``: devices, device keys, API clients.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Constraints stay unnamed, exactly as ``create_all`` left them, so a database
made before migrations existed is this revision (``Registry.create_schema``
stamps it so).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "devices",
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("site", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("enrolled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("device_id"),
    )
    op.create_index("ix_devices_site", "devices", ["site"])
    op.create_table(
        "api_clients",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("department", sa.String(64), nullable=False),
        sa.Column("token_sha256", sa.String(64), nullable=False),
        sa.Column("scopes", sa.String(256), nullable=False),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
        sa.UniqueConstraint("token_sha256"),
    )
    op.create_table(
        "device_keys",
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("kid", sa.String(32), nullable=False),
        sa.Column("x25519", sa.String(64), nullable=False),
        sa.Column("ed25519", sa.String(64), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("device_id", "kid"),
        sa.ForeignKeyConstraint(["device_id"], ["devices.device_id"]),
    )


def downgrade() -> None:
    op.drop_table("device_keys")
    op.drop_table("api_clients")
    op.drop_index("ix_devices_site", table_name="devices")
    op.drop_table("devices")
