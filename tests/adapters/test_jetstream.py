"""Streams from `StreamSpec`s against a real nats-server (≥ 2.10, started by the test).

The old-server and dropped-transform cases cannot be produced by a current server, and a fake
NATS is not allowed: they are tested on the pure checks instead — the version check on a
version string, and the transform-echo check on a real `StreamInfo` returned by the server
with its transforms removed.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.js import api

from ssmd_infra.adapters import jetstream
from ssmd_infra.core import stream_rules
from ssmd_infra.core.environment import Environment, parse_environment
from ssmd_infra.core.errors import SsmdError
from ssmd_infra.core.streams import (
    StreamSpec,
    client_stream_spec,
    internal_stream_spec,
    stream_specs,
)
from ssmd_infra.core.subjects import client_subject, internal_subject
from ssmd_infra.local.servers import ServerProcess, find_binary, free_port, start_nats

ENV_TEMPLATE = """
name: {name}
feed: kalshi
symbols:
  BTCUSD: {{tier: 1}}
  ETHUSD: {{tier: 1}}
  KXHIGHNY-24DEC05-B43.5: {{tier: 2}}
streams:
  internal: {{max_age: 1h, max_bytes: 64Mi, max_msgs: 5000, duplicate_window: 90s}}
  client: {{max_age: 1h, max_bytes: 64Mi, duplicate_window: 90s}}
shards:
  {p}a: {{selector: {{tier: 1, prefix: "BTC*"}}, replicas: 2}}
  {p}b: {{selector: {{tier: 1}}, replicas: 2}}
  {p}c: {{selector: {{tier: 2}}, replicas: 1}}
"""


def make_env(prefix: str) -> Environment:
    return parse_environment(ENV_TEMPLATE.format(name=f"env-{prefix}", p=prefix), "test.yaml")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A private server: these tests list and delete streams, so they do not share one."""
    proc = start_nats(tmp_path_factory.mktemp("nats-streams"))
    yield proc
    proc.stop()


@pytest.fixture
async def nc(server: ServerProcess) -> AsyncIterator[Client]:
    conn = await nats.connect(server.url)
    yield conn
    await conn.close()


async def raw_config(nc: Client, name: str) -> dict[str, object]:
    raw = await jetstream.stream_raw_info(nc, name)
    assert raw is not None, f"stream {name} does not exist"
    config: dict[str, object] = raw["config"]
    return config


async def test_reconcile_creates_shard_streams_before_the_client_stream(
    server: ServerProcess,
) -> None:
    env = make_env("cr")
    actions = await jetstream.reconcile_streams(server.url, stream_specs(env))
    assert actions == [
        "created stream ssmd-internal-cra",
        "created stream ssmd-internal-crb",
        "created stream ssmd-internal-crc",
        "created stream ssmd-client",
    ]
    again = await jetstream.reconcile_streams(server.url, stream_specs(env))
    assert again == [f"unchanged stream {s.name}" for s in stream_specs(env)]


async def test_created_streams_hold_exactly_the_spec(server: ServerProcess, nc: Client) -> None:
    env = make_env("ex")
    await jetstream.reconcile_streams(server.url, stream_specs(env))
    internal = await raw_config(nc, "ssmd-internal-exa")
    assert internal["subjects"] == ["internal.exa.>"]
    assert internal["max_msgs"] == 5000
    assert internal["max_bytes"] == 64 * 2**20
    assert internal["duplicate_window"] == 90 * 10**9
    assert internal["max_age"] == 3600 * 10**9
    assert (internal["storage"], internal["retention"], internal["discard"]) == (
        "file",
        "limits",
        "old",
    )
    client = await raw_config(nc, "ssmd-client")
    assert client.get("subjects") in (None, [])
    assert client["duplicate_window"] == 90 * 10**9  # sourcing streams get none by default
    assert client["sources"] == [
        {
            "name": f"ssmd-internal-ex{x}",
            "subject_transforms": [{"src": f"internal.ex{x}.kalshi.>", "dest": "md.kalshi.>"}],
        }
        for x in "abc"
    ]


