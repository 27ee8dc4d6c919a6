"""The console's plumbing: its state on the app, who is signed in, CSRF, headers, templates.

:func:`install_console` mounts the console on the hub's FastAPI app (built by
:func:`roadside.cloud.api.app.create_app`) at ``/ui``. It reads the same
``app.state.resources`` the API's routes read (the registry, the store, the
live feed, the hub's hooks): the pages call the functions the API calls, never
the API over HTTP.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Protocol

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from prometheus_client import CollectorRegistry

from roadside.cloud.api.deps import ApiResources, get_resources
from roadside.cloud.api.rejections import REJECTED_COUNTER, counter_totals
from roadside.cloud.console.assets import Assets
from roadside.cloud.console.links import SpentLinks
from roadside.cloud.console.sessions import Session, SessionBackend, SessionPolicy, SessionStore
from roadside.cloud.registry import ApiClient

if TYPE_CHECKING:  # the dataset package imports OpenCV; the console only names its record type
    from roadside.cloud.dataset.trust import InboxEntry

logger = logging.getLogger(__name__)

PREFIX: Final = "/ui"
SESSION_COOKIE: Final = "rs_session"
LOGIN_CSRF_COOKIE: Final = "rs_login_csrf"
CSRF_HEADER: Final = "x-csrf-token"
CSRF_FIELD: Final = "csrf_token"
# A session kept elsewhere records its last use to the minute (to a tenth of a short idle timeout).
REGISTRY_TOUCH_S: Final = 60.0
TEMPLATES_DIR: Final = Path(__file__).parent / "templates"
# No inline script or style anywhere: every script is a hashed file from /ui/static.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'"
)
PAGE_HEADERS: Final = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # Sign-in links carry their token in the path: never send it to another site (same-origin, not
    # no-referrer: with no-referrer Chromium sends "Origin: null" on forms, which the CSRF check refuses).
    "Referrer-Policy": "same-origin",
}


class IngestRate:
    """Messages per second, from the ingest counters sampled as pages are drawn (a sliding minute)."""

    def __init__(self, metrics: CollectorRegistry, clock: Callable[[], float] = time.monotonic) -> None:
        self._metrics = metrics
        self._clock = clock
        self._samples: deque[tuple[float, float]] = deque(maxlen=120)

    def total(self) -> float:
        return sum(counter_totals(self._metrics, "roadside_ingest_messages").values())

    def per_s(self) -> float | None:
        """The rate over the last minute or so; ``None`` until two samples a few seconds apart exist."""
        now, total = self._clock(), self.total()
        self._samples.append((now, total))
        while len(self._samples) > 2 and now - self._samples[1][0] >= 60:
            self._samples.popleft()
        first_t, first_total = self._samples[0]
        if now - first_t < 2:
            return None
        return max(0.0, (total - first_total) / (now - first_t))

    def rejected_by_reason(self) -> dict[str, float]:
        return {k: v for k, v in counter_totals(self._metrics, REJECTED_COUNTER).items() if v > 0}


class SampleImages(Protocol):
    """Where the hub keeps the redacted sample images devices upload (``cloud.dataset.DatasetStore``)."""

    def newest_images(
        self, device_ids: Collection[str] | None = None, limit: int = 1
    ) -> list[InboxEntry]: ...

    def image(self, sha256: str) -> bytes | None: ...


@dataclass(slots=True)
class ConsoleState:
    sessions: SessionStore
    assets: Assets
    templates: Environment
    link_key: bytes | None
    spent_links: SpentLinks = field(default_factory=SpentLinks)
    ingest_rate: IngestRate | None = None
    clock: Callable[[], float] = time.time
    samples: SampleImages | None = None


@dataclass(frozen=True, slots=True)
class Operator:
    """Who is signed in: the API client (scopes fresh from the registry) and their session."""

    client: ApiClient
    session: Session
    session_id: str

    def can(self, scope: str) -> bool:
        return self.client.allows(scope)

    @property
    def actor(self) -> str:
        """How the audit log names a change made in the console."""
        return f"console:{self.client.name}"


class SignInRequiredError(Exception):
    """No live session: pages send the browser to sign in, fragments tell htmx to."""


class ForbiddenError(Exception):
    """The operator's scopes do not allow this, or the request failed its CSRF check."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def get_console(request: Request) -> ConsoleState:
    state = request.app.state.console
    assert isinstance(state, ConsoleState)
    return state


