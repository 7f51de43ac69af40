"""A TCP relay for tests that take a service away from one client only."""

import asyncio
import contextlib


class TcpProxy:
    """A TCP relay to a service that can refuse service for a while (`pause` / `resume`) or for good
    (`close`): to take the database or the broker away from one connection only."""

    def __init__(self, host: str, port: int) -> None:
        self._upstream = (host, port)
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task] = set()
        self.paused = False
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.paused:
            writer.transport.abort()
            return
        up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        self._writers |= {writer, up_writer}
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        sink.close()

    def pause(self) -> None:
        """Open connections drop, new ones are reset, until `resume`."""
        self.paused = True
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    def resume(self) -> None:
        self.paused = False

    async def close(self) -> None:
        self.pause()
        self._server.close()
        await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
