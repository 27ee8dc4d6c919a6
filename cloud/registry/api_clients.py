"""API clients of the hub (city systems): bearer tokens, kept only as hashes, and their scopes."""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError as SqlIntegrityError
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from roadside.cloud.registry.records import DEFAULT_ACTOR, SCOPES, TOKEN_PREFIX, ApiClient, token_hash
from roadside.cloud.registry.tables import ApiClientRow
from roadside.cloud.registry.unit_of_work import UnitOfWork, audit_in
from roadside.shared.errors import ConfigError, TransportError
from roadside.shared.topics import check_name


@dataclass(frozen=True, slots=True)
class ApiClientRecord:
    """An API client as an operator sees it (never its token)."""

    client: ApiClient
    revoked: bool
    created_at: datetime


class ApiClients:
    """Create API clients and authenticate their tokens."""

    def __init__(self, unit: UnitOfWork) -> None:
        self._unit = unit

    def create(
        self, name: str, scopes: Iterable[str], department: str = "", *, actor: str = DEFAULT_ACTOR
    ) -> str:
        """Create a client and return its token; only a hash of the token is kept (and never audited)."""
        check_name(name, "API client name")
        wanted = frozenset(scopes)
        unknown = wanted - SCOPES
        if unknown or not wanted:
            raise ConfigError(f"unknown or empty scopes {sorted(unknown)}; choose from {sorted(SCOPES)}")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = datetime.now(UTC)

        def change(session: Session) -> None:
            if session.get(ApiClientRow, name) is not None:
                raise ConfigError(f"API client {name!r} already exists")
            session.add(
                ApiClientRow(
                    name=name,
                    department=department,
                    token_sha256=token_hash(token),
                    scopes=",".join(sorted(wanted)),
                    revoked=False,
                    created_at=now,
                )
            )
            session.flush()
            details = {"department": department, "scopes": sorted(wanted)}
            audit_in(session, actor, "apiclient.create", name, details, now)

        try:
            self._unit.write(change)
        except SqlIntegrityError as exc:
            # Another hub created the same name between our check and our insert.
            raise ConfigError(f"API client {name!r} already exists") from exc
        return token

    def authenticate(self, token: str) -> ApiClient | None:
        """The client a bearer token belongs to, or ``None``."""
        if not token.startswith(TOKEN_PREFIX):
            return None
        digest = token_hash(token)
        try:
            with self._unit.read() as session:
                row = session.scalars(select(ApiClientRow).where(ApiClientRow.token_sha256 == digest)).first()
        except OperationalError as exc:
            raise TransportError(f"registry database unreachable: {exc.orig}") from exc
        # The lookup is by hash; compare again in constant time for good measure.
        if row is None or row.revoked or not hmac.compare_digest(row.token_sha256, digest):
            return None
        return ApiClient(row.name, row.department, frozenset(row.scopes.split(",")))

    def get(self, name: str) -> ApiClient | None:
        """The active (not revoked) client of this name, or ``None``."""
        try:
            with self._unit.read() as session:
                row = session.get(ApiClientRow, name)
        except OperationalError as exc:
            raise TransportError(f"registry database unreachable: {exc.orig}") from exc
        if row is None or row.revoked:
            return None
        return ApiClient(row.name, row.department, frozenset(row.scopes.split(",")))

    def list(self) -> list[ApiClientRecord]:
        """Every client, revoked ones included, by name."""
        try:
            with self._unit.read() as session:
                rows = session.scalars(select(ApiClientRow).order_by(ApiClientRow.name)).all()
        except OperationalError as exc:
            raise TransportError(f"registry database unreachable: {exc.orig}") from exc
        return [
            ApiClientRecord(
                ApiClient(r.name, r.department, frozenset(r.scopes.split(","))),
                r.revoked,
                r.created_at if r.created_at.tzinfo else r.created_at.replace(tzinfo=UTC),
            )
            for r in rows
        ]

    def revoke(self, name: str, *, actor: str = DEFAULT_ACTOR) -> None:
        """Revoke a client: its token stops working at once (the row stays, for the audit trail)."""
        now = datetime.now(UTC)

        def change(session: Session) -> None:
            row = session.get(ApiClientRow, name)
            if row is None:
                raise ConfigError(f"API client {name!r} does not exist")
            if row.revoked:
                raise ConfigError(f"API client {name!r} is already revoked")
            row.revoked = True
            session.flush()
            audit_in(session, actor, "apiclient.revoke", name, {}, now)

        self._unit.write(change)
