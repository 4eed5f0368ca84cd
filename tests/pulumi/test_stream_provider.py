"""The JetStream dynamic provider's methods against a real nats-server.

The engine calls these methods in a separate process after unpickling the provider with
dill; the last tests do exactly that, in this interpreter and in a fresh one.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import dill
import pytest
from pulumi.dynamic import Config, ConfigureRequest
from pulumi.dynamic.dynamic import serialize_provider

from ssmd_infra.adapters import jetstream
from ssmd_infra.core.environment import Environment, parse_environment
from ssmd_infra.core.errors import SsmdError
from ssmd_infra.core.streams import StreamSpec, client_stream_spec, internal_stream_spec
from ssmd_infra.local.servers import ServerProcess, free_port, start_nats
from ssmd_infra.pulumi.stream_provider import NatsStreamProvider, props_from_spec, spec_from_props

PROVIDER_KEY = "__provider"


def make_env(prefix: str) -> Environment:
    text = f"""
name: env-{prefix}
feed: kalshi
symbols: {{BTCUSD: {{tier: 1}}, PRES-2028-DEM: {{tier: 2}}}}
streams:
  internal: {{max_age: 1h, max_bytes: 64Mi, max_msgs: 5000, duplicate_window: 90s}}
  client: {{max_age: 1h, max_bytes: 64Mi, duplicate_window: 90s}}
shards:
  {prefix}a: {{selector: {{tier: 1}}, replicas: 2}}
  {prefix}b: {{selector: {{tier: 2}}, replicas: 1}}
"""
    return parse_environment(text, "test.yaml")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_nats(tmp_path_factory.mktemp("nats-provider"))
    yield proc
    proc.stop()


def props(spec: StreamSpec, provider: str = "pickled-provider-A") -> dict[str, Any]:
    return {**props_from_spec(spec), PROVIDER_KEY: provider}


def configuration(url: str) -> ConfigureRequest:
    """What the provider host hands `configure`: the stack's configuration."""
    return ConfigureRequest(Config({"ssmd:natsAdminUrl": url}, "ssmd"))


def at(url: str) -> NatsStreamProvider:
    """A provider configured as the engine configures it, with `url` as the admin URL."""
    provider = NatsStreamProvider()
    provider.configure(configuration(url))
    return provider


# The provider's methods are synchronous (they run their own event loop, as in the engine),
# so the tests are too; these helpers look at and change the server out of band.


def server_config(url: str, name: str) -> dict[str, Any] | None:
    async def go() -> dict[str, Any] | None:
        async with jetstream.connect(url) as nc:
            raw = await jetstream.stream_raw_info(nc, name)
        return None if raw is None else raw["config"]

    return asyncio.run(go())


def change_out_of_band(url: str, name: str, **fields: object) -> None:
    async def go() -> None:
        async with jetstream.connect(url) as nc:
            raw = await jetstream.stream_raw_info(nc, name)
            assert raw is not None
            body = json.dumps({**raw["config"], **fields}).encode()
            reply = json.loads((await nc.request(f"$JS.API.STREAM.UPDATE.{name}", body)).data)
            assert "error" not in reply, reply

    asyncio.run(go())


def reconcile(url: str, specs: list[StreamSpec]) -> None:
    asyncio.run(jetstream.reconcile_streams(url, specs))


def test_create_makes_the_stream_and_returns_its_outputs(server: ServerProcess) -> None:
    spec = internal_stream_spec(make_env("cr"), "cra")
    result = at(server.url).create(props(spec))
    assert result.id == "ssmd-internal-cra"
    assert result.outs == props_from_spec(spec)
    config = server_config(server.url, "ssmd-internal-cra")
    assert config is not None and config["subjects"] == ["internal.cra.>"]


def test_create_adopts_an_existing_stream_that_already_matches(server: ServerProcess) -> None:
    env = make_env("ad")
    spec = internal_stream_spec(env, "ada")
    reconcile(server.url, [spec])
    result = at(server.url).create(props(spec))
    assert result.id == "ssmd-internal-ada"
    assert spec_from_props(result.outs or {}) == spec


def test_create_refuses_an_existing_stream_with_another_config(server: ServerProcess) -> None:
    spec = internal_stream_spec(make_env("cx"), "cxa")
    reconcile(server.url, [dataclasses.replace(spec, max_bytes=1024 * 1024)])
    with pytest.raises(SsmdError, match="already exists with a different configuration") as exc:
        at(server.url).create(props(spec))
    assert "cannot be imported into the stack" in str(exc.value)
    assert "nats stream rm ssmd-internal-cxa" in str(exc.value)


def test_diff_ignores_the_pickled_provider_and_number_formats() -> None:
    spec = internal_stream_spec(make_env("df"), "dfa")
    olds = {**props(spec, provider="pickled-provider-A"), "nats_url": "nats://old:4222"}
    news = props(spec, provider="pickled-provider-B")  # state before the URL left the props
    news["max_age"] = int(spec.max_age)  # 3600 vs 3600.0 after a round trip through the engine
    result = at("nats://nats:4222").diff("ssmd-internal-dfa", olds, news)
    assert (result.changes, result.replaces, result.delete_before_replace) == (False, [], False)


