"""Whether a response's body arrived in a coding this client can take off.

urllib3 takes off the ``chunked`` framing and decodes the content codings it knows (gzip and deflate;
br and zstd when the ``brotli`` and ``zstandard`` packages are installed). Any other coding it leaves
as it came, and requests did the same: a ``Transfer-Encoding: gzip, chunked`` answer or a
``Content-Encoding: br`` one without ``brotli`` became a 200 whose body was still compressed, which
``text()`` and ``json()`` turned into garbage or an error far from its cause, and the breaker counted
as a success. The transport answers those 489 instead (see docs/faults.md).

What urllib3 decodes is decided by comparing the field's value as it is: ``gzip`` alone, or a list
(with a comma) naming one of its codings. A coding it knows written otherwise (``gzip;q=1``: content
codings take no parameters) is left as it came too, and so is ``chunked`` with a parameter
(``chunked;x=1``: the body was read to the end of the stream with its chunk framing in it): those
are 489s as well. (The whitespace around a value is not part of it, RFC 9110 5.5, and is gone
before this look, and so are the empty elements and ``identity`` of a ``Content-Encoding`` list,
which name no coding, RFC 9110 5.6.1, and which urllib3 gave a decoder: response_head.py. This
look ignores them too.)

A content coding the request asked for itself (its ``Accept-Encoding`` names it, or ``*``) is the
caller's to decode: that body is handed over as it came, as requests does. So is one that is no
coding at all (``Content-Encoding: none``, ``UTF-8``: servers that send those exist, and their
bodies are readable): only the codings of IANA's registry are taken for compression. (Not so a
``Transfer-Encoding``: any coding there but ``chunked`` and ``identity`` leaves the body unreadable.) In a list
(``gzip, none``) such a name is taken out of the value before urllib3 sees it (response_head.py),
which would give it deflate's decoder.
"""

from collections.abc import Mapping

from urllib3.response import HTTPResponse

__all__ = ["is_no_coding", "left_as_it_came", "unreadable_coding"]

# Transfer codings urllib3 takes off: chunked once (RFC 9112 forbids applying it twice), and
# "identity", which RFC 2616 defined as no coding and some old servers still send.
_TRANSFER = frozenset({"chunked", "identity"})
# IANA's HTTP Content Coding Registry (and its transfer codings), less identity: the names that mean
# the body was transformed. Any other name is a server's mistake that leaves the body as it is.
_REGISTERED = frozenset(
    {
        "aes128gcm",
        "br",
        "compress",
        "dcb",
        "dcz",
        "deflate",
        "exi",
        "gzip",
        "pack200-gzip",
        "x-compress",
        "x-gzip",
        "zstd",
    }
)


def is_no_coding(coding: str) -> bool:
    """Whether a ``Content-Encoding`` element names no coding of IANA's registry (``none``,
    ``UTF-8``): a server's mistake that leaves the body as it is."""
    return _name(coding.lower()) not in _REGISTERED


def _codings(value: str) -> list[str]:
    return [part.strip().lower() for part in value.split(",") if part.strip()]


def _name(coding: str) -> str:
    """The coding's name, without the parameters after a ``;``."""
    return coding.partition(";")[0].strip()


def _decoded_by_urllib3(value: str, codings: list[str]) -> bool:
    """Whether urllib3 puts a body whose ``Content-Encoding`` is ``value`` through its decoders
    (``HTTPResponse._init_decoder``); in a list, each coding then gets one, and a body a coding's
    decoder cannot read raises ``DecodeError``."""
    decoded = HTTPResponse.CONTENT_DECODERS
    return value.lower() in decoded or ("," in value and any(coding in decoded for coding in codings))


def _accepted(accept_encoding: str) -> tuple[set[str], set[str]]:
    """The codings an ``Accept-Encoding`` value names, and those it refuses with ``q=0``."""
    accepted, refused = set(), set()
    for item in _codings(accept_encoding):
        name, _, parameters = item.partition(";")
        weight = parameters.replace(" ", "")
        if weight in ("q=0", "q=0.", "q=0.0", "q=0.00", "q=0.000"):
            refused.add(name.strip())
        else:
            accepted.add(name.strip())
    return accepted, refused


