"""The operations console: a web UI the hub serves at ``/ui`` (issue 12, ADR 0013).

Server-rendered pages (Jinja2) made live with htmx, a uPlot chart, all files
in the package (nothing fetched at run time). Operators sign in with an API
token or a one-time link (``roadside hub ui-link NAME``); the token's scopes
decide what each page shows and what the hub accepts.

=================  ==========================================================
``web``            the console's state, sessions in use, CSRF, headers
``pages``          the routes: sign-in, pages, operator actions
``views``          what each page shows, from the registry and the store
``sessions``       session rules (expiry, idle timeout, CSRF token): pure
``links``          signed one-time sign-in links: pure, plus the key file
``assets``         static files under content-hashed URLs; the vendor manifest
=================  ==========================================================
"""

from __future__ import annotations

from roadside.cloud.console.web import install_console

__all__ = ["install_console"]
