"""WSGI middleware: a request body is read whole, or the request fails as a 400 and stores nothing.

gunicorn marks its input stream ``wsgi.input_terminated`` (it ends the stream itself).
Werkzeug then reads the stream to its end and never compares what came with the
``Content-Length`` the client announced, so a client that announced a 1 MB CSV and
went away after half of it had the half taken for the whole file: its rows were
predicted and stored, for an answer nobody received. Without the mark, Werkzeug reads
at most ``Content-Length`` bytes and raises ``ClientDisconnected`` (a 400) if the
stream ends before them; :class:`WholeBodies` takes the mark off such requests.

A chunked body keeps the mark (its end is its last chunk, which the server checks), but
a malformed chunk makes the server's stream raise its own exception types, which the
app would answer as a 500. :class:`_ReadErrors` turns any failure to read the body into
a 400 that names it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import IO, TYPE_CHECKING, Any

from werkzeug.exceptions import BadRequest, HTTPException

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment


class WholeBodies:
    """Take the server's "input terminated" mark off requests with a ``Content-Length``, and
    wrap a chunked body's stream so that a read error is a 400, not a 500."""

    def __init__(self, wsgi_app: WSGIApplication) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("HTTP_TRANSFER_ENCODING"):
            stream = environ.get("wsgi.input")
            if stream is not None:
                environ["wsgi.input"] = _ReadErrors(stream)
        elif environ.get("CONTENT_LENGTH"):
            environ.pop("wsgi.input_terminated", None)
        return self.wsgi_app(environ, start_response)


class _ReadErrors:
    """A server's input stream whose read errors are raised as :class:`BadRequest`, naming them."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream

    def read(self, *size: Any) -> bytes:
        return self._call(self._stream.read, *size)

    def readline(self, *size: Any) -> bytes:
        return self._call(self._stream.readline, *size)

    def readlines(self, *hint: Any) -> list[bytes]:
        return self._call(self._stream.readlines, *hint)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")

    @staticmethod
    def _call(read: Any, *args: Any) -> Any:
        try:
            return read(*args)
        except HTTPException:
            raise
        except OSError as exc:  # the connection ended inside a chunk
            raise BadRequest(
                f"the request body ended before its last chunk ({str(exc) or type(exc).__name__}): "
                "the client disconnected or sent less than it meant to; nothing was stored"
            ) from exc
        except Exception as exc:  # the server's own parse errors: a malformed chunk
            raise BadRequest(
                f"the request body's chunked encoding cannot be read ({str(exc) or type(exc).__name__}); "
                "nothing was stored"
            ) from exc
