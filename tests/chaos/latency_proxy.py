"""A TCP proxy that delays every chunk it forwards by an adjustable amount: a slow network in
front of a real server (here Redis), to drive the enrichment operator's timeout/retry path. It
can also cut the network (:meth:`LatencyProxy.cut`: every connection dropped, new ones closed at
once) and bring it back (:meth:`LatencyProxy.restore`), e.g. a registry database outage.

This is fault injection around a real store, not a mock: the bytes are the server's own."""
from __future__ import annotations

import asyncio
import socket
import threading


class LatencyProxy:
    """Listens on a free loopback port and forwards to ``target``; set :attr:`delay_s` at any time."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.delay_s = 0.0
        self.down = False
        self._writers: set = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="latency-proxy", daemon=True)
        # the proxy binds its own listening socket now and keeps it: no other process can take
        # the port between choosing it and serving on it
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]

    def start(self) -> "LatencyProxy":
        self._thread.start()
        self._ready.wait(5)
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, sock=self._sock))
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()

    async def _handle(self, client_reader, client_writer) -> None:
        if self.down:
            client_writer.close()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()
            return
        pair = {client_writer, upstream_writer}
        self._writers |= pair
        try:
            await asyncio.gather(self._pipe(client_reader, upstream_writer),
                                 self._pipe(upstream_reader, client_writer), return_exceptions=True)
        finally:
            self._writers -= pair

    def cut(self) -> None:
        """A network outage: drop every connection, close new ones at once (until :meth:`restore`)."""
        self.down = True
        self._loop.call_soon_threadsafe(lambda: [w.close() for w in list(self._writers)])

    def restore(self) -> None:
        self.down = False

    async def _pipe(self, reader, writer) -> None:
        try:
            while data := await reader.read(65536):
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    def stop(self) -> None:
        # close the connections first and let their pipes finish, then stop the loop
        self._loop.call_soon_threadsafe(lambda: [w.close() for w in list(self._writers)])
        self._loop.call_soon_threadsafe(self._loop.call_later, 0.2, self._loop.stop)
        self._thread.join(timeout=5)
