"""The ``shoal`` command.

- ``shoal up -f <files or folders> [--demo]``: run ModelPool/Router manifests on this machine.
- ``shoal status`` / ``shoal down``: inspect or stop a running ``shoal up`` from another shell.
- ``shoal operator``: the Kubernetes operator (kopf).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
from rich.console import Console
from rich.live import Live
from rich.table import Table

from shoal.operator.local_plan import Plan, plan_stack
from shoal.operator.local_runtime import (
    Child,
    ChildFailed,
    OnDemandEngines,
    RunState,
    Supervisor,
    default_state_dir,
    free_ports,
    group_alive,
    pid_alive,
    port_is_free,
    stop_running,
)
from shoal.operator.manifests import ManifestError, load_stack
from shoal.operator.router_classes import CLASSES_PATH, ClassesUnavailable, parse_classes
from shoal.operator.run_operator import add_operator_args, run_operator

DEMO_QUESTION = "What is the capital of France? Answer in one short sentence."
DEFAULT_ROUTER_PORT = 8080

console = Console()
err = Console(stderr=True)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _progress_table(children: list[Child], elapsed: float) -> Table:
    table = Table(title=f"starting ({elapsed:.0f}s)", title_justify="left", box=None)
    for column in ("process", "url", "state"):
        table.add_column(column)
    for c in children:
        table.add_row(c.spec.name, c.spec.url, "[green]healthy[/]" if c.healthy else "[yellow]starting[/]")
    return table


def _wait(supervisor: Supervisor, timeout: float, reported: set[str]) -> None:
    if console.is_terminal:
        with Live(console=console, refresh_per_second=4, transient=True) as live:
            supervisor.wait_healthy(timeout, lambda cs, t: live.update(_progress_table(cs, t)))
        return
    def report(children: list[Child], elapsed: float) -> None:
        for c in children:
            if c.healthy and c.spec.name not in reported:
                reported.add(c.spec.name)
                console.print(f"{c.spec.name} healthy at {c.spec.url} ({elapsed:.0f}s)")
            elif not c.healthy:
                reported.discard(c.spec.name)

    supervisor.wait_healthy(timeout, report)


def demo_request(plan: Plan, name: str, timeout: float = 600.0) -> str:
    """One chat completion through ``name``'s endpoint; the answer text."""
    headers = {"Authorization": f"Bearer {plan.api_keys[name]}"} if name in plan.api_keys else {}
    body = {
        "model": plan.models[name],
        "messages": [{"role": "user", "content": DEMO_QUESTION}],
        "max_tokens": 48,
        "temperature": 0,
    }
    with httpx.Client(trust_env=False, timeout=timeout) as client:
        resp = client.post(f"{plan.endpoints[name]}/chat/completions", json=body, headers=headers)
    resp.raise_for_status()
    text: str = resp.json()["choices"][0]["message"]["content"]
    return text.strip()


def _on_demand(supervisor: Supervisor, plan: Plan, state_dir: Path) -> OnDemandEngines:
    """The thread that starts and stops minReplicas-0 pools' engines (running once routers are up)."""
    def changed(line: str) -> None:
        RunState.of(supervisor, plan.endpoints).write(state_dir)
        console.print(line, markup=False, highlight=False)

    scaler = OnDemandEngines(supervisor, plan.on_demand, changed)
    scaler.start()
    return scaler


def _serve(supervisor: Supervisor) -> None:
    with httpx.Client(trust_env=False) as client:
        while True:
            supervisor.poll_health(client)
            time.sleep(1.0)


