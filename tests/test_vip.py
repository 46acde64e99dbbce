"""The VIP adapter on the FakeRunner, answered with what real iproute2 6.1 and iputils arping
20221126 printed in a namespace lab (captured for these tests; the same calls against the real
tools are in ``test_target_vip_real.py``).
"""

from __future__ import annotations

import logging

import pytest
from fakes import FakeRunner, result
from iscsi_ha.controller.model import VipObservation
from iscsi_ha.controller.systems.runner import CommandResult
from iscsi_ha.controller.systems.vip import (
    AddrParseError,
    AddrState,
    Vip,
    parse_addr_show,
    parse_arping,
)

# `ip -o addr show dev eth0` in the lab (note the literal backslash ip -o puts before the
# continuation of each record).
ADDR_NO_VIP = (
    "2: eth0    inet 10.99.0.1/24 scope global eth0\\       valid_lft forever"
    " preferred_lft forever\n"
    "2: eth0    inet6 fe80::ae:d2ff:fe2d:d21d/64 scope link tentative \\       valid_lft forever"
    " preferred_lft forever\n"
)
ADDR_VIP = (
    "2: eth0    inet 10.99.0.1/24 scope global eth0\\       valid_lft forever"
    " preferred_lft forever\n"
    "2: eth0    inet 10.99.0.3/24 scope global secondary eth0\\       valid_lft forever"
    " preferred_lft forever\n"
    "2: eth0    inet6 fe80::ae:d2ff:fe2d:d21d/64 scope link tentative \\       valid_lft forever"
    " preferred_lft forever\n"
)
ADDR_VIP_BOTH_PREFIXES = (
    "2: eth0    inet 10.99.0.1/24 scope global eth0\\       valid_lft forever"
    " preferred_lft forever\n"
    "2: eth0    inet 10.99.0.3/16 scope global eth0\\       valid_lft forever"
    " preferred_lft forever\n"
    "2: eth0    inet 10.99.0.3/24 scope global secondary eth0\\       valid_lft forever"
    " preferred_lft forever\n"
    "2: eth0    inet6 fe80::ae:d2ff:fe2d:d21d/64 scope link tentative \\       valid_lft forever"
    " preferred_lft forever\n"
)
ADDR_VIP_OTHER_PREFIX = (
    "2: eth0    inet 10.99.0.1/24 scope global eth0\\       valid_lft forever"
    " preferred_lft forever\n"
    "2: eth0    inet 10.99.0.3/16 scope global eth0\\       valid_lft forever"
    " preferred_lft forever\n"
)
NO_DEVICE_SHOW = (1, 'Device "xenbr0" does not exist.\n')
NO_DEVICE_ADD = (1, 'Cannot find device "xenbr0"\n')
ALREADY = (2, "Error: ipv4: Address already assigned.\n")
NOT_FOUND = (2, "Error: ipv4: Address not found.\n")
ARPING_NO_DEVICE = (2, "arping: Device xenbr0 not available.\n")
ARPING_REPLY = (
    "ARPING 10.99.0.3 from 0.0.0.0 eth0\n"
    "Unicast reply from 10.99.0.3 [E6:7E:4A:BE:AC:80]  0.560ms\n"
    "Sent 1 probes (1 broadcast(s))\nReceived 1 response(s)\n"
)
# node1 had just dropped the VIP; its background `arping -U` was still announcing it.
ARPING_ANNOUNCEMENT = (
    "ARPING 10.99.0.3 from 0.0.0.0 eth0\n"
    "Broadcast request from 10.99.0.3 [46:91:C2:AD:77:34] for 10.99.0.3 [FF:FF:FF:FF:FF:FF]"
    " 938.658ms\n"
    "Sent 1 probes (1 broadcast(s))\nReceived 1 response(s) (1 request(s), 1 broadcast(s))\n"
)
ARPING_SILENT = (
    "ARPING 10.99.0.3 from 0.0.0.0 eth0\nSent 2 probes (2 broadcast(s))\nReceived 0 response(s)\n"
)

VIP = "10.99.0.3/24"
SHOW = ("ip", "-o", "addr", "show", "dev", "eth0")


def make(fake: FakeRunner, **kw) -> Vip:
    kw.setdefault("address", VIP)
    kw.setdefault("interface", "eth0")
    return Vip(fake, **kw)


# --------------------------------------------------------------------------------------------
# parse_addr_show
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,expected",
    [
        (ADDR_NO_VIP, AddrState(False)),
        ("", AddrState(False)),  # an interface without addresses prints nothing
        (ADDR_VIP, AddrState(True, ("10.99.0.3/24",))),
        (ADDR_VIP_BOTH_PREFIXES, AddrState(True, ("10.99.0.3/16", "10.99.0.3/24"))),
        (
            ADDR_VIP_OTHER_PREFIX,
            AddrState(
                True,
                ("10.99.0.3/16",),
                "10.99.0.3 is bound as 10.99.0.3/16, configured as 10.99.0.3/24",
            ),
        ),
    ],
)
def test_parse_addr_show(text, expected):
    assert parse_addr_show(text, VIP) == expected


