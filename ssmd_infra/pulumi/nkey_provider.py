"""A NATS user NKEY per role as a Pulumi resource: generated once, kept, revoked by deletion.

The seed must be stable across `pulumi up` runs (a new seed at every run would change every
Secret and roll every pod, and lock the pods of the previous seed out): a dynamic resource
whose `create` draws the seed (`generate_user_seed`, the operating system's CSPRNG) and whose
outputs keep it. Its other methods never draw again:

- `diff`: only a different role is a change, and it is a replacement (a new user);
- `update` (reached only through a provider upgrade) returns the stored outputs unchanged;
- `delete` does nothing on a server: the role is revoked because the authorization the
  program renders (`ssmd-nats-authorization`) no longer lists its public key;
- `read` reports the stored outputs (there is nothing live to compare them with).

The seed output is secret (`additional_secret_outputs`, set by `NatsUserKey`): it is
encrypted in the state and reaches only the role's own Kubernetes Secret. The provider is a
module-level class without state, so dill pickles it by reference (as `NatsStreamProvider`).
"""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    ResourceProvider,
    UpdateResult,
)

from ssmd_infra.core.nats_auth import is_role_name
from ssmd_infra.core.nkey_seeds import generate_user_seed, user_public_key

ROLE = "role"
SEED = "seed"
PUBLIC_KEY = "public_key"
# the engine's type token of `NatsUserKey` (module "ssmd", name "NatsUserKey")
NATS_USER_KEY_TYPE = "pulumi-python:dynamic/ssmd:NatsUserKey"


def user_key_outputs(role: str, seed: str) -> dict[str, Any]:
    """The outputs of a role's key: the role, its seed, its public key."""
    return {ROLE: role, SEED: seed, PUBLIC_KEY: user_public_key(seed)}


class NatsUserKeyProvider(ResourceProvider):
    """Create draws a seed; nothing else ever does."""

    serialize_as_secret_always = False

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        role = news.get(ROLE)
        if not isinstance(role, str) or not is_role_name(role):
            return CheckResult(news, [CheckFailure(ROLE, f"not an ssmd NATS role: {role!r}")])
        return CheckResult({ROLE: role}, [])

    def create(self, props: dict[str, Any]) -> CreateResult:
        role = str(props[ROLE])
        return CreateResult(role, user_key_outputs(role, generate_user_seed()))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = olds.get(ROLE) != news.get(ROLE)
        return DiffResult(
            changes=changed, replaces=[ROLE] if changed else [], stables=[SEED, PUBLIC_KEY]
        )

    def update(self, _id: str, olds: dict[str, Any], _news: dict[str, Any]) -> UpdateResult:
        return UpdateResult({k: olds[k] for k in (ROLE, SEED, PUBLIC_KEY) if k in olds})

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        return None  # revoked by the authorization, which no longer lists the key

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        return ReadResult(id_, props)


class NatsUserKey(pulumi.dynamic.Resource, module="ssmd", name="NatsUserKey"):
    """The NKEY of one role: `seed` (secret) and `public_key` outputs."""

    role: pulumi.Output[str]
    seed: pulumi.Output[str]
    public_key: pulumi.Output[str]

    def __init__(
        self, resource_name: str, role: str, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        secret = pulumi.ResourceOptions(additional_secret_outputs=[SEED])
        super().__init__(
            NatsUserKeyProvider(),
            resource_name,
            {ROLE: role, SEED: None, PUBLIC_KEY: None},
            pulumi.ResourceOptions.merge(opts, secret),
        )
