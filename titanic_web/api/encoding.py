"""What the API reads a body as: bytes without a content or transfer coding, text in UTF-8."""

from __future__ import annotations

from flask import Request

from titanic_web.errors import ApiError

#: Charsets a body may declare: UTF-8, and ASCII, which is UTF-8 too.
UTF8_CHARSETS = frozenset({"utf-8", "utf8", "us-ascii", "ascii"})


def check_encoding(req: Request) -> None:
    """Refuse a body the API would misread: compressed, or text in another charset than UTF-8.

    Without this a gzip body was read as text ("not UTF-8") and a Latin-1 one failed on its
    first accented letter; the client is better told what to change.

    :raise ApiError: 415 naming the Content-Encoding or the charset; 501 for a Transfer-Encoding
        other than chunked.
    """
    environ = req.environ
    coding = environ.get("HTTP_CONTENT_ENCODING")
    if coding and coding.strip().lower() != "identity":
        raise ApiError(415, f"Content-Encoding {coding.strip()!r} is not supported: send the body uncompressed")
    transfer = environ.get("HTTP_TRANSFER_ENCODING")
    if transfer:
        other = [c.strip() for c in transfer.split(",") if c.strip().lower() not in ("chunked", "identity")]
        if other:
            raise ApiError(501, f"Transfer-Encoding {', '.join(other)!r} is not supported: send the body uncompressed")
    if ";" in (environ.get("CONTENT_TYPE") or ""):  # parameters are rare: parsed only when given
        charset = req.mimetype_params.get("charset")
        if charset is not None and charset.strip().lower() not in UTF8_CHARSETS:
            raise ApiError(
                415, f"charset {charset.strip()!r} is not supported: send UTF-8 text (charset=utf-8, or none)"
            )
