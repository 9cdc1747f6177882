"""Open-loop load at a fixed rate over TLS keep-alive connections, without coordinated omission.

wrk2 (which does this) is not in Debian. Requests are scheduled at t0 + i / rate, whatever the
server does; a pool of `connections` keep-alive connections takes them in order. A request's
latency runs from its *scheduled* send time to the end of its answer, so time spent waiting for
a free connection (because the server is slow) counts, as it would for an apiserver that keeps
sending. The generator is asyncio with raw HTTP/1.1 over `ssl`, one process; at the rates used
here (tens to hundreds per second) it is far from saturating its own core.
"""

from __future__ import annotations

import asyncio
import ssl
import uuid
from dataclasses import dataclass

from bench.admission_body import UID_PLACEHOLDER
from bench.stats import percentile

ANSWER_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class FixedRateResult:
    rate_per_second: float
    connections: int
    duration_seconds: float
    scheduled: int
    completed: int
    achieved_per_second: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    failures: int  # non-200 answers, or answers without the request's uid
    max_send_lag_ms: float  # how late the generator itself dispatched (its own health)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP/1.1 answer whose body has a Content-Length (uvicorn's always do): (status, body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    body = await reader.readexactly(length) if length else b""
    return status, body


async def _run(host: str, port: int, context: ssl.SSLContext, server_hostname: str, bodies: list[bytes],
               rate_per_second: float, duration_seconds: float, connections: int, warmup_seconds: float) -> FixedRateResult:
    loop = asyncio.get_running_loop()
    streams = [await asyncio.open_connection(host, port, ssl=context, server_hostname=server_hostname)
               for _ in range(connections)]
    parts = [body.split(UID_PLACEHOLDER.encode(), 1) for body in bodies]
    total = int(rate_per_second * (warmup_seconds + duration_seconds))
    queue: asyncio.Queue[int | None] = asyncio.Queue()
    start = loop.time() + 0.05
    latencies_ms: list[float] = []
    failures = 0
    send_lag_ms = 0.0
    last_done = start

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal failures, last_done
        while (index := await queue.get()) is not None:
            scheduled = start + index / rate_per_second
            uid = str(uuid.uuid4()).encode()
            prefix, suffix = parts[index % len(parts)]
            body = prefix + uid + suffix
            writer.write(b"POST /mutate HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % (server_hostname.encode(), port, len(body)) + body)
            try:
                status, answer = await asyncio.wait_for(read_response(reader), ANSWER_TIMEOUT_SECONDS)
            except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                failures += 1
                return  # this connection is unusable; the others go on
            done = loop.time()
            if status != 200 or uid not in answer:
                failures += 1
            if scheduled - start >= warmup_seconds:
                latencies_ms.append((done - scheduled) * 1000.0)
                last_done = done

    workers = [asyncio.create_task(worker(r, w)) for r, w in streams]
    for index in range(total):
        delay = start + index / rate_per_second - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            send_lag_ms = max(send_lag_ms, -delay * 1000.0)
        queue.put_nowait(index)
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    for _, writer in streams:
        writer.close()
    measured_window = max(last_done - (start + warmup_seconds), 1e-9)
    latencies_ms.sort()
    return FixedRateResult(
        rate_per_second=rate_per_second, connections=connections, duration_seconds=duration_seconds,
        scheduled=total, completed=len(latencies_ms), achieved_per_second=round(len(latencies_ms) / measured_window, 1),
        p50_ms=round(percentile(latencies_ms, 50), 3), p90_ms=round(percentile(latencies_ms, 90), 3),
        p99_ms=round(percentile(latencies_ms, 99), 3), max_ms=round(latencies_ms[-1], 3) if latencies_ms else float("nan"), failures=failures,
        max_send_lag_ms=round(send_lag_ms, 3),
    )


def run_fixed_rate(host: str, port: int, ca_file: str, bodies: list[bytes], rate_per_second: float,
                   duration_seconds: float, connections: int = 16, warmup_seconds: float = 2.0,
                   server_hostname: str = "localhost") -> FixedRateResult:
    context = ssl.create_default_context(cafile=ca_file)
    return asyncio.run(_run(host, port, context, server_hostname, bodies, rate_per_second, duration_seconds,
                            connections, warmup_seconds))
