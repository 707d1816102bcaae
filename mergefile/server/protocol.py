"""The wire format between client and server: length-prefixed JSON over a unix socket.

The client's first message carries its stdin, stdout and stderr as file descriptors
(``SCM_RIGHTS``), so the build writes straight to the user's terminal or pipe: progress bars,
``isatty`` and terminal size behave as in a process of its own, and nothing is relayed.

Written against ``_socket``, the C module under ``socket``: the client imports this on every
build, and ``socket`` (with the ``enum`` it builds its constants from) would double the
client's own import time. ``socket.socket`` objects work here unchanged (a subclass).
"""

from __future__ import annotations

import _socket
import array
import json
import os
import struct

HEADER = struct.Struct("!I")
MAX_MESSAGE = 16 * 2**20  # the client's environment is the largest part
MAX_FDS = 3


class ProtocolError(Exception):
    """The other side sent something that is not a message, or went away mid-message."""


def send(sock: _socket.socket, message: dict, fds: list[int] | tuple[int, ...] = ()) -> None:
    data = json.dumps(message, separators=(",", ":")).encode()
    frame = HEADER.pack(len(data)) + data
    if fds:  # the rights travel with the first bytes
        rights = array.array("i", fds).tobytes()
        sent = sock.sendmsg([frame], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)])
        frame = frame[sent:]
    if frame:
        sock.sendall(frame)


def _recv_exact(sock: _socket.socket, n: int, first: bytes = b"") -> bytes:
    chunks, have = [first], len(first)
    while have < n:
        chunk = sock.recv(min(n - have, 2**20))
        if not chunk:
            raise ProtocolError("connection closed mid-message")
        chunks.append(chunk)
        have += len(chunk)
    return b"".join(chunks)


def recv(sock: _socket.socket, max_fds: int = 0) -> tuple[dict, list[int]]:
    """The next message and any descriptors that came with it. EOFError: the other side closed
    the connection between messages."""
    fds: list[int] = []
    if max_fds:
        itemsize = array.array("i").itemsize
        head, ancillary, _, _ = sock.recvmsg(HEADER.size, _socket.CMSG_LEN(max_fds * itemsize))
        for level, kind, data in ancillary:
            if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                got = array.array("i")
                got.frombytes(data[: len(data) - len(data) % itemsize])
                fds += got
    else:
        head = sock.recv(HEADER.size)
    if not head:
        raise EOFError
    try:
        head = _recv_exact(sock, HEADER.size, head)
        (size,) = HEADER.unpack(head)
        if size > MAX_MESSAGE:
            raise ProtocolError(f"message of {size} bytes")
        message = json.loads(_recv_exact(sock, size))
        if not isinstance(message, dict):
            raise ProtocolError("a message must be a JSON object")
    except (ProtocolError, ValueError, OSError) as e:
        _close_all(fds)
        if isinstance(e, ValueError):
            raise ProtocolError(f"not a JSON message: {e}") from None
        raise
    return message, fds


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
