"""Which webhook URLs the service may call: http(s) only, and (unless ``webhook_allow_private``)
only hosts whose every address is public, so a tenant cannot aim the worker at the loopback,
the private network or a cloud metadata service (SSRF).

Checked when an endpoint is created and again before every attempt (DNS can change); the
attempt then connects to the address that was checked, not to a second lookup's answer.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

MAX_URL_LENGTH = 2048
# Cloud metadata services (most are also link-local or private; named so the refusal says so).
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200", "192.0.0.192",
))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnsafeUrl(ValueError):
    """The URL may not be called; the message says why (shown to the client as a 422)."""


@dataclass(frozen=True)
class Target:
    """What to connect to: the URL (host replaced by the checked address), Host header, TLS name."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    extensions: dict[str, str] = field(default_factory=dict)


def _embedded_ipv4(ip: IPAddress) -> IPAddress:
    """::ffff:a.b.c.d and 64:ff9b::a.b.c.d reach a.b.c.d: judge that address."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def refusal(ip: IPAddress) -> str | None:
    """Why the service must not connect to ``ip`` (None: a public address)."""
    ip = _embedded_ipv4(ip)
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    for attr, what in (("is_unspecified", "an unspecified address"), ("is_loopback", "a loopback address"),
                       ("is_link_local", "a link-local address"), ("is_multicast", "a multicast address"),
                       ("is_reserved", "a reserved address"), ("is_private", "a private address")):
        if getattr(ip, attr):
            return what
    if not ip.is_global:
        return "an address that is not publicly routable"
    return None


def parse_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an acceptable URL; UnsafeUrl for anything else."""
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeUrl(f"url is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeUrl(f"url is not valid: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeUrl(f"url scheme must be http or https, not {parts.scheme or 'none'!r}")
    if not parts.hostname:
        raise UnsafeUrl("url has no host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeUrl("url may not contain credentials (user:password@)")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def resolve(host: str, port: int) -> list[IPAddress]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeUrl(f"url host {host!r} cannot be resolved: {exc}") from None
    found: list[IPAddress] = []
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if ip not in found:
            found.append(ip)
    if not found:
        raise UnsafeUrl(f"url host {host!r} has no address")
    return found


def check_url(url: str, allow_private: bool) -> list[IPAddress]:
    """The host's addresses if the service may call ``url``; UnsafeUrl (saying why) if not.

    Every address must be public: a name with one private address among public ones is refused,
    since the connection could go to any of them.
    """
    _scheme, host, port = parse_url(url)
    if allow_private:
        return []
    addresses = resolve(host, port)
    for ip in addresses:
        why = refusal(ip)
        if why is not None:
            raise UnsafeUrl(f"url host {host!r} resolves to {ip}, {why}; webhooks go to public addresses only")
    return addresses


def pinned_target(url: str, allow_private: bool) -> Target:
    """Check ``url`` now and aim the request at the checked address (no second DNS answer)."""
    addresses = check_url(url, allow_private)
    if not addresses:
        return Target(url)
    scheme, host, port = parse_url(url)
    parts = urlsplit(url)
    ip = addresses[0]
    literal = f"[{ip}]" if ip.version == 6 else str(ip)
    netloc = f"{literal}:{parts.port}" if parts.port else literal
    extensions = {"sni_hostname": host} if scheme == "https" else {}
    host_header = parts.netloc.rsplit("@", 1)[-1]
    return Target(urlunsplit((scheme, netloc, parts.path or "/", parts.query, "")), {"Host": host_header}, extensions)
