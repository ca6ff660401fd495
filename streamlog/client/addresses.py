"""Server addresses as users write them: one, or a bootstrap list of several (pure, no Twisted).

Forms: C{HOST:PORT}, C{tcp:HOST:PORT} (Twisted's endpoint syntax, named
fields allowed), C{[::1]:PORT}, C{(host, port)}, C{unix:/path/to/socket};
the Twisted client also takes any other Twisted client endpoint string
(C{tls:...}) or an endpoint object.  A bootstrap list is several of them, as
a list or as one string separated by commas
(C{127.0.0.1:7071,127.0.0.1:7072}): the client asks any of them for the
cluster's metadata and learns every node from the answer.

No Twisted here: the blocking client and the CLI import this module, and
importing Twisted costs the CLI about 0.4 s of start-up.
"""

from __future__ import annotations

import math
from typing import Any

DEFAULT_ADDRESS = "tcp:127.0.0.1:7070"

#: Prefixes of Twisted client endpoint strings (C{tcp:...}); anything else is C{HOST:PORT}.
ENDPOINT_TYPES = ("tcp", "tcp6", "unix", "ssl", "tls", "tor", "systemd", "host")


def describe_address(address: Any) -> str:
    """How logs and messages name a server: the endpoint string or C{HOST:PORT}, never an object's repr."""
    if isinstance(address, str):
        return address
    if isinstance(address, tuple) and len(address) == 2:
        host, port = address
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return getattr(address, "streamlog_name", None) or type(address).__name__


def parse_address(address: Any) -> tuple[str, int]:
    """C{"tcp:HOST:PORT"}, C{"HOST:PORT"} or C{(host, port)} as a host and a port (for the blocking client)."""
    if isinstance(address, tuple):
        host, port = address
        return str(host), int(port)
    text = str(address)
    if text.startswith("tcp:"):
        positional = [p for p in text[4:].split(":") if "=" not in p]
        named = dict(p.split("=", 1) for p in text[4:].split(":") if "=" in p)
        host = named.get("host", positional[0] if positional else None)
        port = named.get("port", positional[1] if len(positional) > 1 else None)
        if host is None or port is None or not str(port).isdigit():
            raise ValueError(f"cannot read a host and port from {address!r}")
        return host, int(port)
    if text.startswith("[") and "]:" in text:  # [::1]:7070
        host, _, port = text[1:].partition("]:")
        return host, int(port)
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"cannot read an address from {address!r}: use HOST:PORT or tcp:HOST:PORT")
    try:
        return host, int(port)
    except ValueError:
        raise ValueError(f"bad port in address {address!r}") from None


def _endpoint_fields(address: str) -> tuple[list[str], dict[str, str]]:
    """The positional and the named fields of an endpoint string after its type (C{\\:} is a colon)."""
    fields = address.split(":", 1)[1].replace("\\:", "\0").split(":") if ":" in address else []
    fields = [f.replace("\0", ":") for f in fields]
    named = dict(f.split("=", 1) for f in fields if "=" in f)
    positional = [f for f in fields if "=" not in f]
    return positional, named


def parse_unix_path(address: str) -> str:
    """The socket path of C{"unix:/path"} or C{"unix:path=/path:timeout=5"} (Twisted's endpoint syntax)."""
    if not address.startswith("unix:"):
        raise ValueError(f"not a unix: address: {address!r}")
    positional, named = _endpoint_fields(address)
    path = named.get("path", positional[0] if positional else "")
    if not path:
        raise ValueError(f"no socket path in {address!r}: use unix:/path/to/socket")
    return path


#: Endpoint types whose Twisted string parsers take C{timeout=} (whole seconds) for the connection attempt.
TIMEOUT_ENDPOINT_TYPES = ("tcp", "unix")


def named_connect_timeout(address: Any) -> float | None:
    """The C{timeout=} an endpoint string names (C{"tcp:h:7070:timeout=60"}: 60.0), else None.

    @raise ValueError: the C{timeout=} is not a positive number."""
    if not isinstance(address, str) or address.split(":", 1)[0] not in ENDPOINT_TYPES:
        return None
    text = _endpoint_fields(address)[1].get("timeout")
    if text is None:
        return None
    whole = address.split(":", 1)[0] in TIMEOUT_ENDPOINT_TYPES  # Twisted's tcp:/unix: parsers take int()
    try:
        seconds = float(int(text) if whole else float(text))
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < math.inf:
        what = "a positive whole number" if whole else "a positive number"
        raise ValueError(f"timeout={text} in {address!r}: the connect timeout must be {what} of seconds")
    return seconds


