"""The web console (`/console`): server-rendered pages over the client protocol.

Rules of this module:
- Like the REST API, every page sends requests of `gotask._protocol` through `call` and
  renders the replies; it never touches storage or an actor.
- Pages are Jinja templates with autoescaping: every job-supplied string (arguments,
  results, errors, tracebacks, task and queue names) is escaped, never marked safe.
  Scripts are static files (no inline script, see the CSP in `_console_auth`).
- Login, sessions and CSRF are `_console_auth`'s; state-changing routes are in
  `_console_actions`; the websocket and its sampler in `live`.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, Final

import trio
from quart import Blueprint, redirect, render_template, request, session, url_for, websocket
from quart_trio import QuartTrio

from gotask._job import STORED_STATES
from gotask._protocol import CountQueues, GetJobs, ListCron, ListDead, ListJobs, ListNodes
from gotask.runtime.world import World
from gotask.web import _console_auth as auth
from gotask.web._console_actions import action_routes
from gotask.web._json import job_json, nodes_json, queues_json
from gotask.web.api import Call
from gotask.web.live import Live

__all__ = ["PAGE_LIMIT", "console_blueprint"]

#: Jobs on one page of the jobs list.
PAGE_LIMIT: Final = 50


def console_blueprint(app: QuartTrio, call: Call, token: bytes | None, world: World,
                      tls: bool) -> Blueprint:
    """The console's routes; its sampler starts with the app."""
    auth.set_up_sessions(app, token, world, tls)
    live = Live(call, world)

    @app.before_serving
    async def start_sampler() -> None:
        app.add_background_task(live.run)

    bp = Blueprint("console", __name__, url_prefix="/console", template_folder="templates",
                   static_folder="static", static_url_path="/static")
    _guard(bp, token, world)
    _login_routes(bp, token, world)
    _overview_routes(bp, call)
    _job_routes(bp, call)
    action_routes(bp, call)
    _live_route(bp, live, token)
    _add_filters(app, world)

    @app.get("/")
    async def root() -> Any:
        return redirect(url_for("console.overview"))

    return bp


def _guard(bp: Blueprint, token: bytes | None, world: World) -> None:
    @bp.before_request
    async def need_login() -> Any:
        if request.endpoint in ("console.login", "console.static"):
            return None
        if not auth.logged_in(token):
            return redirect(url_for("console.login"))
        if request.method == "POST" and not auth.check_csrf((await request.form).get("csrf")):
            return "the CSRF token is missing or wrong: reload the page", 403
        return None

    @bp.context_processor
    async def page_context() -> dict[str, Any]:
        return {"csrf": auth.csrf_token(world), "login_needed": token is not None}


def _login_routes(bp: Blueprint, token: bytes | None, world: World) -> None:
    @bp.route("/login", methods=["GET", "POST"])
    async def login() -> Any:
        if token is None:
            return redirect(url_for("console.overview"))
        error = None
        if request.method == "POST":
            form = await request.form
            if not auth.check_csrf(form.get("csrf")):
                error = "your login form expired: try again"
            elif auth.token_matches(token, form.get("token", "")):
                auth.log_in(world)
                return redirect(url_for("console.overview"))
            else:
                await trio.sleep(0.5)  # slows guessing down; admission limits do the rest
                error = "that is not the token"
        return await render_template("login.html", error=error), 401 if error else 200

    @bp.post("/logout")
    async def logout() -> Any:
        session.clear()
        return redirect(url_for("console.login"))


def _overview_routes(bp: Blueprint, call: Call) -> None:
    @bp.get("/")
    async def overview() -> Any:
        reply = await call(CountQueues())
        totals: dict[str, int] = {}
        for c in reply.counts:
            totals[c.state] = totals.get(c.state, 0) + c.count
        nodes = nodes_json((await call(ListNodes())).nodes)
        return await render_template("overview.html", totals=totals, nodes=nodes,
                                     queues=queues_json(reply), states=sorted(STORED_STATES))

    @bp.get("/queues")
    async def queues() -> Any:
        return await render_template("queues.html", states=sorted(STORED_STATES),
                                     queues=queues_json(await call(CountQueues())))

    @bp.get("/nodes")
    async def nodes() -> Any:
        return await render_template("nodes.html",
                                     nodes=nodes_json((await call(ListNodes())).nodes))

    @bp.get("/cron")
    async def cron() -> Any:
        return await render_template("cron.html", entries=(await call(ListCron())).entries)


def _job_routes(bp: Blueprint, call: Call) -> None:
    @bp.get("/jobs")
    async def jobs() -> Any:
        find = request.args.get("id", "").strip()
        if find:
            return redirect(url_for("console.job", job_id=find))
        queue, task = request.args.get("queue") or None, request.args.get("task") or None
        state = request.args.get("state") or None
        if state is not None and state not in STORED_STATES:
            state = None
        page = await call(ListJobs(queue, state, PAGE_LIMIT, request.args.get("cursor") or None))
        shown = [job_json(j) for j in page.jobs if task is None or j.task == task]
        return await render_template("jobs.html", jobs=shown, cursor=page.cursor, queue=queue,
                                     state=state, task=task, states=sorted(STORED_STATES),
                                     page_limit=PAGE_LIMIT)

    @bp.get("/jobs/<job_id>")
    async def job(job_id: str) -> Any:
        record = (await call(GetJobs((job_id,)))).jobs[0]
        if record is None:
            return await render_template("missing.html", job_id=job_id), 404
        return await render_template("job.html", job=job_json(record))

    @bp.get("/dlq")
    async def dlq() -> Any:
        queue = request.args.get("queue") or None
        page = await call(ListDead(queue, PAGE_LIMIT, request.args.get("cursor") or None))
        return await render_template("dlq.html", jobs=[job_json(j) for j in page.jobs],
                                     cursor=page.cursor, queue=queue)


def _live_route(bp: Blueprint, live: Live, token: bytes | None) -> None:
    @bp.websocket("/ws")
    async def ws() -> Any:
        if not auth.logged_in(token, ws=True):
            return "login first", 403
        try:
            page = live.open_page(websocket.args.get("job") or None)
        except OverflowError as exc:
            return str(exc), 503
        try:
            await websocket.accept()
            await websocket.send(json.dumps({"history": list(live.history)}))
            while True:
                await websocket.send(json.dumps(await page.next()))
        finally:
            live.close_page(page)


def _add_filters(app: QuartTrio, world: World) -> None:
    @app.template_filter("pretty")
    def pretty(value: Any) -> str:
        return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)

    @app.template_filter("when")
    def when(seconds: float | None) -> str:
        if seconds is None:
            return "-"
        utc = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"{utc} ({_ago(world.wall() - seconds)})"


def _ago(age_s: float) -> str:
    future = age_s < 0
    age_s = abs(age_s)
    text = (f"{age_s:.0f} s" if age_s < 120 else f"{age_s / 60:.0f} min" if age_s < 7200
            else f"{age_s / 3600:.1f} h")
    return f"in {text}" if future else f"{text} ago"