def _all_accepted(names: set[str], accept_encoding: str) -> bool:
    """Whether ``accept_encoding`` takes every coding of ``names``: named, or matched by ``*``, which
    matches only the codings the value does not name (RFC 9110 12.5.3): ``*, compress;q=0`` refuses
    compress (it was taken for accepted, and the body handed over still compressed: a review)."""
    accepted, refused = _accepted(accept_encoding)
    return all(name in accepted or ("*" in accepted and name not in refused) for name in names)


def left_as_it_came(headers: Mapping[str, str], accept_encoding: str | None) -> bool:
    """Whether a body :func:`unreadable_coding` finds readable is to be read as it came, not decoded:
    a ``Content-Encoding`` list naming a coding urllib3 has no decoder for that the request accepted
    (``gzip, br`` without brotli, ``gzip, compress``). urllib3 gave that coding deflate's decoder,
    which failed on it: a plain 489, retried and counted against the endpoint, where the caller had
    asked for the body in those codings (a review). Handed over as it came, as ``br`` alone is."""
    value = headers.get("Content-Encoding")
    if value is None or "," not in value:
        return False  # one coding: urllib3 decodes it, or leaves it as it came itself
    decoded = HTTPResponse.CONTENT_DECODERS
    return any(_name(coding) in _REGISTERED and _name(coding) not in decoded for coding in _codings(value))


#: The most characters of the peer's codings ``unreadable_coding`` repeats (the rest is cut).
MOST_SHOWN = 100


def unreadable_coding(headers: Mapping[str, str], accept_encoding: str | None) -> str | None:
    """The header and coding that leave the body unreadable (``"Transfer-Encoding: gzip"``), or None.

    ``headers`` are the response's; ``accept_encoding`` is the ``Accept-Encoding`` the request sent.
    What it names is the peer's text, which the transport logs and puts in ``X-Unreadable-Coding``:
    escaped and cut to :data:`MOST_SHOWN` characters (:func:`_shown`).
    """
    found = _unreadable_coding(headers, accept_encoding)
    return None if found is None else _shown(found)


def _shown(text: str) -> str:
    """``text`` with what is not printable ASCII escaped as ``repr`` escapes it, cut to
    :data:`MOST_SHOWN` characters: a coding's parameters are the peer's, and a 60,000-character one,
    or one with terminal escapes (ESC [2J), went into a warning line as it was."""
    escaped = text.encode("ascii", "backslashreplace").decode("ascii")
    escaped = "".join(c if " " <= c <= "~" else repr(c)[1:-1] for c in escaped)
    return escaped if len(escaped) <= MOST_SHOWN else f"{escaped[:MOST_SHOWN]}... ({len(escaped)} characters)"


def _unreadable_coding(headers: Mapping[str, str], accept_encoding: str | None) -> str | None:
    transfer_value = headers.get("Transfer-Encoding")
    value = headers.get("Content-Encoding")
    if value is None and (transfer_value is None or transfer_value == "chunked"):
        return None  # what nearly every answer is: asked about on every call, without the lists below
    transfer = _codings(transfer_value or "")
    # Every transfer coding but chunked itself and identity (no coding): one of the registry, chunked
    # with a parameter, which urllib3 does not take for chunked, or a name this client does not know
    # (``foo``, ``x-chunked``), which is no label as a content coding's can be but the framing, and
    # left the body to the connection's close: a 408 from a server that kept it (a review).
    applied = [coding for coding in transfer if coding != "chunked" and _name(coding) != "identity"]
    if applied or transfer.count("chunked") > 1:
        return f"Transfer-Encoding: {', '.join(applied or transfer)}"
    value = value or ""
    content = _codings(value)
    decoded = HTTPResponse.CONTENT_DECODERS
    if not _decoded_by_urllib3(value, content):
        # A coding urllib3 decodes, written so that it does not (gzip;q=1): urllib3 decodes these
        # for every caller, so no caller decodes one itself, whatever its Accept-Encoding says.
        misread = [coding for coding in content if _name(coding) in decoded]
        if misread:
            return f"Content-Encoding: {', '.join(misread)}"
    undecoded = [coding for coding in content if _name(coding) in _REGISTERED and _name(coding) not in decoded]
    if undecoded and not _all_accepted({_name(coding) for coding in undecoded}, accept_encoding or ""):
        return f"Content-Encoding: {', '.join(undecoded)}"
    return None