async def _wait_last(js: object, stream: str, subject: str) -> api.RawStreamMsg:
    """The last message on `subject` once sourcing has copied it (sourcing is asynchronous)."""
    for _ in range(200):
        try:
            return await js.get_last_msg(stream, subject)  # type: ignore[attr-defined, no-any-return]
        except nats.js.errors.NotFoundError:
            await asyncio.sleep(0.05)
    raise AssertionError(f"{subject} never reached {stream}")


async def test_transforms_merge_every_shard_into_client_subjects(
    server: ServerProcess, nc: Client
) -> None:
    env = make_env("tr")
    await jetstream.reconcile_streams(server.url, stream_specs(env))
    js = nc.jetstream()
    for shard, symbol in (("tra", "BTCUSD"), ("trc", "KXHIGHNY-24DEC05-B43.5")):
        payload = json.dumps({"shard": shard, "symbol": symbol}).encode()
        ack = await js.publish(internal_subject(shard, "kalshi", "trade", symbol), payload)
        assert ack.stream == f"ssmd-internal-{shard}"
        msg = await _wait_last(js, "ssmd-client", client_subject("kalshi", "trade", symbol))
        assert msg.data == payload
    assert (
        client_subject("kalshi", "trade", "KXHIGHNY-24DEC05-B43.5")
        == "md.kalshi.trade.KXHIGHNY-24DEC05-B43%2E5"
    )


async def test_a_message_id_published_twice_is_stored_once(
    server: ServerProcess, nc: Client
) -> None:
    env = make_env("dd")
    await jetstream.reconcile_streams(server.url, stream_specs(env))
    js = nc.jetstream()
    subject = internal_subject("ddb", "kalshi", "trade", "ETHUSD")
    first = await js.publish(subject, b"one", headers={"Nats-Msg-Id": "trade-1"})
    second = await js.publish(subject, b"one again", headers={"Nats-Msg-Id": "trade-1"})
    assert (first.duplicate, second.duplicate) in ((None, True), (False, True))
    info = await js.stream_info("ssmd-internal-ddb")
    assert info.state.messages == 1
    msg = await _wait_last(js, "ssmd-client", client_subject("kalshi", "trade", "ETHUSD"))
    assert msg.data == b"one"
    client_subj = client_subject("kalshi", "trade", "ETHUSD")
    client = await js.stream_info("ssmd-client", subjects_filter=client_subj)
    assert client.state.subjects == {client_subj: 1}


async def test_update_starts_from_the_server_config(server: ServerProcess, nc: Client) -> None:
    env = make_env("up")
    spec = internal_stream_spec(env, "upa")
    await jetstream.reconcile_streams(server.url, [spec])
    # fields ssmd does not manage, changed out of band, must survive an ssmd update
    current = await raw_config(nc, spec.name)
    edited = {**current, "description": "operator note", "max_msgs_per_subject": 100}
    reply = await nc.request(f"$JS.API.STREAM.UPDATE.{spec.name}", json.dumps(edited).encode())
    assert "error" not in json.loads(reply.data)

    bigger = dataclasses.replace(spec, max_bytes=128 * 2**20)
    actions = await jetstream.reconcile_streams(server.url, [bigger])
    assert actions == ["updated stream ssmd-internal-upa: max_bytes 67108864 → 134217728"]
    after = await raw_config(nc, spec.name)
    assert after["max_bytes"] == 128 * 2**20
    assert after["max_msgs"] == 5000
    assert after["duplicate_window"] == 90 * 10**9
    assert after["description"] == "operator note"
    assert after["max_msgs_per_subject"] == 100