ConsoleDep = Annotated[ConsoleState, Depends(get_console)]
ResourcesDep = Annotated[ApiResources, Depends(get_resources)]


def current_operator(request: Request, console: ConsoleDep, resources: ResourcesDep) -> Operator:
    """The signed-in operator; their API client is looked up again on every request (revocation ends it)."""
    session_id = request.cookies.get(SESSION_COOKIE)
    session = console.sessions.touch(session_id)
    if session is None or session_id is None:
        raise SignInRequiredError
    client = resources.registry.api_clients.get(session.client_name)
    if client is None:
        logger.info("console session of %s ended: its API client is revoked", session.client_name)
        console.sessions.close(session_id)
        raise SignInRequiredError
    return Operator(client, session, session_id)


OperatorDep = Annotated[Operator, Depends(current_operator)]


def require(operator: Operator, scope: str) -> None:
    if not operator.can(scope):
        logger.info("console: %s lacks %s", operator.client.name, scope)
        raise ForbiddenError(f"Your API client ({operator.client.name}) lacks the {scope!r} scope.")


def check_csrf(request: Request, operator: Operator, form: Mapping[str, Any]) -> None:
    """Refuse a state-changing request whose CSRF token (header or form field) is not the session's,
    or that a browser says comes from another origin."""
    origin = request.headers.get("origin")
    if origin is not None and origin != _origin(request):
        logger.warning(
            "console: refused a cross-origin %s %s from %s", request.method, request.url.path, origin
        )
        raise ForbiddenError("The request came from another site.")
    offered = request.headers.get(CSRF_HEADER) or form.get(CSRF_FIELD)
    if not operator.session.csrf_matches(offered if isinstance(offered, str) else None):
        logger.warning("console: refused %s %s without a valid CSRF token", request.method, request.url.path)
        raise ForbiddenError("The form had no valid CSRF token; reload the page and try again.")


def _origin(request: Request) -> str:
    return f"{request.url.scheme}://{request.headers.get('host', request.url.netloc)}"


def set_session_cookie(request: Request, response: Response, session_id: str, policy: SessionPolicy) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        session_id,
        max_age=int(policy.lifetime_s),
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def render(
    request: Request,
    name: str,
    context: Mapping[str, Any],
    *,
    operator: Operator | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    """A page (or fragment) from its template, with the console's security headers."""
    console = get_console(request)
    template = console.templates.get_template(name)
    html = template.render(
        request=request,
        operator=operator,
        csrf_token=operator.session.csrf_token if operator else "",
        asset=lambda n: f"{PREFIX}/static/{console.assets.url_path(n)}",
        now=datetime.now(UTC),
        **context,
    )
    return HTMLResponse(html, status_code=status_code, headers=PAGE_HEADERS)


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers=PAGE_HEADERS)


def _isoformat(value: datetime | None) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds") if value is not None else ""


def make_templates() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["iso"] = _isoformat
    env.filters["epoch"] = lambda seconds: datetime.fromtimestamp(float(seconds), UTC)
    return env


def install_console(
    app: FastAPI,
    *,
    link_key: bytes | None = None,
    policy: SessionPolicy | None = None,
    clock: Callable[[], float] = time.time,
    samples: SampleImages | None = None,
    session_backend: SessionBackend | None = None,
) -> ConsoleState:
    """Mount the console at ``/ui`` on an app made by ``create_app``; returns its state.

    ``link_key`` signs one-time sign-in links (``None``: only token sign-in). ``samples`` is where
    the traffic page finds its redacted thumbnail (``None``: no thumbnails). ``session_backend``
    keeps the sessions (``None``: this process's memory; the hub passes the registry's, whose
    last-use times are written at most once a minute per session).
    """
    from roadside.cloud.console import pages

    resources = app.state.resources
    assert isinstance(resources, ApiResources)
    state = ConsoleState(
        sessions=SessionStore(
            policy,
            clock=clock,
            backend=session_backend,
            touch_every_s=min(REGISTRY_TOUCH_S, (policy or SessionPolicy()).idle_s / 10)
            if session_backend
            else 0.0,
        ),
        assets=Assets(),
        templates=make_templates(),
        link_key=link_key,
        ingest_rate=IngestRate(resources.metrics_registry),
        clock=clock,
        samples=samples,
    )
    app.state.console = state
    app.include_router(pages.router)
    app.add_exception_handler(SignInRequiredError, pages.sign_in_required)
    app.add_exception_handler(ForbiddenError, pages.forbidden)
    logger.info("console at %s", PREFIX)
    return state
