#!/usr/bin/env python3
"""Expose the gateway inside a network namespace that has nothing else.

    netns_bridge.py --netns agent --listen 127.0.0.1:3128 --to 127.0.0.1:8080

The listening socket is created *inside* the namespace (its own loopback), the
connections to the gateway are made from the host namespace. The namespace needs no
network interface besides ``lo``: the only thing a process in it can reach is this
socket, i.e. the gateway. Standard library only; Linux; needs CAP_SYS_ADMIN (root).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import socket
import sys

CLONE_NEWNET = 0x40000000


def setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"setns: {os.strerror(error)}")


def listen_inside(netns: str, host: str, port: int) -> socket.socket:
    """A listening socket in the named namespace; this thread returns to its own after."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        setns(target)
        try:
            return socket.create_server((host, port), backlog=128)
        finally:
            setns(home)
    finally:
        os.close(target)
        os.close(home)


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            if writer.can_write_eof():
                writer.write_eof()
        except OSError:
            pass


async def serve(listener: socket.socket, gateway: tuple[str, int]) -> None:
    async def handle(agent_reader: asyncio.StreamReader, agent_writer: asyncio.StreamWriter) -> None:
        try:
            gw_reader, gw_writer = await asyncio.open_connection(*gateway)
        except OSError as exc:
            print(f"netns_bridge: cannot reach the gateway at {gateway[0]}:{gateway[1]}: {exc}",
                  file=sys.stderr, flush=True)
            agent_writer.close()
            return
        await asyncio.gather(pipe(agent_reader, gw_writer), pipe(gw_reader, agent_writer))
        for writer in (agent_writer, gw_writer):
            writer.close()

    server = await asyncio.start_server(handle, sock=listener)
    print("netns_bridge: ready", flush=True)
    async with server:
        await server.serve_forever()


def hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host or "127.0.0.1", int(port)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--netns", required=True, help="namespace name (as in `ip netns list`)")
    parser.add_argument("--listen", type=hostport, default=("127.0.0.1", 3128),
                        help="address inside the namespace (default 127.0.0.1:3128)")
    parser.add_argument("--to", type=hostport, default=("127.0.0.1", 8080),
                        help="the gateway, as seen from the host (default 127.0.0.1:8080)")
    args = parser.parse_args()
    listener = listen_inside(args.netns, *args.listen)
    try:
        asyncio.run(serve(listener, args.to))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
