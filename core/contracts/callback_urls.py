"""Which callback URLs the service may POST to: the rules shared by the API (at submit) and the job engine (at
delivery, after DNS), stdlib only.

A callback URL is refused unless it is ``http`` or ``https``, carries no credentials, is at most
``MAX_CALLBACK_URL_LENGTH`` characters, and its host is a public address: loopback, private, link-local, multicast,
unspecified, reserved and other non-global addresses are refused (an IPv4 address in any form an OS resolver
accepts — ``2852039166``, ``0x7f.1``, ``0177.0.0.1`` — is read as the address it names), as are names such as
``localhost``. An allow-list (``LAYERCUT_CALLBACK_ALLOWED_HOSTS``: host names and IP addresses or CIDR networks)
re-enables chosen hosts. At submit the check needs no DNS; at delivery the job engine resolves the name and checks
every address it gets (``check_address``).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import SplitResult, urlsplit

MAX_CALLBACK_URL_LENGTH = 2048
ALLOWED_SCHEMES = ("http", "https")
LOCAL_NAMES = frozenset(
    {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback", "metadata.google.internal"}
)
"""Host names refused without looking them up (each resolves to this machine or a cloud metadata service)."""
LOCAL_SUFFIXES = (".localhost",)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class CallbackUrlRefused(ValueError):
    """The callback URL may not be used; the message says why and what to do."""


@dataclass(frozen=True)
class AllowList:
    """Hosts re-enabled by the operator: exact names (lower case) and networks."""

    names: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = field(default_factory=tuple)

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowList:
        """From ``LAYERCUT_CALLBACK_ALLOWED_HOSTS`` entries: a host name, an IP address or a CIDR network each."""
        names: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip().strip("[]").lower()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                names.add(entry.rstrip("."))
        return cls(frozenset(names), tuple(networks))

    def allows_name(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.names

    def allows_address(self, address: IPAddress) -> bool:
        address = _unmapped(address)
        return any(address.version == net.version and address in net for net in self.networks)


def _unmapped(address: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (``::ffff:127.0.0.1``) as the IPv4 address it carries."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def literal_address(host: str) -> IPAddress | None:
    """The address a host names without DNS: an IPv6 literal, or IPv4 in any form ``inet_aton`` accepts (dotted,
    decimal ``2852039166``, hex ``0x7f.1``, octal ``0177.0.0.1``); None for a name."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    if host.isdigit():
        try:
            return ipaddress.ip_address(int(host))
        except ValueError:
            return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))  # parsing only: no lookup
    except (OSError, ValueError):
        return None


def address_refusal(address: IPAddress) -> str | None:
    """Why ``address`` may not receive callbacks (loopback, private …), or None for a public address."""
    address = _unmapped(address)
    for attribute, what in (
        ("is_loopback", "a loopback address"),
        ("is_unspecified", "the unspecified address"),
        ("is_link_local", "a link-local address (cloud metadata services live there)"),
        ("is_multicast", "a multicast address"),
        ("is_private", "a private address"),
        ("is_reserved", "a reserved address"),
    ):
        if getattr(address, attribute):
            return what
    if not address.is_global:
        return "not a public address"
    return None


def check_address(address: IPAddress, allowed: AllowList) -> None:
    """Refuse a resolved (or literal) address that is not public, unless the allow-list names its network."""
    if allowed.allows_address(address):
        return
    reason = address_refusal(address)
    if reason is not None:
        raise CallbackUrlRefused(
            f"the callback host {address} is {reason}; give a public http(s) URL "
            "(an operator may allow it with LAYERCUT_CALLBACK_ALLOWED_HOSTS)"
        )


def check_callback_url(url: str, allowed: AllowList | None = None) -> SplitResult:
    """Refuse ``url`` unless it is a short http(s) URL without credentials whose host is public or allow-listed (no
    DNS: names are checked at delivery). Returns the split URL."""
    allowed = allowed or AllowList()
    if len(url) > MAX_CALLBACK_URL_LENGTH:
        raise CallbackUrlRefused(f"a callback URL is at most {MAX_CALLBACK_URL_LENGTH} characters; got {len(url)}")
    try:
        parts = urlsplit(url)
        _ = parts.port  # a port that is not a number (or out of range) raises here
    except ValueError:
        raise CallbackUrlRefused("the callback URL cannot be parsed; give an http(s) URL") from None
    if parts.scheme.lower() not in ALLOWED_SCHEMES:
        raise CallbackUrlRefused(f"a callback URL is http or https; got {parts.scheme or 'no scheme'!r}")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise CallbackUrlRefused("a callback URL may not carry credentials (user:password@); sign-in is by signature")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise CallbackUrlRefused("the callback URL has no host")
    if allowed.allows_name(host):
        return parts
    address = literal_address(host)
    if address is not None:
        check_address(address, allowed)
    elif host.lower() in LOCAL_NAMES or host.lower().endswith(LOCAL_SUFFIXES):
        raise CallbackUrlRefused(
            f"the callback host {host!r} is this machine; give a public http(s) URL "
            "(an operator may allow it with LAYERCUT_CALLBACK_ALLOWED_HOSTS)"
        )
    return parts