async def test_changes_needing_a_replacement_are_refused_before_anything_changes(
    server: ServerProcess, nc: Client
) -> None:
    env = make_env("rp")
    specs = stream_specs(env)
    await jetstream.reconcile_streams(server.url, specs)
    changed = [
        dataclasses.replace(specs[0], max_bytes=32 * 2**20),  # updatable on its own
        dataclasses.replace(specs[1], storage="memory"),  # needs a replacement
        dataclasses.replace(specs[2], retention="workqueue"),  # needs a replacement
        specs[3],
    ]
    with pytest.raises(SsmdError) as err:
        await jetstream.reconcile_streams(server.url, changed)
    message = str(err.value)
    assert "ssmd-internal-rpb: storage file → memory" in message
    assert "ssmd-internal-rpc: retention limits → workqueue" in message
    assert "deletes their stored messages" in message
    assert (await raw_config(nc, "ssmd-internal-rpa"))["max_bytes"] == 64 * 2**20


async def test_delete_absent_prefix_removes_streams_of_dropped_shards_only(
    server: ServerProcess, nc: Client
) -> None:
    env = make_env("dl")
    specs = stream_specs(env)
    await jetstream.reconcile_streams(server.url, specs)
    js = nc.jetstream()
    await js.add_stream(name="unrelated-dl", subjects=["unrelated.dl.>"])
    remaining = [specs[0], specs[1], client_stream_spec(env, ["dla", "dlb"])]
    actions = await jetstream.reconcile_streams(
        server.url, remaining, delete_absent_prefix="ssmd-internal-dl"
    )
    assert actions[-1] == "deleted stream ssmd-internal-dlc (not in the environment)"
    assert "updated stream ssmd-client: sources" in actions[2]
    names = await jetstream.stream_names(nc)
    assert "ssmd-internal-dlc" not in names
    assert {"ssmd-internal-dla", "ssmd-internal-dlb", "unrelated-dl"} <= set(names)


async def test_unreachable_nats_is_a_clear_error_without_a_hang() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    with pytest.raises(SsmdError, match=f"cannot connect to NATS at {url}"):
        await jetstream.reconcile_streams(url, stream_specs(make_env("un")))


async def test_credentials_in_the_url_never_appear_in_errors() -> None:
    url = f"nats://admin:hunter2@127.0.0.1:{free_port()}"
    with pytest.raises(SsmdError) as err:
        await jetstream.reconcile_streams(url, stream_specs(make_env("cu")))
    assert "hunter2" not in str(err.value)
    assert "nats://***@127.0.0.1" in str(err.value)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://nats:4222", "scheme must be one of"),
        ("nats://:4222", "no host"),
        ("nats://nats:notaport", "malformed NATS URL"),
        ("", "non-empty"),
    ],
)
async def test_malformed_nats_urls_are_refused(url: str, why: str) -> None:
    with pytest.raises(SsmdError, match=why):
        await jetstream.reconcile_streams(url, stream_specs(make_env("mu")))


async def test_invalid_specs_are_refused_before_connecting() -> None:
    spec = internal_stream_spec(make_env("iv"), "iva")
    bad = [dataclasses.replace(spec, max_bytes=0), dataclasses.replace(spec, name="x", max_age=-1)]
    with pytest.raises(SsmdError) as err:
        await jetstream.reconcile_streams("nats://127.0.0.1:1", bad)
    assert "stream 'ssmd-internal-iva': max_bytes must be positive" in str(err.value)
    assert "stream 'x': max_age must be positive" in str(err.value)


async def test_check_server_accepts_the_running_server(nc: Client) -> None:
    await jetstream.check_server(nc)


async def test_check_server_refuses_a_connection_reporting_an_old_version(nc: Client) -> None:
    """The INFO of a real connection, with the version an old server (Debian's 2.9.10) sends."""
    nc._server_info = {**nc._server_info, "version": "2.9.10"}
    with pytest.raises(SsmdError, match=r"nats-server 2\.9\.10 is too old: ssmd needs ≥ 2\.10"):
        await jetstream.check_server(nc)