def cmd_up(args: argparse.Namespace) -> int:
    state_dir: Path = args.state_dir
    try:
        stack = load_stack([Path(p) for group in args.file for p in group])
    except ManifestError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 2
    running = RunState.read(state_dir)
    if running is not None and pid_alive(running.pid):
        err.print(f"error: shoal is already running (pid {running.pid}, state in {state_dir}); run `shoal down`")
        return 1
    router_port = args.port or (DEFAULT_ROUTER_PORT if port_is_free(DEFAULT_ROUTER_PORT) else None)
    plan = plan_stack(
        stack, state_dir.resolve(), free_ports(),
        python=sys.executable, router_port=router_port, engine_module=args.engine_module,
    )  # fmt: skip
    for path, text in plan.files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for note in plan.notes:
        console.print(f"[yellow]note:[/] {note}")

    signal.signal(signal.SIGTERM, _terminate)
    supervisor = Supervisor()
    scaler: OnDemandEngines | None = None
    try:
        # Engines first: a router started before them would back off from the failing endpoints.
        reported: set[str] = set()
        for phase in ("engine/", "router/"):
            for spec in plan.processes:
                if spec.name.startswith(phase):
                    supervisor.start(spec)
            RunState.of(supervisor, plan.endpoints).write(state_dir)
            _wait(supervisor, args.timeout, reported)
        if plan.on_demand:
            scaler = _on_demand(supervisor, plan, state_dir)
        for name, url in plan.endpoints.items():
            console.print(f"[bold green]ready[/]: {name} serves {plan.models[name]} at [bold]{url}[/]")
        console.print(f"logs: {state_dir / 'logs'}   stop: Ctrl-C or `shoal down`")
        if args.demo:
            name = next(iter(plan.endpoints))
            console.print(f"[bold]demo[/] ({plan.models[name]} via {name}): {DEMO_QUESTION}")
            console.print(f"[bold]answer:[/] {demo_request(plan, name)}", markup=True, highlight=False)
        _serve(supervisor)
    except KeyboardInterrupt:
        console.print("stopping...")
        return 0
    except (ChildFailed, httpx.HTTPError) as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if scaler is not None:
            scaler.stop()
        supervisor.stop()
        RunState.clear(state_dir)
        console.print("stopped: no process left")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    state = RunState.read(args.state_dir)
    if state is None or not pid_alive(state.pid):
        console.print("shoal is not running")
        if state is not None:
            RunState.clear(args.state_dir)
        return 1
    table = Table(box=None)
    for column in ("process", "pid", "url", "state", "log"):
        table.add_column(column)
    healthy = True
    with httpx.Client(trust_env=False, timeout=2) as client:
        for proc in state.processes:
            ok = False
            if group_alive(int(proc["pid"])):
                try:
                    ok = client.get(f"{proc['url']}/health").status_code == 200
                except httpx.HTTPError:
                    ok = False
            healthy &= ok
            table.add_row(proc["name"], str(proc["pid"]), proc["url"], "healthy" if ok else "unhealthy", proc["log"])
    console.print(f"shoal up running (pid {state.pid}, {time.time() - state.started:.0f}s)")
    console.print(table)
    for name, url in state.endpoints.items():
        console.print(f"{name}: {url}")
        if any(p["name"] == f"router/{name}" for p in state.processes):
            _print_classes(args.state_dir, name, url)
    return 0 if healthy else 1


def _print_classes(state_dir: Path, router: str, url: str) -> None:
    """The router's program classes (what an AgentProgram's status shows in a cluster)."""
    keys = sorted((state_dir / "routers" / router / "api-keys").glob("*"))
    headers = {"Authorization": f"Bearer {keys[0].read_text().strip()}"} if keys else {}
    try:
        with httpx.Client(trust_env=False, timeout=2) as client:
            resp = client.get(f"{url.removesuffix('/v1')}{CLASSES_PATH}", headers=headers)
        resp.raise_for_status()
        answer = parse_classes(resp.json())
    except (httpx.HTTPError, ValueError, ClassesUnavailable) as exc:
        console.print(f"  program classes: unavailable ({exc})", markup=False, highlight=False)
        return
    if answer.file_error:
        console.print(f"  classes file not loaded: {answer.file_error}", markup=False, highlight=False)
    if not answer.classes:
        console.print("  program classes: none")
        return
    table = Table(box=None, title=f"{router}: program classes", title_justify="left")
    for column in ("class", "active", "paused", "queued", "steps/min"):
        table.add_column(column)
    for c in answer.classes.values():
        table.add_row(c.name, str(c.active), str(c.paused), str(c.queued), f"{c.steps_per_minute:g}")
    console.print(table)


def cmd_down(args: argparse.Namespace) -> int:
    if stop_running(args.state_dir):
        console.print("stopped")
    else:
        console.print("shoal is not running")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shoal", description="Shoal: Kubernetes-native LLM serving")
    state: dict[str, Any] = {
        "type": Path,
        "default": default_state_dir(),
        "help": "state and logs folder (default: $SHOAL_HOME or ./.shoal)",
    }
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="run ModelPool/Router manifests on this machine")
    up.add_argument("-f", "--file", action="append", nargs="+", required=True, help="manifest files or folders")
    up.add_argument("--port", type=int, default=None, help=f"router port (default {DEFAULT_ROUTER_PORT}, else free)")
    up.add_argument("--demo", action="store_true", help="send one chat request through the router, print the answer")
    up.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for every process to be healthy")
    up.add_argument("--state-dir", **state)
    up.add_argument("--engine-module", default="shoal.engine", help=argparse.SUPPRESS)
    up.set_defaults(func=cmd_up)

    status = commands.add_parser("status", help="show what a running `shoal up` serves")
    status.add_argument("--state-dir", **state)
    status.set_defaults(func=cmd_status)

    down = commands.add_parser("down", help="stop a running `shoal up`")
    down.add_argument("--state-dir", **state)
    down.set_defaults(func=cmd_down)

    op = commands.add_parser("operator", help="run the Kubernetes operator (kopf)")
    add_operator_args(op)
    op.set_defaults(func=run_operator)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
