"""Separate, cached virtual environments for the SDK clients and servers the tests drive.

Why: `mcp` 2.x and `openai` 3.x depend on `httpx2`, which needs `h11>=0.16`, while
mitmproxy 11 pins `h11<=0.14` and parses HTTP/1 with h11's internals. Installing those
SDKs into the gateway's own environment would upgrade h11 under the gateway, so the
tests run them from environments of their own, exactly as an agent on another machine
would.

Each environment lives under ~/.cache/portcullis-tests/sdk-venvs/<name>-<hash>, the hash
covering its requirements: a warm cache costs two stats, a clean CI machine installs from
PyPI once. It is built from whichever interpreter asks first (the SDKs run in their own
process, so the 3.11 and 3.12 lines of the suite share it); one whose interpreter is gone
is rebuilt. Two pytest processes creating the same
environment at once serialise on a file lock (fcntl.flock) and the environment only counts
once its "complete" marker is written, so a build killed half-way is rebuilt, never used.

An environment is made without pip (``venv --without-pip``) and filled by the pip of the
interpreter running the tests (``pip --python``): ensurepip would cost seconds each.

`run_json(name, script, ...)` runs a Python snippet in an environment with the gateway's
proxy and CA variables set and returns the JSON the snippet printed on its last stdout
line; `spawn(name, script, ...)` starts a long-running one (a server) and returns the
process; `mcp_servers(...)` starts several MCP_SERVERs in one process (the SDK's import
costs about a second of CPU per process).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.gateway import free_port

#: The environments the tests use, by name: pinned requirements (pip syntax).
ENVIRONMENTS: dict[str, tuple[str, ...]] = {
    "mcp1": ("mcp==1.30.0",),
    "mcp2": ("mcp==2.3.0",),
    "llm": ("openai==3.57.0", "anthropic==2.15.0"),
}

#: Where environments are cached (PORTCULLIS_SDK_VENVS overrides).
CACHE_ROOT = Path(os.environ.get(
    "PORTCULLIS_SDK_VENVS", Path.home() / ".cache" / "portcullis-tests" / "sdk-venvs"))

#: Proxy variables never inherited from the test process (a snippet sets its own).
_PROXY_NAMES = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY",
                "all_proxy", "NO_PROXY", "no_proxy")

_COMPLETE = "portcullis-complete"


def _base_python() -> str:
    """The interpreter to build environments from: the real one behind this venv."""
    return getattr(sys, "_base_executable", None) or sys.executable


def env_dir(name: str) -> Path:
    requirements = ENVIRONMENTS[name]
    digest = hashlib.sha256(json.dumps(sorted(requirements)).encode()).hexdigest()[:12]
    return CACHE_ROOT / f"{name}-{digest}"


def _python_in(directory: Path) -> Path:
    return directory / "bin" / "python"


def _usable(directory: Path) -> bool:
    # exists() follows the bin/python symlink: False when its interpreter is gone
    return (directory / _COMPLETE).exists() and _python_in(directory).exists()


def _installer(python: Path) -> list[str]:
    """The pip command that installs into the environment of ``python``: this
    interpreter's pip with ``--python`` (pip 22.3+), so the environment is made without a
    pip of its own (ensurepip costs seconds per environment); else the environment's own."""
    try:
        import pip
    except ImportError:
        return [str(python), "-m", "pip"]
    if tuple(int(part) for part in pip.__version__.split(".")[:2] if part.isdigit()) < (22, 3):
        return [str(python), "-m", "pip"]
    return [sys.executable, "-m", "pip", "--python", str(python)]