@pytest.mark.parametrize("version", ["2.9.10", "2.9.25", "1.4.1"])
def test_servers_older_than_2_10_are_refused_because_transforms_would_be_ignored(
    version: str,
) -> None:
    with pytest.raises(SsmdError) as err:
        stream_rules.require_server_version(version)
    assert f"nats-server {version} is too old" in str(err.value)
    assert "silently ignore" in str(err.value)


@pytest.mark.parametrize("version", ["2.10.0", "2.11.4", "2.15.1", "v3.0.0-beta.1"])
def test_servers_from_2_10_are_accepted(version: str) -> None:
    stream_rules.require_server_version(version)


async def test_a_stream_info_without_the_transforms_is_refused(
    server: ServerProcess, nc: Client
) -> None:
    env = make_env("ve")
    specs = stream_specs(env)
    await jetstream.reconcile_streams(server.url, specs)
    raw = await jetstream.stream_raw_info(nc, "ssmd-client")
    assert raw is not None
    stream_rules.verify_transforms(specs[-1], raw["config"])  # the real reply echoes them
    stripped = copy.deepcopy(raw["config"])
    for source in stripped["sources"]:
        source.pop("subject_transforms", None)
    with pytest.raises(SsmdError) as err:
        stream_rules.verify_transforms(specs[-1], stripped)
    assert "did not keep the subject transforms of stream 'ssmd-client'" in str(err.value)
    assert "ssmd-internal-vea: internal.vea.kalshi.> → md.kalshi.>" in str(err.value)


