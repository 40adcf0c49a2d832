"""The node's HTTP face: a QuartTrio app with the REST API, health, OpenAPI, /metrics,
auth and the web console (`/console`, see `web.console`).

Rules of this module:
- `create_app` builds the app from a `call` into the node's Broker and an optional
  bearer token; nothing here imports an actor or storage.
- With a token, every route but `/healthz`, `/readyz` and the console's (which log in
  with the token and keep a session cookie) needs `Authorization: Bearer <token>`,
  compared in constant time; the token never appears in a log line or a response.
  Health answers say only "ok", "ready" or "unavailable" (`/readyz` asks storage,
  through the Broker, for the live nodes and drops the answer).
- Any failure becomes an RFC 9457 problem document; a 5xx never carries a traceback.
"""

from __future__ import annotations

import hmac
import json
import logging
from pathlib import Path
from typing import Any, Final

from quart import Response, request
from quart import json as qjson
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from gotask._job_metrics import JobMetrics
from gotask._protocol import ListNodes
from gotask.runtime.world import World, real_world
from gotask.web._problems import PROBLEM_TYPE, problem, problem_for
from gotask.web.api import BODY_MAX, Call, api_blueprint
from gotask.web.console import console_blueprint
from gotask.web.metrics import Metrics

__all__ = ["OPENAPI_PATH", "create_app", "openapi_document"]

log = logging.getLogger("gotask.http")

#: The OpenAPI document, shipped in the package; docs/openapi.json is a copy of it.
OPENAPI_PATH: Final = Path(__file__).with_name("openapi.json")
#: How long `/readyz` waits for storage (through the Broker) to answer.
READY_TIMEOUT_S: Final = 5.0
_OPEN_PATHS: Final = frozenset({"/healthz", "/readyz"})


def openapi_document() -> dict[str, Any]:
    """The API's OpenAPI 3.1 document."""
    doc: dict[str, Any] = json.loads(OPENAPI_PATH.read_text())
    return doc


def create_app(call: Call, token: bytes | None, jobs: JobMetrics | None = None, *,
               world: World | None = None, tls: bool = False) -> QuartTrio:
    """The HTTP app of one node.

    Args:
        call: sends one client-protocol request to the node's Broker.
        token: the bearer token (None: open, on loopback only).
        jobs: the node's job-event counts, for `/metrics`.
        world: the node's clock and random source (for the console's sessions).
        tls: whether the listener serves HTTPS (the session cookie is then Secure).
    """
    app = QuartTrio("gotask.web")
    app.config["MAX_CONTENT_LENGTH"] = BODY_MAX
    app.config["PROPAGATE_EXCEPTIONS"] = False
    app.register_blueprint(api_blueprint(call))
    app.register_blueprint(console_blueprint(app, call, token, world or real_world(), tls))
    _add_auth(app, token)
    _add_meta_routes(app, call, Metrics(call, jobs))
    _add_error_handlers(app)
    return app


def _add_auth(app: QuartTrio, token: bytes | None) -> None:
    if token is None:
        return
    expected = b"Bearer " + token

    @app.before_request
    async def check_token() -> Response | None:
        if request.path in _OPEN_PATHS or _is_console(request.path):
            return None
        given = request.headers.get("Authorization", "").encode("utf-8", "replace")
        if hmac.compare_digest(given, expected):
            return None
        response = _problem(401, "AuthenticationError", "a valid bearer token is required")
        response.headers["WWW-Authenticate"] = 'Bearer realm="gotask"'
        response.headers["Connection"] = "close"  # its body stays unread: do not reuse
        return response


def _is_console(path: str) -> bool:
    return path in ("/", "/console") or path.startswith("/console/")


def _add_meta_routes(app: QuartTrio, call: Call, metrics: Metrics) -> None:
    @app.get("/metrics")
    async def metrics_route() -> Any:
        return await metrics.scrape()

    @app.get("/healthz")
    async def healthz() -> Any:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Any:
        try:
            await call(ListNodes(), READY_TIMEOUT_S)
        except Exception:  # any failure to reach storage means "not ready"
            return {"status": "unavailable"}, 503
        return {"status": "ready"}

    @app.get("/api/v1/openapi.json")
    async def openapi() -> Any:
        return openapi_document()


def _add_error_handlers(app: QuartTrio) -> None:
    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        # A body left unread on a keep-alive connection stalls the client's next request
        # (schemathesis found it): read it (at most BODY_MAX), or close a 413's connection.
        if status != 413:
            await request.get_data()
        response = _problem(status, (exc.name or "HTTPError").replace(" ", ""),
                            exc.description or "")
        if status == 413:
            response.headers["Connection"] = "close"
        return response

    @app.errorhandler(Exception)
    async def failure(exc: Exception) -> Response:
        status, doc = problem_for(exc)
        if status >= 500:
            log.warning("HTTP %s %s failed: %s", request.method, request.path, doc["detail"])
        return Response(qjson.dumps(doc), status=status, content_type=PROBLEM_TYPE)


def _problem(status: int, name: str, detail: str) -> Response:
    return Response(qjson.dumps(problem(status, name, detail)), status=status,
                    content_type=PROBLEM_TYPE)