def test_diff_after_read_shows_no_change_from_server_filled_defaults(
    server: ServerProcess,
) -> None:
    spec = client_stream_spec(make_env("sd"))
    for shard in ("sda", "sdb"):
        reconcile(server.url, [internal_stream_spec(make_env("sd"), shard)])
    provider = at(server.url)
    provider.create(props(spec))
    read = provider.read("ssmd-client", props(spec))
    assert read.id == "ssmd-client"
    result = provider.diff("ssmd-client", {**(read.outs or {}), PROVIDER_KEY: "x"}, props(spec))
    assert result.changes is False


def test_a_limit_change_is_an_update_in_place() -> None:
    spec = internal_stream_spec(make_env("lc"), "lca")
    result = at("nats://nats:4222").diff(
        "ssmd-internal-lca",
        props(spec),
        props(dataclasses.replace(spec, max_bytes=2 * spec.max_bytes)),
    )
    assert (result.changes, result.replaces, result.delete_before_replace) == (True, [], False)


@pytest.mark.parametrize(
    ("change", "replaced"),
    [
        ({"storage": "memory"}, ["storage"]),
        ({"retention": "workqueue"}, ["retention"]),
        ({"name": "ssmd-internal-other"}, ["name"]),
    ],
)
def test_changes_the_server_refuses_are_replacements_deleted_first(
    change: dict[str, str], replaced: list[str]
) -> None:
    spec = internal_stream_spec(make_env("rp"), "rpa")
    result = at("nats://nats:4222").diff(
        "ssmd-internal-rpa",
        props(spec),
        props(dataclasses.replace(spec, **change)),  # type: ignore[arg-type]
    )
    assert (result.changes, result.replaces, result.delete_before_replace) == (True, replaced, True)


def test_update_keeps_max_msgs_duplicate_window_and_unmanaged_fields(server: ServerProcess) -> None:
    spec = internal_stream_spec(make_env("up"), "upa")
    provider = at(server.url)
    provider.create(props(spec))
    change_out_of_band(server.url, spec.name, max_msgs_per_subject=250)  # not ssmd's field

    wider = dataclasses.replace(spec, max_age=7200.0)
    result = provider.update(spec.name, props(spec), props(wider))
    assert result.outs == props_from_spec(wider)
    after = server_config(server.url, spec.name)
    assert after is not None
    assert after["max_age"] == 7200 * 10**9
    assert after["max_msgs"] == 5000
    assert after["duplicate_window"] == 90 * 10**9
    assert after["max_msgs_per_subject"] == 250


def test_update_refuses_a_storage_change_with_the_reason(server: ServerProcess) -> None:
    spec = internal_stream_spec(make_env("us"), "usa")
    provider = at(server.url)
    provider.create(props(spec))
    memory = dataclasses.replace(spec, storage="memory")
    with pytest.raises(SsmdError, match="storage file → memory"):
        provider.update(spec.name, props(spec), props(memory))


def test_read_after_an_out_of_band_change_shows_the_drift(server: ServerProcess) -> None:
    spec = internal_stream_spec(make_env("rd"), "rda")
    provider = at(server.url)
    created = provider.create(props(spec))
    change_out_of_band(server.url, spec.name, max_bytes=32 * 2**20)
    read = provider.read(spec.name, {**(created.outs or {}), PROVIDER_KEY: "p"})
    assert read.id == spec.name
    assert (read.outs or {})["max_bytes"] == 32 * 2**20
    diff = provider.diff(spec.name, {**(read.outs or {}), PROVIDER_KEY: "p"}, props(spec))
    assert diff.changes is True and diff.replaces == []


def test_read_of_a_deleted_stream_reports_it_gone(server: ServerProcess) -> None:
    spec = internal_stream_spec(make_env("rg"), "rga")
    read = at(server.url).read(spec.name, props(spec))
    assert read.id == ""


def test_delete_removes_the_stream_and_tolerates_it_being_gone(server: ServerProcess) -> None:
    spec = internal_stream_spec(make_env("de"), "dea")
    provider = at(server.url)
    provider.create(props(spec))
    provider.delete(spec.name, props(spec))
    assert server_config(server.url, spec.name) is None
    provider.delete(spec.name, props(spec))


def test_check_reports_bad_limits() -> None:
    spec = internal_stream_spec(make_env("ck"), "cka")
    bad = props(dataclasses.replace(spec, max_bytes=0, duplicate_window=-1.0))
    result = at("nats://nats:4222").check({}, bad)
    reasons = sorted((f.property, f.reason) for f in result.failures)
    assert [p for p, _ in reasons] == ["name", "name"]
    text = " ".join(r for _, r in reasons)
    assert "max_bytes must be positive" in text
    assert "duplicate_window must be positive" in text
    assert at("nats://nats:4222").check({}, props(spec)).failures == []


