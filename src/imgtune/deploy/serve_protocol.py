"""uvicorn's HTTP/1.1 protocol with a deadline for request headers (imported only by `imgtune serve`).

uvicorn stops its keep-alive timer at a request's first byte and has no other, so a client that sends a
header line every few seconds holds a connection, and a worker's file descriptor, for as long as it
likes. Here a connection must complete each request's headers within `timeout_keep_alive` seconds of
connecting or of the end of its previous response, or it is closed.

A request uvicorn cannot parse (headers over h11's 16 KB, a malformed line) is answered 400 in JSON,
{"error": ...}, like every other error of the API, where uvicorn answers plain text."""

from __future__ import annotations

import asyncio
import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class HeaderDeadline(H11Protocol):
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a request's headers are complete
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        if not self.transport.is_closing():
            self._deadline = self.loop.call_later(self.timeout_keep_alive, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        body = json.dumps({"error": f"{msg.rstrip('.')}: its request line or headers are malformed, or over "
                                   "16 KB in all"}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body),
                      h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()
