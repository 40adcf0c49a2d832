"""The simulated cluster a scenario drives: worker nodes, client nodes, faults.

Rules of this module:
- The storage node ("store") hosts only the storage actor and never fails. Worker nodes
  are production nodes from `open_server(..., storage=Address("store", "storage"),
  listen=False)`; client nodes host no actors. Every worker is linked to the store and
  to every client through the sim network.
- A member's life is one incarnation of its node, in its own cancel scope: a crash
  cancels the scope (the host vanishes: messages to it are lost, nothing is flushed);
  a graceful stop drains first. A restart is a new node with the same name, a World
  seeded from (run seed, name, life) and, for workers, a fresh App.
- Every fault opens a `Window` (kind, node, start, end) that the checker uses to
  explain duplicate executions; healing closes it. Scenario decisions draw from
  `Sim.rng`, never from a node's World, so adding a fault does not shift node draws.
- A node that fails by itself (an exception escaping `open_server`) is recorded in
  `failures`: the checker reports it as a violation.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from gotask._errors import ActorError
from gotask._messages import STORAGE
from gotask._server import Server, open_server
from gotask.config import NodeConfig
from gotask.runtime import Address, Node, World, open_node, sim_world
from gotask.transports.sim import SimNetwork

from .clients import ClientEnv, OpState, run_client_ops
from .history import Event, Fault, History
from .recorder import STORE, NetListener, RecordingCore, StorageHook
from .workload import CronSpec, TaskEnv, WorkloadSpec, make_app

__all__ = ["STORE", "ClockJumps", "Member", "Sim", "SimSpec", "Window", "derive"]


def derive(seed: int, *parts: object) -> int:
    """A 64-bit seed for one part of a run (a node's life, the network, a client)."""
    text = "/".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


@attrs.frozen
class SimSpec:
    """The shape of one run (durations in seconds)."""

    workers: int = 3
    clients: int = 2
    concurrency: int = 4
    lease_timeout_s: float = 5.0
    heartbeat_s: float = 1.0
    grace_s: float = 2.0
    latency_s: tuple[float, float] = (0.001, 0.005)
    outbound_max: int = 1024
    storage_inbox_max: int = 4096
    skew_s: float = 0.0
    restart_after_s: tuple[float, float] = (1.0, 4.0)
    settle_s: float = 12.0
    workload: WorkloadSpec = attrs.Factory(WorkloadSpec)
    cron: tuple[CronSpec, ...] = ()


@attrs.define
class ClockJumps:
    """How far every wall clock of the run has jumped forward (`Sim.jump_clocks`)."""

    jumped_s: float = 0.0
    #: Every jump: (trio time, seconds).
    log: list[tuple[float, float]] = attrs.Factory(list)

    def world(self, seed: int, skew_s: float) -> World:
        """A simulated World whose wall clock follows the jumps."""
        world = sim_world(seed, skew_s=skew_s)
        base = world.wall
        world.wall = lambda: base() + self.jumped_s
        return world


@attrs.define
class Window:
    """A fault affecting `node` (None: every node) from `start` until `end` (trio time)."""

    kind: str
    node: str | None
    start: float
    end: float = math.inf


@attrs.define(eq=False)
class Member:
    """A worker or client node across its lives."""

    name: str
    kind: str
    skew_s: float
    life: int = 0
    up: bool = False
    starting: bool = False
    finished: bool = False
    node: Node | None = None
    server: Server | None = None
    scope: trio.CancelScope | None = None
    gone: trio.Event = attrs.Factory(trio.Event)


@attrs.define(eq=False)
class Sim:
    """The cluster of one run, and the handles a scenario uses to hurt it."""

    seed: int
    spec: SimSpec
    history: History
    net: SimNetwork
    core: RecordingCore
    store: Node
    nursery: trio.Nursery
    rng: random.Random
    ops: dict[str, list[OpState]]
    workers: dict[str, Member] = attrs.Factory(dict)
    clients: dict[str, Member] = attrs.Factory(dict)
    windows: list[Window] = attrs.Factory(list)
    net_listeners: list[NetListener] = attrs.Factory(list)
    failures: list[str] = attrs.Factory(list)
    stalled: set[str] = attrs.Factory(set)
    peak_in_flight: int = 0
    clocks: ClockJumps = attrs.Factory(ClockJumps)
    _cut: int | None = None

    # -- what scenarios read ---------------------------------------------------------

    def now(self) -> float:
        """Trio's (virtual) time."""
        return trio.current_time()

    def workers_up(self) -> list[str]:
        """Names of the worker nodes that are running, sorted."""
        return sorted(name for name, m in self.workers.items() if m.up)

    def pick_worker(self) -> str | None:
        """A running worker node, chosen by the scenario's generator."""
        up = self.workers_up()
        return self.rng.choice(up) if up else None

    def record(self, kind: str, node: str = "*", detail: str = "") -> None:
        """Add a fault event to the history."""
        self.history.add(Fault(trio.current_time(), node, kind, detail))

    def open_window(self, kind: str, node: str | None) -> None:
        """Start a fault window (closed by `close_windows`)."""
        self.windows.append(Window(kind, node, trio.current_time()))

    def close_windows(self, kind: str, node: str | None = None) -> None:
        """End every open window of `kind` (on `node`, or on any node)."""
        for window in self.windows:
            if window.kind == kind and window.end == math.inf and node in (None, window.node):
                window.end = trio.current_time()

    # -- hooks -----------------------------------------------------------------------

    def on_storage(self, hook: StorageHook) -> None:
        """Call `hook(cmd, reply)` after every storage command, until healed."""
        self.core.hooks.append(hook)

    def on_net(self, listener: NetListener) -> None:
        """Call `listener(kind, info)` on every network event, until healed."""
        self.net_listeners.append(listener)

    def on_event(self, listener: Callable[[Event], None]) -> None:
        """Call `listener(event)` on every history event, until healed."""
        self.history.listeners.append(listener)

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run `fn(*args)` in the background for the rest of the run."""
        self.nursery.start_soon(fn, *args)

    # -- faults ----------------------------------------------------------------------

    def crash(self, name: str, *, restart: bool = True) -> None:
        """Kill a node at once; it comes back after `restart_after_s` if `restart`."""
        member = self._member(name)
        if not member.up or member.scope is None:
            return
        member.up = False
        member.scope.cancel()
        self.record("crash", name, f"life={member.life}")
        self.open_window("crash", name)
        if restart:
            self.nursery.start_soon(self._restart_later, member)

    async def restart(self, name: str) -> None:
        """Start the next life of a node that is down (no-op when it is up)."""
        member = self._member(name)
        if member.up or member.starting:
            return
        member.starting = True
        try:
            await member.gone.wait()
            member.gone = trio.Event()
            member.life += 1
            life = self._worker_life if member.kind == "worker" else self._client_life
            await self.nursery.start(life, member)
        finally:
            member.starting = False
        self.close_windows("crash", name)

    async def stop_gracefully(self, name: str) -> None:
        """Drain a worker (running jobs finish or are released), then stop it."""
        member = self._member(name)
        if not member.up or member.server is None or member.scope is None:
            return
        self.record("drain", name, f"life={member.life}")
        try:
            await member.server.drain()
        except ActorError as exc:  # crashed meanwhile, or drain timed out: stop anyway
            self.record("drain-failed", name, type(exc).__name__)
        member.up = False
        member.scope.cancel()
        self.record("stop", name, f"life={member.life}")
        await member.gone.wait()

    def partition(self, name: str) -> None:
        """Cut a node off from storage (both ways) until `heal`."""
        self.net.partition([name], [STORE])
        self.record("partition", name, "from store")
        self.open_window("partition", name)

    def isolate(self, name: str) -> None:
        """Cut a node off from everyone until `heal`."""
        self.net.isolate(name)
        self.record("isolate", name)
        self.open_window("isolate", name)

    def stall(self, name: str) -> None:
        """Lose every heartbeat `name` sends until `heal`: its jobs run on and their acks
        get through, but its leases expire (a zombie worker)."""
        self.stalled.add(name)
        self.record("stall", name, "heartbeats lost")
        self.open_window("stall", name)

    def jump_clocks(self, seconds: float) -> None:
        """Move every wall clock (storage's and every node's) forward by `seconds`: time
        passes that the cluster does not live through. Only with every worker down, as
        after a whole-cluster outage: storage sees their leases expire at once.

        Raises:
            RuntimeError: a worker is up.
        """
        if self.workers_up():
            raise RuntimeError("jump_clocks with workers up: their leases would expire")
        self.clocks.jumped_s += seconds
        self.clocks.log.append((trio.current_time(), seconds))
        self.record("clock-jump", "*", f"+{seconds:.0f}s")

    def heal(self) -> None:
        """Remove every partition, isolation and stall."""
        self.net.heal()
        self.stalled.clear()
        self.record("heal")
        for kind in ("partition", "isolate", "stall"):
            self.close_windows(kind)

    def drop_stalled_heartbeats(self, kind: str, info: dict[str, Any]) -> None:
        """Network hook: lose exactly the heartbeats a stalled node sends. The network
        reports "send" before it decides a message's fate and "drop" right after, so
        the cut exists for that one message only."""
        src = info["src"]
        if src not in self.stalled or info["type"] != "Heartbeat" or self._cut_off(src):
            return
        if kind == "send":
            self._cut = info["seq"]
            self.net.partition([src], [STORE])
        elif kind == "drop" and info["seq"] == self._cut:
            self._cut = None
            self.net.heal()
            self._reapply_cuts()

    def _open_cuts(self) -> list[Window]:
        return [w for w in self.windows
                if w.end == math.inf and w.node and w.kind in ("partition", "isolate")]

    def _cut_off(self, name: str) -> bool:
        return any(w.node == name for w in self._open_cuts())

    def _reapply_cuts(self) -> None:
        """`net.heal` lifts every cut: put back the ones the scenario still holds."""
        for window in self._open_cuts():
            assert window.node is not None
            if window.kind == "partition":
                self.net.partition([window.node], [STORE])
            else:
                self.net.isolate(window.node)

    def track_in_flight(self, kind: str, info: dict[str, Any]) -> None:
        """Network hook: remember the most messages ever in flight on one link."""
        if kind == "send":
            try:
                in_flight = self.net.link(info["src"], info["dst"]).in_flight
            except LookupError:
                return
            # Reported before the message joins the link: count it.
            self.peak_in_flight = max(self.peak_in_flight, in_flight + 1)

    def set_net_faults(self, loss: float, duplicate: float, reorder: float) -> None:
        """Set the network's fault probabilities (all 0: a clean network)."""
        self.net.set_faults(loss=loss, duplicate=duplicate, reorder=reorder)
        self.record("network", "*", f"loss={loss} dup={duplicate} reorder={reorder}")
        self.close_windows("loss")
        if loss > 0:
            self.open_window("loss", None)

    # -- lives -----------------------------------------------------------------------

    def add_member(self, name: str, kind: str) -> Member:
        """Declare a node; its clock skew is drawn once, for all its lives."""
        skew = self.rng.uniform(-self.spec.skew_s, self.spec.skew_s) if self.spec.skew_s else 0.0
        member = Member(name, kind, round(skew, 3))
        member.gone.set()
        (self.workers if kind == "worker" else self.clients)[name] = member
        return member

    async def _restart_later(self, member: Member) -> None:
        await trio.sleep(self.rng.uniform(*self.spec.restart_after_s))
        await self.restart(member.name)

    def _member(self, name: str) -> Member:
        member = self.workers.get(name) or self.clients.get(name)
        if member is None:
            raise LookupError(f"no simulated node {name!r}")
        return member

    def _world_seed(self, member: Member) -> int:
        return derive(self.seed, member.name, member.life)

    def _config(self, member: Member) -> NodeConfig:
        spec = self.spec
        env = TaskEnv(member.name, member.life, self.history, self.crash)
        return NodeConfig(
            app=make_app(env, spec.cron), name=member.name, listen=None,
            concurrency=spec.concurrency,
            lease_timeout_s=spec.lease_timeout_s, heartbeat_s=spec.heartbeat_s,
            grace_s=spec.grace_s, threads=1,
        )

    async def _worker_life(
        self, member: Member, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        world = self.clocks.world(self._world_seed(member), member.skew_s)
        started = False
        try:
            with trio.CancelScope() as member.scope:
                async with open_server(self._config(member), world=world, listen=False,
                                       storage=Address(STORE, STORAGE)) as server:
                    await self.net.connect(self.store, server.node)
                    await self._link_clients(server.node)
                    member.node, member.server, member.up = server.node, server, True
                    self.record("start", member.name, f"life={member.life}")
                    started = True
                    task_status.started()
                    await trio.sleep_forever()
        except Exception as exc:
            self._failed(member, exc)
        finally:
            member.up, member.node, member.server = False, None, None
            member.gone.set()
            if not started:
                task_status.started()

    async def _link_clients(self, node: Node) -> None:
        for client in self.clients.values():
            if client.up and client.node is not None:
                await self.net.connect(client.node, node)

    async def _client_life(
        self, member: Member, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        world = self.clocks.world(self._world_seed(member), member.skew_s)
        try:
            with trio.CancelScope() as member.scope:
                async with open_node(member.name, world) as node:
                    for worker in self.workers.values():
                        if worker.up and worker.node is not None:
                            await self.net.connect(node, worker.node)
                    member.node, member.up = node, True
                    self.record("start", member.name, f"life={member.life}")
                    task_status.started()
                    rng = random.Random(self._world_seed(member))
                    env = ClientEnv(node, rng, self.history, self.workers_up)
                    await run_client_ops(env, self.ops[member.name])
                    member.finished = True
                    await trio.sleep_forever()
        finally:
            member.up, member.node = False, None
            member.gone.set()

    def _failed(self, member: Member, exc: BaseException) -> None:
        text = f"node {member.name} (life {member.life}) failed: {type(exc).__name__}: {exc}"
        self.failures.append(text)
        self.record("node-failed", member.name, text)