def test_configure_takes_the_admin_url_else_the_pods_url_and_refuses_a_bad_one() -> None:
    provider = NatsStreamProvider()
    provider.configure(ConfigureRequest(Config({"ssmd:natsUrl": "nats://pods:4222"}, "ssmd")))
    assert provider._url() == "nats://pods:4222"
    with pytest.raises(SsmdError, match=r"ssmd:natsAdminUrl: .*scheme must be one of"):
        NatsStreamProvider().configure(configuration("http://nats:4222"))
    with pytest.raises(SsmdError, match="not set"):
        NatsStreamProvider().configure(ConfigureRequest(Config({}, "ssmd")))
    with pytest.raises(SsmdError, match="not configured"):
        NatsStreamProvider().create(props(internal_stream_spec(make_env("nc"), "nca")))


def test_unreachable_nats_is_a_clear_error() -> None:
    spec = internal_stream_spec(make_env("un"), "una")
    url = f"nats://127.0.0.1:{free_port()}"
    with pytest.raises(SsmdError, match=f"cannot connect to NATS at {url}"):
        at(url).create(props(spec))


def test_the_provider_survives_a_dill_round_trip(server: ServerProcess) -> None:
    blob = serialize_provider(NatsStreamProvider())
    provider = dill.loads(base64.b64decode(blob))
    assert isinstance(provider, NatsStreamProvider)
    provider.configure(configuration(server.url))
    spec = internal_stream_spec(make_env("dl"), "dla")
    assert provider.create(props(spec)).id == spec.name


FRESH_INTERPRETER = """
import base64, json, sys
import dill
from pulumi.dynamic import Config, ConfigureRequest
blob, url, spec_json = sys.argv[1], sys.argv[2], sys.argv[3]
provider = dill.loads(base64.b64decode(blob))
provider.configure(ConfigureRequest(Config({"ssmd:natsAdminUrl": url}, "ssmd")))
props = json.loads(spec_json)
created = provider.create(props)
read = provider.read(created.id, props)
print(json.dumps({"type": type(provider).__module__ + "." + type(provider).__name__,
                  "id": created.id, "read": read.outs}))
"""


def test_the_pickled_provider_works_in_a_fresh_interpreter(server: ServerProcess) -> None:
    """What the engine does: unpickle in another process, configure, call the methods there."""
    blob = serialize_provider(NatsStreamProvider())
    assert server.url.encode() not in base64.b64decode(blob)  # no URL in the pickled provider
    spec = internal_stream_spec(make_env("fi"), "fia")
    out = subprocess.run(
        [sys.executable, "-c", FRESH_INTERPRETER, blob, server.url, json.dumps(spec.to_dict())],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    reply = json.loads(out.stdout)
    assert reply["type"] == "ssmd_infra.pulumi.stream_provider.NatsStreamProvider"
    assert reply["id"] == "ssmd-internal-fia"
    assert spec_from_props(reply["read"]) == spec


def _republish_env(prefix: str) -> Environment:
    env = make_env(prefix)
    on = env.streams.internal.model_copy(update={"republish": True})
    return env.model_copy(update={"streams": env.streams.model_copy(update={"internal": on})})


def test_the_default_has_no_republish_property_and_no_diff() -> None:
    spec = internal_stream_spec(make_env("rn"), "rna")
    assert spec.republish is None
    news = props(spec)
    assert "republish" not in news  # same properties as before the field existed
    result = at("nats://nats:4222").diff("ssmd-internal-rna", props(spec), news)
    assert (result.changes, result.replaces) == (False, [])
    # state written by an engine that kept an explicit null is no change either
    olds = {**props(spec), "republish": None}
    assert at("nats://nats:4222").diff("ssmd-internal-rna", olds, news).changes is False


def test_toggling_republish_is_an_update_not_a_replacement(server: ServerProcess) -> None:
    off = internal_stream_spec(make_env("rt"), "rta")
    on = internal_stream_spec(_republish_env("rt"), "rta")
    assert on.republish is not None
    assert (on.republish.src, on.republish.dest) == ("internal.rta.kalshi.>", "md.kalshi.>")
    provider = at(server.url)
    for old, new in ((off, on), (on, off)):
        result = provider.diff(on.name, props(old), props(new))
        assert (result.changes, result.replaces, result.delete_before_replace) == (True, [], False)
    provider.create(props(off))
    updated = provider.update(on.name, props(off), props(on))
    assert updated.outs == props_from_spec(on)
    config = server_config(server.url, on.name)
    assert config is not None
    assert config["republish"] == {"src": "internal.rta.kalshi.>", "dest": "md.kalshi.>"}
    read = provider.read(on.name, props(on))
    assert read.outs == props_from_spec(on)
    again = provider.diff(on.name, {**(read.outs or {}), PROVIDER_KEY: "x"}, props(on))
    assert again.changes is False
    provider.update(on.name, props(on), props(off))
    config = server_config(server.url, on.name)
    assert config is not None and "republish" not in config
    assert provider.read(on.name, props(off)).outs == props_from_spec(off)
