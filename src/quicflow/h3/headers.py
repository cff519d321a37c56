"""Field-section rules of RFC 9114 §4.2-4.4 (and RFC 9220 for extended CONNECT).

A message that breaks them is malformed: a stream error H3_MESSAGE_ERROR.
"""

from __future__ import annotations

from .errors import H3_MESSAGE_ERROR, H3StreamError

Headers = list[tuple[bytes, bytes]]

REQUEST_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path", b":protocol"})
RESPONSE_PSEUDO = frozenset({b":status"})
#: connection-specific fields that HTTP/3 forbids (RFC 9114 §4.2)
CONNECTION_FIELDS = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
_UPPER = bytes(range(ord("A"), ord("Z") + 1))
#: RFC 9110 §5.6.2 tchar in lowercase (RFC 9114 §4.2): what a field name is made of
_TCHAR = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
#: RFC 9110 §5.5: a field value holds no control character but HTAB (0x00-0x08,
#: 0x0a-0x1f, 0x7f: CR, LF and NUL among them), RFC 9114 §10.3
_VALUE_CTL = bytes([*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F])


def _error(reason: str) -> H3StreamError:
    return H3StreamError(H3_MESSAGE_ERROR, reason)


def _check_fields(headers: Headers, allowed_pseudo: frozenset[bytes]) -> dict[bytes, bytes]:
    pseudo: dict[bytes, bytes] = {}
    regular = False
    for name, value in headers:
        if not name:
            raise _error("empty field name")
        if name.translate(None, _UPPER) != name:
            raise _error(f"uppercase field name {name!r}")
        if (name[1:] if name[0] == 0x3A else name).translate(None, _TCHAR):
            raise _error(f"invalid characters in field name {name!r}")  # RFC 9114 §10.3
        if value.translate(None, _VALUE_CTL) != value:
            raise _error(f"invalid characters in field {name!r}")
        if name.startswith(b":"):
            if regular:
                raise _error("pseudo-header after a regular field")
            if name not in allowed_pseudo:
                raise _error(f"pseudo-header {name!r} not allowed here")
            if name in pseudo:
                raise _error(f"pseudo-header {name!r} repeated")
            pseudo[name] = value
            continue
        regular = True
        if name in CONNECTION_FIELDS:
            raise _error(f"connection-specific field {name!r}")
        if name == b"te" and value != b"trailers":
            raise _error("te other than 'trailers'")
    return pseudo


def validate_request(headers: Headers, *, extended_connect: bool) -> bool:
    """Check a request head; returns True for a CONNECT (plain or extended) request."""
    pseudo = _check_fields(headers, REQUEST_PSEUDO)
    method = pseudo.get(b":method")
    if method is None:
        raise _error("request without :method")
    if method == b"CONNECT":
        if b":protocol" in pseudo:
            if not extended_connect:
                raise _error(":protocol without SETTINGS_ENABLE_CONNECT_PROTOCOL")
            for name in (b":scheme", b":path", b":authority"):
                if not pseudo.get(name):
                    raise _error(f"extended CONNECT without {name.decode()}")
        else:
            if b":scheme" in pseudo or b":path" in pseudo or not pseudo.get(b":authority"):
                raise _error("CONNECT needs :authority and neither :scheme nor :path")
        return True
    if b":protocol" in pseudo:
        raise _error(":protocol on a method other than CONNECT")
    scheme = pseudo.get(b":scheme")
    if not scheme or not pseudo.get(b":path"):
        raise _error("request without :scheme or :path")
    if scheme in (b"https", b"http"):
        _check_authority(headers, pseudo.get(b":authority"))
    return False


def _check_authority(headers: Headers, authority: bytes | None) -> None:
    """RFC 9114 §4.3.1: an http or https request has :authority or Host, neither empty,
    and the same value when both are there."""
    hosts = [value for name, value in headers if name == b"host"]
    if authority is None and not hosts:
        raise _error("request without :authority or host")
    if authority is not None and not authority:
        raise _error("empty :authority")
    for host in hosts:
        if not host:
            raise _error("empty host")
        if authority is not None and host != authority:
            raise _error("host differs from :authority")


def validate_response(headers: Headers) -> int:
    """Check a response head; returns the status code."""
    pseudo = _check_fields(headers, RESPONSE_PSEUDO)
    status = pseudo.get(b":status")
    if status is None or len(status) != 3 or not status.isdigit():
        raise _error("response without a valid :status")
    return int(status)


def validate_trailers(headers: Headers) -> None:
    _check_fields(headers, frozenset())


def content_length(headers: Headers) -> int | None:
    """The content-length value (None when absent); malformed or conflicting -> error."""
    found: int | None = None
    for name, value in headers:
        if name == b"content-length":
            if not value.isdigit():
                raise _error("malformed content-length")
            n = int(value)
            if found is not None and found != n:
                raise _error("conflicting content-length fields")
            found = n
    return found
