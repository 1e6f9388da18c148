"""The held-call SSE server (addons/mcp/heldstream.py) in process: keepalives on its own
schedule (progress notifications with a progressToken, comments without), what the
gateway sends, the end of the stream; unknown paths refused."""

from __future__ import annotations

import asyncio
import json

from addons.mcp.heldstream import HeldStreams


async def _read_all(port: int, path: str, stream=None) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{{}}".encode())
    await writer.drain()
    if stream is not None:
        for _ in range(500):  # until three keepalives went out on their own schedule (bounded)
            if stream.keepalives >= 3:
                break
            await asyncio.sleep(0.01)
        stream.send(b"event: message\ndata: {\"jsonrpc\": \"2.0\", \"id\": 1, \"result\": {}}\n\n")
        stream.close()
    data = await asyncio.wait_for(reader.read(-1), 5)
    writer.close()
    return data


def _chunks(data: bytes) -> list[bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    out = []
    while body:
        size, _, rest = body.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            break
        out.append(rest[:n])
        body = rest[n + 2:]
    return out


def test_keepalives_then_the_answer_then_the_end():
    async def scenario():
        streams = HeldStreams(keepalive_s=0.1)
        await streams.start()
        try:
            comment = streams.open()
            progress = streams.open(progress_token="tok-1", message="waiting for approval: why")
            plain = await _read_all(streams.port, streams.path_of(comment), comment)
            noted = await _read_all(streams.port, streams.path_of(progress), progress)
            gone = await _read_all(streams.port, streams.path_of(comment))  # used once
            return plain, noted, gone
        finally:
            streams.stop()

    plain, noted, gone = asyncio.run(scenario())
    assert plain.startswith(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream")
    parts = _chunks(plain)
    keepalives = [p for p in parts if p.startswith(b": held for approval")]
    assert len(keepalives) >= 3  # one at once, then every 0.1 s
    assert parts[-1].startswith(b"event: message") and parts[:-1] == keepalives
    events = [json.loads(p.split(b"data: ", 1)[1]) for p in _chunks(noted) if p.startswith(b"event:")]
    progress = [e for e in events if e.get("method") == "notifications/progress"]
    assert [e["params"]["progress"] for e in progress] == list(range(1, len(progress) + 1))
    assert progress[0]["params"]["progressToken"] == "tok-1"
    assert progress[0]["params"]["message"] == "waiting for approval: why"
    assert events[-1] == {"jsonrpc": "2.0", "id": 1, "result": {}}
    assert gone.startswith(b"HTTP/1.1 404")