def connect_timeout_for(address: Any, default: float | None) -> float | None:
    """The connect timeout for C{address}: the C{timeout=} its endpoint string names (the user's
    choice for that server wins), else C{default}."""
    named = named_connect_timeout(address)
    return named if named is not None else default


def with_connect_timeout(address: Any, seconds: float | None) -> Any:
    """C{address} with C{:timeout=N} added, for an endpoint string whose type takes one
    (L{TIMEOUT_ENDPOINT_TYPES}) and that names none: N is C{seconds} rounded up to whole seconds
    (Twisted's parsers take an integer), so the reactor's own timer never ends an attempt before
    the client's.  Anything else (other types, C{HOST:PORT}, objects, C{seconds} None) as it is."""
    if (seconds is None or not isinstance(address, str)
            or address.split(":", 1)[0] not in TIMEOUT_ENDPOINT_TYPES or named_connect_timeout(address) is not None):
        return address
    return f"{address}:timeout={max(1, math.ceil(seconds))}"


def parse_target(address: Any) -> tuple[str, Any]:
    """Where the blocking client connects: C{("unix", path)} or C{("tcp", (host, port))}.

    Accepts what L{parse_address} does, plus C{unix:/path} endpoint strings.
    """
    if isinstance(address, str) and address.startswith("unix:"):
        return "unix", parse_unix_path(address)
    if isinstance(address, str) and address.split(":", 1)[0] in ENDPOINT_TYPES and not address.startswith("tcp:"):
        raise ValueError(f"{address.split(':', 1)[0]}: endpoints are for the Twisted client only; "
                         "use HOST:PORT, tcp:HOST:PORT or unix:/path")
    return "tcp", parse_address(address)


def parse_bootstrap(addresses: Any) -> list[Any]:
    """The addresses of a bootstrap list: a string of comma-separated addresses, a list of
    addresses, or one address (a string, a C{(host, port)} tuple or an endpoint object).

    @raise ValueError: an empty list, or an empty entry (C{"a:1,,b:2"}).
    """
    if isinstance(addresses, str):
        items: list[Any] = [part.strip() for part in addresses.split(",")]
        if any(not item for item in items):
            raise ValueError(f"empty address in {addresses!r}: separate addresses with single commas")
    elif isinstance(addresses, tuple) and len(addresses) == 2 and not isinstance(addresses[0], (tuple, list)):
        items = [addresses]  # (host, port)
    elif isinstance(addresses, (list, tuple)):
        items = list(addresses)
        for item in items:
            if isinstance(item, str) and not item.strip():
                raise ValueError("empty address in the bootstrap list")
    else:
        items = [addresses]  # an endpoint object
    if not items:
        raise ValueError("no server address given")
    return items


def check_bootstrap(addresses: Any, blocking: bool = False) -> list[Any]:
    """L{parse_bootstrap}, each entry checked: C{HOST:PORT}, C{tcp:...}, C{unix:/path}, or (for the
    Twisted client, C{blocking=False}) any Twisted endpoint string.

    @raise ValueError: with a message naming the entry that is wrong.
    """
    items = parse_bootstrap(addresses)
    for item in items:
        if not isinstance(item, (str, tuple)):
            continue
        if not blocking and isinstance(item, str) and item.split(":", 1)[0] in ENDPOINT_TYPES \
                and not item.startswith(("tcp:", "unix:")):
            continue  # another endpoint type: Twisted parses it when it connects
        parse_target(item)
        named_connect_timeout(item)
    return items


def address_key(address: Any) -> str:
    """One spelling per server, to tell whether two addresses name the same one.

    C{tcp:127.0.0.1:7071}, C{127.0.0.1:7071} and C{("127.0.0.1", 7071)} are all
    C{127.0.0.1:7071}: the form nodes advertise their addresses in (Metadata).
    """
    if isinstance(address, str) and address.startswith("unix:"):
        try:
            return "unix:" + parse_unix_path(address)
        except ValueError:
            return address
    if isinstance(address, (str, tuple)):
        try:
            return describe_address(parse_address(address))
        except (ValueError, TypeError):
            return describe_address(address)
    return describe_address(address)
