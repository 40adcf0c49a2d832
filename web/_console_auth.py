"""The console's session: login with the API token, a signed cookie, CSRF, headers.

Rules of this module:
- With a token, the console asks for it once (`/console/login`) and then keeps a session
  in Quart's signed cookie: HttpOnly, SameSite=Strict, Secure under TLS, 12 hours. The
  signing key is derived from the token (so a session survives a node restart and works
  on every node sharing the token); without a token it comes from the World's random
  source. The token itself is never put in the cookie, a page or a log line.
- Every state-changing console request (POST) carries the session's CSRF token, as the
  form field `csrf` or the header `X-CSRF-Token`; without it the answer is 403 and
  nothing changes. A cross-site request carries no SameSite=Strict cookie, so it has no
  session and cannot know the token.
- Every console answer has a Content-Security-Policy with no inline script, and may not
  be framed.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import timedelta
from typing import Any, Final

from quart import Response, request, session, websocket
from quart.sessions import SecureCookieSessionInterface
from quart_trio import QuartTrio

from gotask.runtime.world import World

__all__ = [
    "CSP",
    "check_csrf",
    "csrf_token",
    "log_in",
    "logged_in",
    "set_up_sessions",
    "token_matches",
]

CSP: Final = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
              "connect-src 'self'; object-src 'none'; base-uri 'none'; "
              "frame-ancestors 'none'; form-action 'self'")
SESSION_HOURS: Final = 12


def set_up_sessions(app: QuartTrio, token: bytes | None, world: World, tls: bool) -> None:
    """Configure the signed session cookie and the console's response headers."""
    if token is not None:
        app.secret_key = hmac.new(token, b"gotask console session", hashlib.sha256).hexdigest()
    else:
        app.secret_key = world.rng.getrandbits(256).to_bytes(32, "big").hex()
    app.session_interface = _ConsoleSessions()
    app.config.update(SESSION_COOKIE_NAME="gotask_console", SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Strict", SESSION_COOKIE_SECURE=tls,
                      SESSION_COOKIE_PATH="/console",
                      PERMANENT_SESSION_LIFETIME=timedelta(hours=SESSION_HOURS))

    @app.after_request
    async def console_headers(response: Response) -> Response:
        if request.path.startswith("/console"):
            response.headers["Content-Security-Policy"] = CSP
            response.headers["X-Content-Type-Options"] = "nosniff"
            response.headers["X-Frame-Options"] = "DENY"
            response.headers["Referrer-Policy"] = "same-origin"
            response.headers.setdefault("Cache-Control", "no-store")
        return response


class _ConsoleSessions(SecureCookieSessionInterface):
    """Sessions for the console's paths only: the REST API, /metrics and health stay
    stateless (no session is opened or saved for them; a session there made schemathesis
    see a request time out)."""

    async def open_session(self, app: Any, request: Any) -> Any:
        if not request.path.startswith("/console"):
            return await self.make_null_session(app)
        return await super().open_session(app, request)


def token_matches(token: bytes, given: str) -> bool:
    """Whether `given` is the token (constant time)."""
    return hmac.compare_digest(given.encode("utf-8", "replace"), token)


def csrf_token(world: World) -> str:
    """The session's CSRF token, made on first use."""
    value = session.get("csrf")
    if not isinstance(value, str):
        value = session["csrf"] = f"{world.rng.getrandbits(192):048x}"
    return value


def log_in(world: World) -> None:
    """Start an authenticated session (with a fresh CSRF token)."""
    session.clear()
    session.permanent = True
    session["auth"] = True
    csrf_token(world)


def logged_in(token: bytes | None, *, ws: bool = False) -> bool:
    """Whether this request (or websocket) may see the console; a websocket opened by a
    page of another origin never may (cross-site websocket hijacking)."""
    if ws and not _same_origin(websocket.headers.get("Origin"), websocket.host):
        return False
    return token is None or session.get("auth") is True


def check_csrf(form_value: str | None) -> bool:
    """Whether a state-changing request carries the session's CSRF token."""
    expected = session.get("csrf")
    given = form_value or request.headers.get("X-CSRF-Token", "")
    return isinstance(expected, str) and hmac.compare_digest(given.encode(), expected.encode())


def _same_origin(origin: str | None, host: str) -> bool:
    if origin is None:
        return True  # not a browser: the cookie alone decides
    return origin.split("://", 1)[-1] == host