async def test_a_server_without_jetstream_is_a_clear_error(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [find_binary("nats-server"), "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):  # wait until it listens
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        with pytest.raises(SsmdError, match="JetStream is not enabled"):
            await jetstream.reconcile_streams(
                f"nats://127.0.0.1:{port}", stream_specs(make_env("nj"))
            )
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_server_json_carries_every_field_of_the_spec() -> None:
    env = make_env("sc")
    config = stream_rules.desired_config_json(client_stream_spec(env))
    assert config["name"] == "ssmd-client"
    assert "subjects" not in config
    assert (config["storage"], config["retention"], config["discard"]) == ("file", "limits", "old")
    assert (config["max_age"], config["max_bytes"], config["max_msgs"]) == (
        3600 * 10**9,
        64 * 2**20,
        -1,
    )
    assert (config["num_replicas"], config["duplicate_window"]) == (1, 90 * 10**9)
    assert [(s["name"], s["subject_transforms"]) for s in config["sources"]] == [
        (
            f"ssmd-internal-sc{x}",
            [{"src": f"internal.sc{x}.kalshi.>", "dest": "md.kalshi.>"}],
        )
        for x in "abc"
    ]
    internal = stream_rules.desired_config_json(internal_stream_spec(env, "sca"))
    assert internal["subjects"] == ["internal.sca.>"]
    assert internal["max_msgs"] == 5000


def test_spec_round_trips_through_the_server_json_form() -> None:
    for spec in stream_specs(make_env("rt")):
        echoed = stream_rules.spec_from_config(stream_rules.desired_config_json(spec))
        assert stream_rules.spec_differences(echoed, spec) == {}
        assert echoed == spec


def test_spec_differences_name_each_changed_field() -> None:
    spec: StreamSpec = internal_stream_spec(make_env("df"), "dfa")
    other = dataclasses.replace(spec, max_age=7200.0, replicas=3)
    diffs = stream_rules.spec_differences(spec, other)
    assert diffs == {"max_age": (3600.0, 7200.0), "replicas": (1, 3)}
    assert stream_rules.describe_differences(diffs) == "max_age 3600 → 7200, replicas 1 → 3"


# ----------------------------------------------------------------------------- republish


def make_republish_env(prefix: str, republish: bool = True) -> Environment:
    text = ENV_TEMPLATE.format(name=f"env-{prefix}", p=prefix).replace(
        "duplicate_window: 90s}\n  client",
        f"duplicate_window: 90s, republish: {str(republish).lower()}}}\n  client",
    )
    env = parse_environment(text, "test.yaml")
    assert env.streams.internal.republish is republish
    return env


async def _received(sub: nats.aio.subscription.Subscription, count: int) -> list[nats.aio.msg.Msg]:
    return [await sub.next_msg(timeout=5) for _ in range(count)]


async def test_republish_carries_every_stored_message_to_core_client_subjects(
    server: ServerProcess, nc: Client
) -> None:
    env = make_republish_env("rp")
    await jetstream.reconcile_streams(server.url, stream_specs(env))
    config = await raw_config(nc, "ssmd-internal-rpa")
    assert config["republish"] == {"src": "internal.rpa.kalshi.>", "dest": "md.kalshi.>"}
    client = await raw_config(nc, "ssmd-client")
    assert "republish" not in client  # the client stream keeps replay; it republishes nothing
    symbol = "KXHIGHNY-24DEC05-B43.5"
    sub = await nc.subscribe(client_subject("kalshi", "trade", symbol))
    others = await nc.subscribe("md.kalshi.>")
    await nc.flush()
    js = nc.jetstream()
    subject = internal_subject("rpc", "kalshi", "trade", symbol)
    payload = json.dumps({"type": "trade", "msg": {"market_ticker": symbol}}).encode()
    first = await js.publish(subject, payload, headers={"Nats-Msg-Id": "trade:rp-1"})
    again = await js.publish(subject, b"resent", headers={"Nats-Msg-Id": "trade:rp-1"})
    assert (first.duplicate, again.duplicate) in ((None, True), (False, True))
    later = await js.publish(subject, b"later", headers={"Nats-Msg-Id": "trade:rp-2"})
    assert later.seq == first.seq + 1
    got = await _received(sub, 2)
    assert got[0].subject == "md.kalshi.trade.KXHIGHNY-24DEC05-B43%2E5"
    assert got[0].data == payload
    assert got[0].headers is not None and got[0].headers["Nats-Msg-Id"] == "trade:rp-1"
    # The server says where the copy came from: stream, subject and sequence.
    assert got[0].headers["Nats-Stream"] == "ssmd-internal-rpc"
    assert got[0].headers["Nats-Subject"] == subject
    assert int(got[0].headers["Nats-Sequence"]) == first.seq
    # dedup happens before the store: the duplicate is not republished
    assert [m.data for m in got] == [payload, b"later"]
    # every shard republishes, each under the same client subject space
    await js.publish(internal_subject("rpa", "kalshi", "trade", "BTCUSD"), b"btc")
    seen = [m.subject for m in await _received(others, 3)]
    assert seen == [got[0].subject, got[1].subject, "md.kalshi.trade.BTCUSD"]
    with pytest.raises(nats.errors.TimeoutError):
        await others.next_msg(timeout=0.3)  # nothing else: one copy per stored message
    await sub.unsubscribe()
    await others.unsubscribe()


async def test_without_republish_nothing_reaches_the_client_subjects_on_core(
    server: ServerProcess, nc: Client
) -> None:
    env = make_republish_env("ro", republish=False)
    assert all(spec.republish is None for spec in stream_specs(env))
    await jetstream.reconcile_streams(server.url, stream_specs(env))
    assert "republish" not in await raw_config(nc, "ssmd-internal-roa")
    sub = await nc.subscribe("md.kalshi.>")
    await nc.flush()
    js = nc.jetstream()
    await js.publish(internal_subject("roa", "kalshi", "trade", "BTCUSD"), b"x")
    await _wait_last(js, "ssmd-client", client_subject("kalshi", "trade", "BTCUSD"))  # sourced
    with pytest.raises(nats.errors.TimeoutError):
        await sub.next_msg(timeout=0.3)
    await sub.unsubscribe()


async def test_turning_republish_on_is_an_update_in_place(
    server: ServerProcess, nc: Client
) -> None:
    off = internal_stream_spec(make_republish_env("ru", republish=False), "rua")
    on = internal_stream_spec(make_republish_env("ru"), "rua")
    await jetstream.reconcile_streams(server.url, [off])
    js = nc.jetstream()
    subject = internal_subject("rua", "kalshi", "trade", "BTCUSD")
    await js.publish(subject, b"before", headers={"Nats-Msg-Id": "trade:ru-1"})
    actions = await jetstream.reconcile_streams(server.url, [on])
    assert actions == [
        "updated stream ssmd-internal-rua: republish none → internal.rua.kalshi.> → md.kalshi.>"
    ]
    info = await js.stream_info("ssmd-internal-rua")
    assert info.state.messages == 1  # not replaced: the stored message is still there
    sub = await nc.subscribe("md.kalshi.>")
    await nc.flush()
    await js.publish(subject, b"after", headers={"Nats-Msg-Id": "trade:ru-2"})
    assert (await sub.next_msg(timeout=5)).data == b"after"
    # and back off, in place too
    back = await jetstream.reconcile_streams(server.url, [off])
    assert back == [
        "updated stream ssmd-internal-rua: republish internal.rua.kalshi.> → md.kalshi.> → none"
    ]
    assert "republish" not in await raw_config(nc, "ssmd-internal-rua")
    assert (await js.stream_info("ssmd-internal-rua")).state.messages == 2
    await sub.unsubscribe()


def test_republish_round_trips_through_the_config_forms() -> None:
    env = make_republish_env("rr")
    spec = internal_stream_spec(env, "rra")
    config = stream_rules.desired_config_json(spec)
    assert config["republish"] == {
        "src": "internal.rra.kalshi.>",
        "dest": "md.kalshi.>",
        "headers_only": False,
    }
    echoed = stream_rules.spec_from_config(stream_rules.desired_config_json(spec))
    assert echoed == spec
    assert StreamSpec.from_dict(spec.to_dict()) == spec
    off = internal_stream_spec(make_env("rr"), "rra")
    assert "republish" not in off.to_dict()
    assert "republish" not in stream_rules.desired_config_json(off)
    # a current config holding a republish loses it when the spec has none
    assert "republish" not in stream_rules.desired_config_json(
        off, stream_rules.desired_config_json(spec)
    )


def test_a_reply_without_the_republish_is_refused() -> None:
    spec = internal_stream_spec(make_republish_env("rv"), "rva")
    stream_rules.verify_republish(spec, stream_rules.desired_config_json(spec))
    with pytest.raises(SsmdError, match="did not keep the republish of stream 'ssmd-internal-rva'"):
        stream_rules.verify_republish(spec, {"name": spec.name})


def test_the_mapping_checks_cover_republish() -> None:
    from ssmd_infra.core.checks import mapping_checks, mapping_problems

    on = make_republish_env("mc")
    specs = stream_specs(on)
    assert mapping_problems(on, specs) == []
    assert "each republishes to it" in mapping_checks(on)[0].message
    missing = [
        dataclasses.replace(s, republish=None) if s.name.endswith("mcb") else s for s in specs
    ]
    assert mapping_problems(on, missing) == [
        "stream ssmd-internal-mcb does not republish internal.mcb.kalshi.> → md.kalshi.>"
    ]
    off = make_env("mc")
    assert mapping_problems(off, stream_specs(off)) == []
    assert mapping_problems(off, specs[:1] + stream_specs(off)[1:]) == [
        "stream ssmd-internal-mca republishes to md.kalshi.>, but streams.internal.republish is off"
    ]
    capture = dataclasses.replace(specs[-1], subjects=("md.>",))
    assert mapping_problems(on, [*specs[:-1], capture]) == [
        "stream ssmd-client captures md.>, which overlaps the republished md.kalshi.>: every "
        "message would be stored twice"
    ]