def test_parse_addr_show_compares_addresses_not_strings():
    assert not parse_addr_show(ADDR_VIP, "10.99.0.30/24").local
    assert parse_addr_show(ADDR_NO_VIP, "10.99.0.1/24").local  # the node's own address


def test_parse_addr_show_ignores_other_families():
    text = ADDR_VIP.replace(" inet6 ", " mpls ")
    assert parse_addr_show(text, VIP).local


@pytest.mark.parametrize(
    "text", ["Device not ready\n", "2: eth0    inet not-an-address scope global eth0\n"]
)
def test_parse_addr_show_refuses_what_it_cannot_read(text):
    with pytest.raises(AddrParseError):
        parse_addr_show(text, VIP)


# --------------------------------------------------------------------------------------------
# observe
# --------------------------------------------------------------------------------------------


def test_observe_local_and_not():
    fake = FakeRunner()
    fake.answer(SHOW, stdout=ADDR_VIP)
    assert make(fake).observe() == VipObservation(VIP, "eth0", local=True)
    fake.answer(SHOW, stdout=ADDR_NO_VIP)
    obs = make(fake).observe()
    assert obs == VipObservation(VIP, "eth0", local=False)
    assert obs.conflict is None  # the controller fills it from the periodic probe


def test_observe_other_prefix_is_local_and_warns_once(caplog):
    fake = FakeRunner()
    fake.answer(SHOW, stdout=ADDR_VIP_OTHER_PREFIX)
    vip = make(fake)
    with caplog.at_level(logging.WARNING):
        assert vip.observe() == VipObservation(VIP, "eth0", local=True)
        vip.observe()
    assert [r.getMessage() for r in caplog.records] == [
        "VIP prefix differs from the configuration: "
        "10.99.0.3 is bound as 10.99.0.3/16, configured as 10.99.0.3/24"
    ]


def test_observe_missing_interface_is_an_error_quoting_ip():
    fake = FakeRunner()
    fake.answer(
        ("ip", "-o", "addr", "show", "dev", "xenbr0"), *NO_DEVICE_SHOW[:1], stderr=NO_DEVICE_SHOW[1]
    )
    obs = make(fake, interface="xenbr0").observe()
    assert not obs.local
    assert obs.error == (
        "cannot read `ip -o addr show dev xenbr0`: `ip -o addr show dev xenbr0` "
        'failed (rc 1): Device "xenbr0" does not exist.'
    )


def test_observe_unreadable_output_is_an_error_quoting_it():
    fake = FakeRunner()
    fake.answer(SHOW, stdout="something else entirely\n")
    obs = make(fake).observe()
    assert obs.error and "'something else entirely'" in obs.error


def test_an_invalid_address_is_refused_at_construction():
    with pytest.raises(ValueError):
        make(FakeRunner(), address="10.99.0.300/24")


# --------------------------------------------------------------------------------------------
# bind / unbind / announce
# --------------------------------------------------------------------------------------------


def test_bind():
    fake = FakeRunner()
    fake.answer(("ip", "addr", "add"))
    assert make(fake).bind().ok
    assert fake.calls == [("ip", "addr", "add", VIP, "dev", "eth0")]


def test_bind_already_present_is_success():
    fake = FakeRunner()
    fake.answer(("ip", "addr", "add"), ALREADY[0], stderr=ALREADY[1])
    res = make(fake).bind()
    assert res.ok and "already" in res.message


def test_bind_missing_interface_fails_with_ips_words():
    fake = FakeRunner()
    fake.answer(("ip", "addr", "add"), NO_DEVICE_ADD[0], stderr=NO_DEVICE_ADD[1])
    res = make(fake, interface="xenbr0").bind()
    assert not res.ok and 'Cannot find device "xenbr0"' in res.message


def test_unbind_removes_the_configured_address_in_one_command():
    fake = FakeRunner()
    fake.answer(("ip", "addr", "del"))
    res = make(fake).unbind()
    assert res.ok and "removed" in res.message
    assert fake.calls == [("ip", "addr", "del", VIP, "dev", "eth0")]


def test_unbind_absent_is_success():
    fake = FakeRunner()
    fake.answer(SHOW, stdout=ADDR_NO_VIP)
    fake.answer(("ip", "addr", "del"), NOT_FOUND[0], stderr=NOT_FOUND[1])
    res = make(fake).unbind()
    assert res.ok and "not on eth0" in res.message
    assert fake.calls == [("ip", "addr", "del", VIP, "dev", "eth0"), SHOW]


def test_unbind_removes_the_address_with_the_prefix_it_really_has():
    fake = FakeRunner()
    fake.answer(SHOW, stdout=ADDR_VIP_OTHER_PREFIX)
    fake.answer(("ip", "addr", "del", VIP), NOT_FOUND[0], stderr=NOT_FOUND[1])
    fake.answer(("ip", "addr", "del", "10.99.0.3/16"))
    res = make(fake).unbind()
    assert res.ok and "10.99.0.3/16 removed" in res.message
    assert fake.ran("ip", "addr", "del") == [
        ("ip", "addr", "del", VIP, "dev", "eth0"),
        ("ip", "addr", "del", "10.99.0.3/16", "dev", "eth0"),
    ]