def ensure(name: str, timeout: float = 600) -> Path:
    """Create the environment `name` if needed (once, under a lock); return its python."""
    directory = env_dir(name)
    python = _python_in(directory)
    if _usable(directory):
        return python
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    with open(CACHE_ROOT / f"{directory.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if _usable(directory):   # another process built it meanwhile
                return python
            shutil.rmtree(directory, ignore_errors=True)
            pip = _installer(python)
            subprocess.run([_base_python(), "-m", "venv", *([] if pip[0] == str(python) else ["--without-pip"]),
                            str(directory)], check=True, timeout=timeout, capture_output=True)
            # Tried again after a pause: on a machine's first minutes its HTTPS to PyPI has
            # failed (certificate verify failed, 2026-12-04, then fine a minute later).
            for attempt in range(4):
                if attempt:
                    time.sleep(10 * attempt)
                result = subprocess.run(
                    [*pip, "install", "--quiet", "--disable-pip-version-check", *ENVIRONMENTS[name]],
                    timeout=timeout, capture_output=True, text=True,
                    env=_clean_environment({}))
                if result.returncode == 0:
                    break
            if result.returncode != 0:
                raise RuntimeError(f"pip install for SDK env {name!r} failed:\n"
                                   f"{result.stdout}\n{result.stderr}")
            (directory / _COMPLETE).write_text("\n".join(ENVIRONMENTS[name]) + "\n")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return python


def _clean_environment(extra: dict[str, str]) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items()
                   if k not in _PROXY_NAMES and k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    environment["PYTHONUNBUFFERED"] = "1"
    environment.update(extra)
    return environment


def _gateway_environment(gateway: Any | None) -> dict[str, str]:
    """HTTP(S)_PROXY and CA-trust variables for a tests.support.gateway.GatewayProcess."""
    if gateway is None:
        return {}
    environment = dict(gateway.agent_env())
    environment["PORTCULLIS_TEST_PROXY"] = gateway.proxy_url
    environment["PORTCULLIS_TEST_CA"] = str(gateway.ca_cert)
    return environment


def _command(python: Path, script: str, args: tuple[str, ...]) -> list[str]:
    return [str(python), "-c", textwrap.dedent(script), *args]


def run_json(name: str, script: str, *args: str, gateway: Any | None = None,
             env: dict[str, str] | None = None, timeout: float = 60) -> Any:
    """Run `script` in environment `name`; return the JSON on its last stdout line.

    With `gateway`, the snippet sees HTTP(S)_PROXY, the CA variables, and for clients that
    take them explicitly PORTCULLIS_TEST_PROXY and PORTCULLIS_TEST_CA.
    """
    python = ensure(name)
    result = subprocess.run(
        _command(python, script, args), capture_output=True, text=True, timeout=timeout,
        env=_clean_environment({**_gateway_environment(gateway), **(env or {})}))
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"SDK snippet in {name!r} exited {result.returncode}:\n"
                           f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError as error:
        raise RuntimeError(f"SDK snippet in {name!r} printed no JSON last:\n"
                           f"{result.stdout}\nstderr:\n{result.stderr}") from error


def spawn(name: str, script: str, *args: str, env: dict[str, str] | None = None,
          gateway: Any | None = None) -> subprocess.Popen[str]:
    """Start `script` in environment `name` (stdout piped, stderr merged); caller stops it."""
    python = ensure(name)
    return subprocess.Popen(
        _command(python, script, args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, errors="replace",
        env=_clean_environment({**_gateway_environment(gateway), **(env or {})}))


# --- scripts the MCP tests run in these environments ----------------------------------

_MCP_NOTES = r'''
import asyncio, contextlib, json, sys
import uvicorn

def notes_app(port, mode, stateless):
    """A notes server's ASGI app; its tools record their calls (tool call_log)."""
    json_mode = mode == "json"
    try:
        from mcp.server.mcpserver import MCPServer, Context
        server = MCPServer("notes")
        major = 2
    except ImportError:
        from mcp.server.fastmcp import FastMCP, Context
        server = FastMCP("notes", json_response=json_mode, host="127.0.0.1", port=port,
                         stateless_http=stateless)
        major = 1
    CALLS = []

    @server.tool()
    def read_note(name: str) -> str:
        """Read a note."""
        CALLS.append(["read_note", name])
        return f"note {name}: hello"

    @server.tool()
    def delete_note(name: str, force: bool = False) -> str:
        """Delete a note."""
        CALLS.append(["delete_note", name])
        return f"deleted {name}"

    @server.tool()
    def drop_database(name: str) -> str:
        """Drop a database."""
        CALLS.append(["drop_database", name])
        return f"dropped {name}"

    @server.tool()
    def call_log() -> str:
        """Every call so far."""
        return json.dumps(CALLS)

    if major == 2:
        return server.streamable_http_app(json_response=json_mode, stateless_http=stateless)
    return server.streamable_http_app()
'''

#: A FastMCP / MCPServer notes server (either major) over Streamable HTTP on 127.0.0.1.
#: argv: port, "json" | "sse", optionally "stateless". Prints "ready", then listens. Tools
#: record their calls, so a test can show a refused call never reached the server (tool
#: `call_log`).
MCP_SERVER = _MCP_NOTES + r'''
port = int(sys.argv[1])
app = notes_app(port, sys.argv[2], sys.argv[3:] == ["stateless"])
config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
print("ready", flush=True)
uvicorn.Server(config).run()
'''

#: Several MCP_SERVERs in one process, each its own server (and call log) on its own
#: port. argv: one "PORT:MODE[:stateless]" per server. Prints "ready", then listens;
#: SIGTERM ends the process at once (uvicorn's signal handling would stop only one).
MCP_SERVERS = _MCP_NOTES + r'''
class Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        yield

    def install_signal_handlers(self):  # uvicorn before capture_signals
        pass

async def main(specs):
    servers = []
    for spec in specs:
        port, mode, *rest = spec.split(":")
        app = notes_app(int(port), mode, rest == ["stateless"])
        servers.append(Server(uvicorn.Config(app, host="127.0.0.1", port=int(port), log_level="warning")))
    print("ready", flush=True)
    await asyncio.gather(*(server.serve() for server in servers))

asyncio.run(main(sys.argv[1:]))
'''


def wait_listening(process: subprocess.Popen[str], ports: list[int], timeout: float = 60) -> None:
    """After a server snippet printed "ready": until every port accepts (a loaded CI
    machine imports the SDK slowly); AssertionError with its output if it exits."""
    assert process.stdout is not None
    line = process.stdout.readline()
    assert "ready" in line, line + process.stdout.read()
    deadline = time.monotonic() + timeout
    for port in ports:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, f"the MCP server exited {process.returncode}"
                assert time.monotonic() < deadline, f"the MCP server did not listen on {port}"
                time.sleep(0.05)


@contextmanager
def mcp_servers(servers: dict[str, tuple[str, ...]], name: str = "mcp2") -> Iterator[dict[str, str]]:
    """MCP_SERVERS in environment ``name``: one notes server per entry (name -> its
    MCP_SERVER arguments after the port, e.g. ("sse",) or ("json", "stateless")), each
    with its own call log, all in one process; yields name -> URL once all listen."""
    ports = {key: free_port() for key in servers}
    process = spawn(name, MCP_SERVERS, *(":".join([str(ports[key]), *args]) for key, args in servers.items()))
    try:
        wait_listening(process, list(ports.values()))
        yield {key: f"http://127.0.0.1:{port}/mcp" for key, port in ports.items()}
    finally:
        process.terminate()
        process.wait(10)

_MCP_SESSION = r'''
import asyncio, json, os, sys, time
import importlib.metadata as md
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
try:
    import httpx2 as httpx
except ImportError:
    import httpx
timeout = float(os.environ.get("MCP_TEST_READ_TIMEOUT", "300"))

async def session_report(url, steps):
    out = []
    client = httpx.AsyncClient(proxy=os.environ["PORTCULLIS_TEST_PROXY"],
                               timeout=httpx.Timeout(30, read=timeout))
    async with client, streamable_http_client(url, http_client=client) as streams:
        read, write = streams[0], streams[1]
        async with ClientSession(read, write) as session:
            await session.initialize()
            for step in steps:
                started = time.monotonic()
                try:
                    if step[0] == "progress":  # a call with a progress callback
                        seen = []
                        async def progress(done, total, message):
                            seen.append([done, message])
                        result = await session.call_tool(step[1], step[2], progress_callback=progress)
                        text = " ".join(getattr(c, "text", "") for c in result.content)
                        out.append({"text": text, "progress": seen})
                    elif step[0] == "list":
                        listed = await session.list_tools()
                        out.append({"tools": sorted(t.name for t in listed.tools)})
                    else:
                        result = await session.call_tool(step[1], step[2] if len(step) > 2 else {})
                        text = " ".join(getattr(c, "text", "") for c in result.content)
                        is_error = getattr(result, "isError", None)
                        if is_error is None:
                            is_error = getattr(result, "is_error", False)
                        out.append({"text": text, "is_error": bool(is_error)})
                except Exception as exc:
                    out.append({"exception": type(exc).__name__, "message": str(exc)})
                out[-1]["seconds"] = round(time.monotonic() - started, 3)
            try:
                await session.list_tools()
                survived = True
            except Exception:
                survived = False
    return {"version": md.version("mcp"), "steps": out, "survived": survived}
'''

#: An MCP client (either major) through the proxy. argv: url, JSON list of steps:
#: ["list"] | ["call", tool, {arguments}] | ["progress", tool, {arguments}] (with a progress
#: callback; its notifications are reported). Prints one JSON line: a result per step
#: ({"tools"} | {"text", "is_error"} | {"exception", "message"}) and "survived": whether
#: the session still answered after the last step.
MCP_CLIENT = _MCP_SESSION + r'''
url, steps = sys.argv[1], json.loads(sys.argv[2])
print(json.dumps(asyncio.run(session_report(url, steps))))
'''

#: MCP_CLIENT's session with every URL at once, in one process (one SDK import).
#: argv: JSON list of URLs, JSON list of steps. Prints a JSON list: MCP_CLIENT's report
#: per URL, in order.
MCP_CLIENTS = _MCP_SESSION + r'''
urls, steps = json.loads(sys.argv[1]), json.loads(sys.argv[2])

async def main():
    return await asyncio.gather(*(session_report(url, steps) for url in urls))

print(json.dumps(asyncio.run(main())))
'''
