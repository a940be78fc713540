#!/usr/bin/env python3
"""bench/tcp_tool.py - byte source/sink and idle-connection holder for bench/tcp.sh.

Subcommands (all on 127.0.0.1; progress lines on stdout, one JSON result line at the end):

  sink   --port P
      Bulk sink. Per connection: an 8-byte big-endian length L, then L bytes, which are
      counted (not buffered); then it answers "OK <count>\\n" and waits for the peer to close.
      One thread per connection; serves until killed. Prints "listening" once bound.

  source --port P --bytes N [--chunk C]
      Connects, sends the length header and N bytes (C bytes per send, default 1 MiB),
      then waits for the sink's "OK <count>\\n". The time is taken from just before connect()
      to the arrival of that answer, so it is end to end: every byte has reached the sink.
      Prints {"bytes":N,"acked":count,"seconds":s,"mb_per_s":...}; exits 1 if count != N.

  hold   --port P [--cert F --key F [--client-ca F]]
      asyncio server for the memory tests. Per connection: reads one line, answers "ok\\n",
      then reads and discards everything until EOF (an idle client just stays open; a
      streaming client is a discard sink). With --cert/--key it speaks TLS (and requires a
      client certificate signed by --client-ca if given). Prints "listening" once bound.

  clients --port P --connections N [--ca F --server-name S [--cert F --key F]]
          [--stream-seconds S | --until-file F] [--parallel K]
      Opens N connections (K handshakes at a time, default 50), each sends "hello\\n" and
      waits for "ok\\n". Then prints "holding <n>" and stays idle until file F exists
      (--until-file) or stdin reaches EOF (default); or, with --stream-seconds, makes every
      connection send data as fast as it is taken for S seconds ("streaming <n>" first). With --ca it
      speaks TLS to the port (verifying S), with --cert/--key it presents a client cert.
      The final JSON line says how many were established and how many failed.
"""

import argparse
import asyncio
import json
import os
import socket
import ssl
import struct
import sys
import threading
import time

HOST = "127.0.0.1"


def emit(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


# ----------------------------------------------------------------- bulk ----


def sink_conn(conn):
    try:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        head = b""
        while len(head) < 8:
            part = conn.recv(8 - len(head))
            if not part:
                return
            head += part
        (want,) = struct.unpack("!Q", head)
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        got = 0
        while got < want:
            n = conn.recv_into(view, min(len(buf), want - got))
            if n == 0:
                break
            got += n
        conn.sendall(b"OK %d\n" % got)
        # Let the source close first (it has the answer by then).
        while conn.recv(4096):
            pass
    except OSError:
        pass
    finally:
        conn.close()


def cmd_sink(a):
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((HOST, a.port))
    srv.listen(256)
    emit("listening")
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=sink_conn, args=(conn,), daemon=True).start()


def cmd_source(a):
    chunk = bytes(a.chunk)
    view = memoryview(chunk)
    t0 = time.perf_counter()
    s = socket.create_connection((HOST, a.port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(struct.pack("!Q", a.bytes))
    left = a.bytes
    while left > 0:
        if left >= len(chunk):
            s.sendall(view)
            left -= len(chunk)
        else:
            s.sendall(view[:left])
            left = 0
    answer = b""
    while not answer.endswith(b"\n"):
        part = s.recv(64)
        if not part:
            break
        answer += part
    t1 = time.perf_counter()
    s.close()
    acked = -1
    if answer.startswith(b"OK "):
        acked = int(answer[3:].strip())
    secs = t1 - t0
    emit(json.dumps({"bytes": a.bytes, "acked": acked, "seconds": round(secs, 6),
                     "mb_per_s": round(a.bytes / secs / 1e6, 1)}))
    return 0 if acked == a.bytes else 1


# ---------------------------------------------------------------- hold -----


def server_ctx(a):
    if not a.cert:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    if a.client_ca:
        ctx.load_verify_locations(a.client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


async def hold_conn(reader, writer):
    try:
        line = await reader.readline()
        if not line:
            return
        writer.write(b"ok\n")
        await writer.drain()
        while await reader.read(1 << 16):
            pass
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def hold_main(a):
    srv = await asyncio.start_server(hold_conn, HOST, a.port, ssl=server_ctx(a), backlog=4096)
    emit("listening")
    async with srv:
        await srv.serve_forever()


def cmd_hold(a):
    asyncio.run(hold_main(a))


# ------------------------------------------------------------- clients -----


def client_ctx(a):
    if not a.ca:
        return None
    ctx = ssl.create_default_context(cafile=a.ca)
    if a.cert:
        ctx.load_cert_chain(a.cert, a.key)
    return ctx


async def open_one(a, ctx, sem):
    async with sem:
        kw = {}
        if ctx is not None:
            kw = {"ssl": ctx, "server_hostname": a.server_name}
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(HOST, a.port, **kw), timeout=30)
        writer.write(b"hello\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout=30)
        if line != b"ok\n":
            writer.close()
            raise ConnectionError("bad answer %r" % line)
        return reader, writer


async def stream_one(writer, until, block):
    sent = 0
    while time.monotonic() < until:
        writer.write(block)
        await writer.drain()
        sent += len(block)
    return sent


async def clients_main(a):
    ctx = client_ctx(a)
    sem = asyncio.Semaphore(a.parallel)
    t0 = time.monotonic()
    results = await asyncio.gather(*(open_one(a, ctx, sem) for _ in range(a.connections)),
                                   return_exceptions=True)
    conns = [r for r in results if not isinstance(r, BaseException)]
    errors = [r for r in results if isinstance(r, BaseException)]
    setup = time.monotonic() - t0
    emit("holding %d" % len(conns))
    if errors:
        sys.stderr.write("first error: %r\n" % (errors[0],))
    sent = 0
    if a.stream_seconds > 0:
        emit("streaming %d" % len(conns))
        block = bytes(1 << 16)
        until = time.monotonic() + a.stream_seconds
        counts = await asyncio.gather(*(stream_one(w, until, block) for _, w in conns),
                                      return_exceptions=True)
        sent = sum(c for c in counts if isinstance(c, int))
        errors += [c for c in counts if isinstance(c, BaseException)]
    elif a.until_file:
        # Idle until the script creates the file.
        while not os.path.exists(a.until_file):
            await asyncio.sleep(0.1)
    else:
        # Idle until stdin reaches EOF.
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)
    for _, w in conns:
        w.close()
    emit(json.dumps({"requested": a.connections, "established": len(conns),
                     "errors": len(errors), "setup_s": round(setup, 3), "streamed_bytes": sent}))


def cmd_clients(a):
    asyncio.run(clients_main(a))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sink")
    s.add_argument("--port", type=int, required=True)
    s = sub.add_parser("source")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--bytes", type=int, required=True)
    s.add_argument("--chunk", type=int, default=1 << 20)
    s = sub.add_parser("hold")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--cert")
    s.add_argument("--key")
    s.add_argument("--client-ca")
    s = sub.add_parser("clients")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--connections", type=int, required=True)
    s.add_argument("--parallel", type=int, default=50)
    s.add_argument("--ca")
    s.add_argument("--server-name", default="localhost")
    s.add_argument("--cert")
    s.add_argument("--key")
    s.add_argument("--stream-seconds", type=float, default=0)
    s.add_argument("--until-file")
    a = p.parse_args()
    return {"sink": cmd_sink, "source": cmd_source, "hold": cmd_hold,
            "clients": cmd_clients}[a.cmd](a) or 0


if __name__ == "__main__":
    sys.exit(main())
