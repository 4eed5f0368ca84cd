"""The stream provider through Pulumi's own dynamic-provider host, over gRPC, as the engine
drives it: `python -m pulumi.dynamic` (the SDK's `ResourceProvider` servicer) receives the
stack configuration in `Configure`, then `Create`, `Diff`, `Read` and `Delete`, against a real
nats-server. A second host, configured with another admin URL for the same server (another
port-forward), sees no diff and reads and deletes with its own URL.

(The SDK module starts its server at import, so it runs in a child process, which is also
how the engine runs it.)
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from pulumi.dynamic.dynamic import serialize_provider
from pulumi.runtime import proto, rpc
from pulumi.runtime.proto import provider_pb2_grpc

from ssmd_infra.core.environment import parse_environment
from ssmd_infra.core.streams import internal_stream_spec
from ssmd_infra.local.servers import ServerProcess, start_nats
from ssmd_infra.pulumi.stream_provider import NatsStreamProvider, props_from_spec

pytestmark = pytest.mark.servers

REPO = Path(__file__).resolve().parents[2]
URN = "urn:pulumi:roll::ssmd::pulumi-python:dynamic/ssmd:NatsStream::tier1-stream"
ENV = """\
name: servicer
feed: kalshi
symbols: {A: {tier: 1}}
shards:
  tier1: {selector: {tier: 1}, replicas: 1}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_nats(tmp_path_factory.mktemp("nats-servicer"))
    yield proc
    proc.stop()


class Host:
    """One `python -m pulumi.dynamic` process and a gRPC stub to it."""

    def __init__(self) -> None:
        env = {**os.environ, "PULUMI_PROJECT": "ssmd", "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pulumi.dynamic"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=REPO,
        )
        assert self.proc.stdout is not None
        port = int(self.proc.stdout.readline().decode().strip())
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = provider_pb2_grpc.ResourceProviderStub(self.channel)

    def close(self) -> None:
        self.channel.close()
        self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def hosts() -> Iterator[list[Host]]:
    started: list[Host] = []
    yield started
    for host in started:
        host.close()


def _struct(props: dict[str, object]) -> object:
    return asyncio.new_event_loop().run_until_complete(rpc.serialize_properties(props, {}))


def _props(struct: object) -> dict[str, object]:
    return rpc.deserialize_properties(struct)  # type: ignore[no-any-return]


def configured(hosts: list[Host], admin_url: str) -> Host:
    host = Host()
    hosts.append(host)
    host.stub.Configure(
        proto.ConfigureRequest(args=_struct({"ssmd:natsAdminUrl": admin_url}), acceptSecrets=True)
    )
    return host


def test_a_new_admin_url_is_no_diff_and_read_and_delete_use_it(
    server: ServerProcess, hosts: list[Host]
) -> None:
    spec = internal_stream_spec(parse_environment(ENV, "servicer.yaml"), "tier1")
    inputs = {**props_from_spec(spec), "__provider": serialize_provider(NatsStreamProvider())}
    first = configured(hosts, server.url)
    created = first.stub.Create(proto.CreateRequest(urn=URN, properties=_struct(inputs)))
    assert created.id == "ssmd-internal-tier1"
    outputs = _props(created.properties)
    assert "nats_url" not in outputs and server.url not in str(outputs)

    # the same server through another URL, as with another port-forward
    port = server.url.rsplit(":", 1)[1]
    second = configured(hosts, f"nats://localhost:{port}")
    diff = second.stub.Diff(
        proto.DiffRequest(id=created.id, urn=URN, olds=created.properties, news=_struct(inputs))
    )
    assert diff.changes == proto.DiffResponse.DIFF_NONE
    assert list(diff.replaces) == []
    read = second.stub.Read(
        proto.ReadRequest(id=created.id, urn=URN, properties=created.properties)
    )
    assert read.id == created.id
    assert {k: v for k, v in _props(read.properties).items() if k != "__provider"} == {
        k: v for k, v in outputs.items() if k != "__provider"
    }
    second.stub.Delete(proto.DeleteRequest(id=created.id, urn=URN, properties=read.properties))
    gone = second.stub.Read(
        proto.ReadRequest(id=created.id, urn=URN, properties=created.properties)
    )
    assert gone.id == ""  # deleted on the server
