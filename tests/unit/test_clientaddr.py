"""Whose address a request or handshake counts against."""

import pytest
from django.test import RequestFactory

from core import clientaddr


def scope(peer="198.51.100.9", headers=()):
    return {"client": (peer, 50000) if peer else None, "headers": list(headers)}


@pytest.fixture
def behind_proxy(settings):
    settings.HTTPS = True
    settings.CLIENT_IP_HEADER = "DO-Connecting-IP"


def test_without_the_proxy_the_socket_peer_counts_whatever_the_headers_say(settings):
    settings.HTTPS = False
    headers = [(b"do-connecting-ip", b"203.0.113.5"), (b"x-forwarded-for", b"1.2.3.4")]
    assert clientaddr.from_scope(scope(headers=headers)) == "198.51.100.9"
    request = RequestFactory().get(
        "/", REMOTE_ADDR="198.51.100.9", HTTP_DO_CONNECTING_IP="203.0.113.5"
    )
    assert clientaddr.from_request(request) == "198.51.100.9"


def test_behind_the_proxy_the_platforms_header_counts(behind_proxy):
    headers = [(b"DO-Connecting-IP", b" 203.0.113.5 ")]
    assert clientaddr.from_scope(scope(headers=headers)) == "203.0.113.5"
    request = RequestFactory().get(
        "/", REMOTE_ADDR="10.0.0.1", HTTP_DO_CONNECTING_IP="203.0.113.5"
    )
    assert clientaddr.from_request(request) == "203.0.113.5"


def test_x_forwarded_for_is_never_read(behind_proxy):
    headers = [(b"x-forwarded-for", b"203.0.113.5")]
    assert clientaddr.from_scope(scope(headers=headers)) == "198.51.100.9"


@pytest.mark.parametrize("value", [b"", b"not-an-ip", b"203.0.113.5, 1.2.3.4"])
def test_a_header_that_is_no_address_falls_back_to_the_peer(behind_proxy, value):
    headers = [(b"do-connecting-ip", value)]
    assert clientaddr.from_scope(scope(headers=headers)) == "198.51.100.9"


def test_ipv6_clients_count_per_64_and_mapped_ipv4_as_ipv4(settings):
    settings.HTTPS = False
    one = clientaddr.from_scope(scope(peer="2001:db8:1:2::1"))
    other = clientaddr.from_scope(scope(peer="2001:db8:1:2:ffff::9"))
    assert one == other == "2001:db8:1:2::/64"
    assert clientaddr.from_scope(scope(peer="2001:db8:1:3::1")) != one
    assert clientaddr.from_scope(scope(peer="::ffff:192.0.2.7")) == "192.0.2.7"


def test_no_peer_at_all_is_one_unknown_address(settings):
    settings.HTTPS = False
    assert clientaddr.from_scope(scope(peer=None)) == clientaddr.UNKNOWN


def test_logs_get_a_whole_ipv6_address_and_limits_its_64(settings):
    settings.HTTPS = False
    peer = scope(peer="2001:db8:1:2::1")
    assert clientaddr.from_scope(peer, exact=True) == "2001:db8:1:2::1"
    assert clientaddr.from_scope(peer) == "2001:db8:1:2::/64"
    mapped = scope(peer="::ffff:192.0.2.7")
    assert clientaddr.from_scope(mapped, exact=True) == "192.0.2.7"
