"""A small rtnetlink client: pyroute2's message classes on a plain AF_NETLINK socket.

pyroute2 stays the netlink codec (every message is one of its ifinfmsg,
ifaddrmsg or rtmsg objects, encoded and decoded by it), but not its socket
and IPRoute layers: `import pyroute2` runs the package's __init__, which
loads IPRoute, NDB, IPDB, conntrack, asyncio and ethtool - about 80 ms of
imports on this machine, most of the default bridge's cost per `run` when
it was measured (docs/networking.md, "Where the time goes").  Importing
`pyroute2.netlink.rtnl.ifinfmsg` normally still runs that __init__, so
messages() registers a bare package object for `pyroute2` (its real
directory as __path__) before importing the three message modules; that
costs about 20 ms.  If the real package is imported already (a test
process), it is used as it is.  Nothing in nsbox imports the top-level
package: this module is the only door to pyroute2.

IPRoute(netns=...) also forks a helper (and runs `ldconfig -p` there) per
namespace; in_netns() instead switches this thread into the namespace with
setns(2) for the time a socket is opened: a netlink socket keeps acting in
the namespace it was made in.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

NETLINK_ROUTE = 0
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 1, 2, 4
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
NLM_F_DUMP = 0x300
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_GETADDR = 20, 22
RTM_NEWROUTE, RTM_GETROUTE = 24, 26
IFF_UP = 1
IFA_F_NODAD = 0x02  # no duplicate address detection: an IPv6 address usable at once
_HEADER = struct.Struct("=IHHII")


def messages():  # noqa: ANN201 - (ifinfmsg, ifaddrmsg, rtmsg) classes
    """pyroute2's three rtnetlink message classes, without the package's __init__."""
    if "pyroute2" not in sys.modules:
        for entry in sys.path:
            directory = os.path.join(entry or ".", "pyroute2")
            if os.path.isfile(os.path.join(directory, "netlink", "rtnl", "ifinfmsg",
                                           "__init__.py")):
                package = type(sys)("pyroute2")
                package.__path__ = [directory]
                package.__file__ = os.path.join(directory, "__init__.py")
                package.__package__ = "pyroute2"
                sys.modules["pyroute2"] = package
                break
        else:
            from nsbox.errors import NsboxError
            raise NsboxError("bridge networking needs pyroute2 (pip install pyroute2)")
    from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
    from pyroute2.netlink.rtnl.rtmsg import rtmsg
    return ifinfmsg, ifaddrmsg, rtmsg


class Rtnl:
    """One NETLINK_ROUTE socket, in the network namespace this thread is in when made."""

    def __init__(self) -> None:
        self.ifinfmsg, self.ifaddrmsg, self.rtmsg = messages()
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                  NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _send(self, msg, kind: int, flags: int) -> int:  # noqa: ANN001 - a pyroute2 nlmsg
        self.seq += 1
        msg["header"]["type"] = kind
        msg["header"]["flags"] = NLM_F_REQUEST | flags
        msg["header"]["sequence_number"] = self.seq
        msg["header"]["pid"] = 0
        msg.encode()
        self.sock.send(msg.data)
        return self.seq

    def _replies(self, seq: int) -> Iterator[tuple[int, bytes]]:
        """(type, message bytes) answering SEQ, up to its ack or NLMSG_DONE; OSError on an
        error answer."""
        while True:
            data = self.sock.recv(1 << 16)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind, _flags, number, _pid = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size:
                    return
                chunk = data[offset:offset + length]
                offset += (length + 3) & ~3
                if number != seq:
                    continue
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", chunk, _HEADER.size)[0]
                    if code:
                        raise OSError(code, os.strerror(code))
                    return
                if kind == NLMSG_DONE:
                    return
                yield kind, chunk

    def request(self, msg, kind: int, flags: int = 0) -> None:  # noqa: ANN001
        """Send MSG as KIND and wait for the kernel's ack (OSError with its errno)."""
        for _ in self._replies(self._send(msg, kind, flags | NLM_F_ACK)):
            pass

    def dump(self, msg, kind: int) -> list:  # noqa: ANN001
        """Every object a dump request KIND returns, decoded by MSG's class."""
        cls = type(msg)
        out = []
        for _, chunk in self._replies(self._send(msg, kind, NLM_F_DUMP)):
            reply = cls(chunk)
            reply.decode()
            out.append(reply)
        return out

    # ------------------------------------------------------------ requests
    def link(self, kind: int, flags: int = 0, index: int = 0, up: bool | None = None,
             **attrs: object) -> None:
        """RTM_*LINK for link INDEX (0: by IFLA_IFNAME) with ATTRS as IFLA_<NAME> attributes."""
        msg = self.ifinfmsg()
        msg["index"] = index
        if up is not None:
            msg["flags"] = IFF_UP if up else 0
            msg["change"] = IFF_UP
        msg["attrs"] = [(_ifla(k), v) for k, v in attrs.items()]
        self.request(msg, kind, flags)

    def add_address(self, index: int, family: int, address: str, prefix: int,
                    flags: int = 0) -> None:
        msg = self.ifaddrmsg()
        msg["family"], msg["prefixlen"], msg["index"] = family, prefix, index
        msg["flags"] = flags
        msg["attrs"] = [("IFA_LOCAL", address), ("IFA_ADDRESS", address)]
        if family == socket.AF_INET6:
            msg["attrs"] = [("IFA_ADDRESS", address)]  # IPv6 has no separate local address
        self.request(msg, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL)

    def add_default_route(self, family: int, gateway: str) -> None:
        msg = self.rtmsg()
        msg["family"], msg["dst_len"] = family, 0
        msg["table"], msg["proto"], msg["scope"], msg["type"] = 254, 3, 0, 1  # main, boot, universe, unicast
        msg["attrs"] = [("RTA_GATEWAY", gateway)]
        self.request(msg, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL)

    def addresses(self, family: int = socket.AF_INET) -> list:
        msg = self.ifaddrmsg()
        msg["family"] = family
        return self.dump(msg, RTM_GETADDR)

    def routes(self, family: int = socket.AF_INET) -> list:
        msg = self.rtmsg()
        msg["family"] = family
        return self.dump(msg, RTM_GETROUTE)


def _ifla(name: str) -> str:
    return "IFLA_" + name.upper()


def veth_peer(ifname: str, netns_fd: int, mtu: int, address: str | None = None) -> dict:
    """The VETH_INFO_PEER of a veth whose peer is made right inside another namespace."""
    attrs: list = [("IFLA_IFNAME", ifname), ("IFLA_NET_NS_FD", netns_fd), ("IFLA_MTU", mtu)]
    if address:
        attrs.append(("IFLA_ADDRESS", address))
    return {"attrs": [("VETH_INFO_PEER", {"attrs": attrs})]}


def linkinfo(kind: str, data: dict | None = None) -> dict:
    attrs: list = [("IFLA_INFO_KIND", kind)]
    if data is not None:
        attrs.append(("IFLA_INFO_DATA", data))
    return {"attrs": attrs}


@contextlib.contextmanager
def in_netns(path: str) -> Iterator[None]:
    """This thread inside the network namespace bound at PATH, and back after."""
    from nsbox.runtime import syscalls as sc
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            sc.setns(target, sc.CLONE_NEWNET)
        finally:
            os.close(target)
        try:
            yield
        finally:
            sc.setns(own, sc.CLONE_NEWNET)
    finally:
        os.close(own)
