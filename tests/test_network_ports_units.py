"""-p parsing as Docker reads it, IPv6 host addresses included (pure logic)."""

from __future__ import annotations

import pytest

from nsbox.engine.network import ports
from nsbox.errors import ConfigError


@pytest.mark.parametrize("entry, host_ip, host_port, container_port, proto", [
    ("8080:80", "", "8080", 80, "tcp"),
    ("127.0.0.1:8080:80", "127.0.0.1", "8080", 80, "tcp"),
    ("[::1]:8080:80", "::1", "8080", 80, "tcp"),
    ("[2001:db8::1]:8080:80", "2001:db8::1", "8080", 80, "tcp"),
    ("[2001:0db8:0::1]::53/udp", "2001:db8::1", "", 53, "udp"),
    ("::1:8080:80", "::1", "8080", 80, "tcp"),            # Docker takes it bare too
    ("[::]:8080:80", "::", "8080", 80, "tcp"),
])
def test_publish_host_addresses(entry, host_ip, host_port, container_port, proto) -> None:
    assert ports.parse_publish([entry]) == [{"container_port": container_port, "proto": proto,
                                             "host_ip": host_ip, "host_port": host_port}]


@pytest.mark.parametrize("entry", ["[::1]:80", "[::1]80:80", "[::1:8080:80", "[fe80::1%eth0]:1:2",
                                   "1.2.3:1:2", "a:b:c:d", "[::1]:8080:"])
def test_publish_bad_host_addresses(entry) -> None:
    with pytest.raises(ConfigError) as err:
        ports.parse_publish([entry])
    assert "\n" not in str(err.value)


def test_ipv6_addresses_are_shown_in_brackets() -> None:
    assert ports._show("::") == "[::]" and ports._show("0.0.0.0") == "0.0.0.0"