def test_unbind_failure_is_reported():
    fake = FakeRunner()
    fake.answer(("ip", "addr", "del"), NO_DEVICE_ADD[0], stderr=NO_DEVICE_ADD[1])
    res = make(fake, interface="xenbr0").unbind()
    assert not res.ok and "Cannot find device" in res.message
    assert len(fake.calls) == 1


def test_announce_runs_in_the_background():
    fake = FakeRunner()
    res = make(fake, announce_count=3).announce()
    assert res.ok
    assert fake.calls == []  # nothing waited for
    assert fake.spawned == [("arping", "-U", "-I", "eth0", "-c", "3", "10.99.0.3")]


def test_unbind_ends_a_running_announcement_before_the_address_goes():
    # arping -U goes on announcing the VIP from here after `ip addr del`, and each of its packets
    # points the clients' ARP caches back at this host, past the new holder's announcement.
    fake = FakeRunner()
    fake.answer(("ip", "addr", "del"))
    vip = make(fake)
    assert vip.announce().ok and vip.announce().ok  # a second one ends the first
    assert vip.unbind().ok
    (arping,) = set(fake.spawned)
    assert fake.stopped == [(arping, 0), (arping, 0)]  # before `ip addr del`, the first call
    assert fake.calls[0][:3] == ("ip", "addr", "del")
    assert vip.unbind().ok and len(fake.stopped) == 2  # nothing left to end


# --------------------------------------------------------------------------------------------
# probe_conflict
# --------------------------------------------------------------------------------------------

PROBE = ("arping", "-D", "-I", "eth0", "-c", "2", "-w", "2", "10.99.0.3")


def test_probe_conflict_someone_answers():
    fake = FakeRunner()
    fake.answer(PROBE, rc=1, stdout=ARPING_REPLY)
    assert make(fake).probe_conflict() is True
    assert fake.calls == [PROBE]


def test_probe_conflict_nobody_answers():
    fake = FakeRunner()
    fake.answer(PROBE, rc=0, stdout=ARPING_SILENT)
    assert make(fake).probe_conflict() is False


def test_parse_arping():
    assert parse_arping(ARPING_REPLY) == (("reply", "E6:7E:4A:BE:AC:80"),)
    assert parse_arping(ARPING_ANNOUNCEMENT) == (("request", "46:91:C2:AD:77:34"),)
    assert parse_arping(ARPING_SILENT) == ()


def test_probe_conflict_ignores_a_lingering_announcement():
    fake = FakeRunner()
    answers = [result(PROBE, 1, ARPING_ANNOUNCEMENT), result(PROBE, 0, ARPING_SILENT)]
    fake.answer_with(PROBE, lambda argv: answers.pop(0))
    assert make(fake).probe_conflict() is False
    assert fake.calls == [PROBE, PROBE]


def test_probe_conflict_announcement_then_reply():
    fake = FakeRunner()
    answers = [result(PROBE, 1, ARPING_ANNOUNCEMENT), result(PROBE, 1, ARPING_REPLY)]
    fake.answer_with(PROBE, lambda argv: answers.pop(0))
    assert make(fake).probe_conflict() is True


def test_probe_conflict_endless_announcements_are_a_conflict_after_bounded_tries():
    fake = FakeRunner()
    fake.answer(PROBE, rc=1, stdout=ARPING_ANNOUNCEMENT)
    assert make(fake).probe_conflict() is True
    assert len(fake.calls) == 3


def test_probe_conflict_rc_1_with_unknown_words_trusts_the_rc():
    fake = FakeRunner()
    fake.answer(PROBE, rc=1, stdout="Antwort von 10.99.0.3\n")
    assert make(fake).probe_conflict() is True
    assert len(fake.calls) == 1


def test_probe_conflict_cannot_tell(caplog):
    fake = FakeRunner()
    fake.answer(("arping",), ARPING_NO_DEVICE[0], stderr=ARPING_NO_DEVICE[1])
    with caplog.at_level(logging.WARNING):
        assert make(fake, interface="xenbr0").probe_conflict() is None
    assert "Device xenbr0 not available" in caplog.text


def test_probe_conflict_timed_out_is_unknown():
    fake = FakeRunner()
    fake.answer_with(PROBE, lambda argv: CommandResult(argv, 124, "", "", 5.0, True))
    assert make(fake).probe_conflict() is None


def test_probe_gives_arping_time_to_finish_its_own_deadline():
    seen = []

    class Recording(FakeRunner):
        def run(self, argv, timeout=None, input=None):
            seen.append(timeout)
            return super().run(argv, timeout, input)

    fake = Recording()
    fake.answer(PROBE, rc=0)
    make(fake, timeout=1.0).probe_conflict()
    assert seen[0] >= 3.0  # arping -w 2 must not be killed by a short command timeout
