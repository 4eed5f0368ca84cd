"""Pulumi components: one for the environment, one per shard.

Style as in Pulumi's Kubernetes examples: one `ComponentResource` per concept, typed args
dataclasses, `parent=self` on every child, `register_outputs` at the end. The Kubernetes
objects themselves come from the pure builders in `ssmd_infra.pulumi.manifests`, so what is
declared here is exactly what the offline schema validation checks.

Everything that can be wrong with the input (stack config, environment file, resolution,
stream limits, ConfigMap size) is checked in `load_inputs` before the first resource is
declared: a bad input declares nothing.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pulumi_docker_build as docker_build
import pulumi_kubernetes as k8s

from ssmd_infra.adapters.nats_auth import AUTHORIZATION_SECRET
from ssmd_infra.core import workload
from ssmd_infra.core.environment import Environment, load_environment
from ssmd_infra.core.errors import ConfigError, Problem
from ssmd_infra.core.nats_auth import (
    ADMIN_ROLE,
    CLIENT_ROLE,
    archiver_role,
    connector_role,
    render_authorization,
)
from ssmd_infra.core.resolution import Layout, layout_of
from ssmd_infra.core.stream_rules import spec_problems
from ssmd_infra.core.streams import StreamSpec, client_stream_spec, internal_stream_spec
from ssmd_infra.core.subjects import CLIENT_STREAM, client_feed_wildcard, internal_wildcard
from ssmd_infra.pulumi import manifests
from ssmd_infra.pulumi.stack_config import (
    NATS_URL,
    PREFIX,
    PRIVATE_KEY,
    StackConfig,
    parse_stack_config,
)

# Relative to the project directory, where Pulumi runs the program: the same stack run from
# another checkout (CI, a colleague) hashes the same context and does not rebuild.
BUILD_CONTEXT = "."
DOCKERFILE = "runtime/Dockerfile"


@dataclass(frozen=True)
class DeploymentInputs:
    """Validated inputs of the whole program; building it declares no resource."""

    config: StackConfig
    env: Environment
    layout: Layout
    internal_streams: dict[str, StreamSpec]
    client_stream: StreamSpec
    # every shard's objects, built (and so checked) before any resource is declared
    shard_objects: dict[str, manifests.ShardObjects]
    catalog: dict[str, Any]  # the shard catalog ConfigMap
    private_key: pulumi.Output[str] | None = None


def _raw_config() -> tuple[dict[str, object], set[str]]:
    """Every `ssmd:` key of the stack and which are secret (to catch typos and clear secrets)."""
    from pulumi.runtime import config as runtime_config

    keys = set(runtime_config.CONFIG.get()) | set(runtime_config.get_config_env())
    values: dict[str, object] = {}
    secret: set[str] = set()
    for full in keys:
        namespace, _, key = full.partition(":")
        if namespace != PREFIX or not key:
            continue
        values[key] = runtime_config.get_config(full)
        if (
            runtime_config.is_config_secret(full)
            or full in runtime_config.get_config_secret_keys_env()
        ):
            secret.add(key)
    return values, secret


def load_inputs(stack: str) -> DeploymentInputs:
    """Read and validate stack config, environment, resolution and streams; raise `ConfigError`."""
    values, secret = _raw_config()
    env: Environment | None = None
    env_error: ConfigError | None = None
    env_ref = str(values.get("environment") or "").strip()
    if env_ref:
        try:
            env = load_environment(env_ref)
        except ConfigError as exc:
            env_error = exc
    try:
        config = parse_stack_config(
            stack,
            values,
            secret_keys=secret,
            feed=env.feed if env is not None else None,
            directory=Path.cwd(),
        )
    except ConfigError as exc:  # report the stack's and the environment's problems together
        raise ConfigError(exc.problems + (env_error.problems if env_error else [])) from None
    if env_error is not None:
        raise env_error
    assert env is not None
    layout = layout_of(env)
    internal = {name: internal_stream_spec(env, name) for name in env.shards}
    client = client_stream_spec(env)
    problems = [
        Problem(p, file=env.file, path="streams")
        for spec in [*internal.values(), client]
        for p in spec_problems(spec)
    ]
    ConfigError.collect(problems)
    private_key = (
        pulumi.Config(PREFIX).require_secret(PRIVATE_KEY) if config.has_private_key else None
    )
    pending = manifests.Refs.pending(
        with_kalshi=config.has_private_key, with_nats_seeds=env.nats.auth == "nkeys"
    )
    objects = {
        name: manifests.shard_objects(
            manifests.ShardContext(env, layout, env.shards[name], config, refs=pending)
        )
        for name in env.shards
    }
    catalog = manifests.shard_catalog(env, config)
    return DeploymentInputs(
        config=config,
        env=env,
        layout=layout,
        internal_streams=internal,
        client_stream=client,
        shard_objects=objects,
        catalog=catalog,
        private_key=private_key,
    )


def _summary(inputs: DeploymentInputs, shard: str) -> dict[str, Any]:
    """A shard's stack output: what `pulumi stack output shards` shows operators."""
    spec = inputs.env.shards[shard]
    return {
        "symbols": len(inputs.layout.symbols_of(shard)),
        "symbols_complete": inputs.env.secmaster.source == "manual",
        "subjects": internal_wildcard(shard),
        "stream": inputs.internal_streams[shard].name,
        "connector": workload.connector_name(shard),
        "archiver": workload.archiver_name(shard),
        "replicas": {"min": spec.min_replicas, "max": spec.replicas},
        "config_checksum": inputs.shard_objects[shard].checksum,
    }


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def _k8s(
    kind: str, name: str, obj: dict[str, Any], opts: pulumi.ResourceOptions
) -> pulumi.CustomResource:
    """Declare `obj` (a full manifest dict) with the matching typed pulumi_kubernetes class."""
    # Top-level fields are Python keyword arguments (snake_case); nested dicts pass through
    # with their Kubernetes (camelCase) names unchanged.
    body = {_snake(k): v for k, v in obj.items() if k not in ("apiVersion", "kind")}
    classes: dict[str, Any] = {
        "Namespace": k8s.core.v1.Namespace,
        "ServiceAccount": k8s.core.v1.ServiceAccount,
        "Secret": k8s.core.v1.Secret,
        "ConfigMap": k8s.core.v1.ConfigMap,
        "Service": k8s.core.v1.Service,
        "Deployment": k8s.apps.v1.Deployment,
        "StatefulSet": k8s.apps.v1.StatefulSet,
        "HorizontalPodAutoscaler": k8s.autoscaling.v2.HorizontalPodAutoscaler,
        "PodDisruptionBudget": k8s.policy.v1.PodDisruptionBudget,
        "PersistentVolumeClaim": k8s.core.v1.PersistentVolumeClaim,
    }
    resource: pulumi.CustomResource = classes[kind](name, opts=opts, **body)
    return resource


def _secret_name(secret: pulumi.CustomResource) -> pulumi.Output[str]:
    """The name pulumi-kubernetes gave an unnamed Secret (`{resource name}-<random>`)."""
    metadata: pulumi.Output[Any] = secret.metadata  # type: ignore[attr-defined]
    return metadata.apply(lambda m: str(m["name"] if isinstance(m, dict) else m.name))


def archive_claim(archiver: dict[str, Any], shard: str) -> dict[str, Any]:
    """The archiver's claim, declared by the program (not left to the claim template), so a
    storage change resizes it in place instead of replacing the StatefulSet; Kubernetes
    refuses a shrink, and a class that does not allow expansion, with its own reason."""
    template = archiver["spec"]["volumeClaimTemplates"][0]
    metadata = archiver["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": workload.archive_claim_name(shard),
            "namespace": metadata["namespace"],
            "labels": template["metadata"]["labels"],
        },
        "spec": template["spec"],
    }


def _nats_user_key(name: str, role: str, opts: pulumi.ResourceOptions) -> Any:
    from ssmd_infra.pulumi.nkey_provider import NatsUserKey

    return NatsUserKey(f"nats-user-{name}", role, opts)


def _seed_secret(
    env: Environment, config: StackConfig, role: str, key: Any, opts: pulumi.ResourceOptions
) -> pulumi.CustomResource:
    """`role`'s seed in a Secret of its own (auto-named `ssmd-nats-seed-{role}-<random>`)."""
    return _k8s(
        "Secret",
        f"{manifests.NATS_SEED_SECRET_PREFIX}-{role}",
        manifests.nats_seed_secret(env, config, role, key.seed),
        pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(additional_secret_outputs=["stringData", "data"])
        ),
    )


@dataclass(frozen=True)
class ShardArgs:
    """Inputs of one shard's component."""

    name: str
    objects: manifests.ShardObjects
    summary: dict[str, Any]
    stream: StreamSpec
    protect: bool
    depends_on: list[pulumi.Resource] = field(default_factory=list)
    # under `nats.auth: nkeys`: the admin seed of the stream provider, and what the shard's
    # roles' seed Secrets need
    admin_seed: pulumi.Output[str] | None = None
    env: Environment | None = None
    config: StackConfig | None = None


class ShardComponent(pulumi.ComponentResource):
    """One shard: ConfigMap, connector Deployment + HPA (+ PDB), archiver StatefulSet with its
    volume claim and Service, and the shard's stream. Everything here is built from this
    shard's inputs and the shared settings only, so an edit of another shard changes none of it.
    """

    def __init__(
        self, name: str, args: ShardArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("ssmd:index:Shard", name, None, opts)
        from ssmd_infra.pulumi.stream_provider import NatsStream

        objects = args.objects
        child = pulumi.ResourceOptions(parent=self, depends_on=args.depends_on)
        shard = args.name
        # one NKEY per role of the shard, each seed in a Secret mounted into its pods only
        self.nats_keys: dict[str, Any] = {}
        if args.env is not None and args.config is not None:
            seed_secrets = {}
            for kind, role in (
                ("connector", connector_role(shard)),
                ("archiver", archiver_role(shard)),
            ):
                key = _nats_user_key(role, role, pulumi.ResourceOptions(parent=self))
                self.nats_keys[role] = key
                seed_secrets[kind] = _secret_name(
                    _seed_secret(args.env, args.config, role, key, child)
                )
            objects = objects.with_refs(
                dataclasses.replace(
                    objects.refs,
                    connector_seed_secret=seed_secrets["connector"],
                    archiver_seed_secret=seed_secrets["archiver"],
                )
            )
        self.config_map = _k8s("ConfigMap", f"{shard}-config", objects.config_map, child)
        self.stream = NatsStream(
            f"{shard}-stream",
            args.stream,
            pulumi.ResourceOptions(parent=self, protect=args.protect),
            admin_seed=args.admin_seed,
        )
        workload_opts = pulumi.ResourceOptions(
            parent=self, depends_on=[*args.depends_on, self.config_map, self.stream]
        )
        self.connector = _k8s("Deployment", f"{shard}-connector", objects.connector, workload_opts)
        self.hpa = _k8s(
            "HorizontalPodAutoscaler",
            f"{shard}-connector-hpa",
            objects.hpa,
            pulumi.ResourceOptions(parent=self, depends_on=[self.connector]),
        )
        self.pdb = (
            _k8s("PodDisruptionBudget", f"{shard}-connector-pdb", objects.pdb, child)
            if objects.pdb is not None
            else None
        )
        self.archiver_service = _k8s(
            "Service", f"{shard}-archiver-svc", objects.archiver_service, child
        )
        self.archive_claim = _k8s(
            "PersistentVolumeClaim",
            f"{shard}-archive",
            archive_claim(objects.archiver, shard),
            pulumi.ResourceOptions(
                parent=self, depends_on=args.depends_on, protect=args.protect, retain_on_delete=True
            ),
        )
        self.archiver = _k8s(
            "StatefulSet",
            f"{shard}-archiver",
            objects.archiver,
            pulumi.ResourceOptions(
                parent=self,
                depends_on=[
                    *args.depends_on,
                    self.config_map,
                    self.stream,
                    self.archiver_service,
                    self.archive_claim,
                ],
                # the claim above holds the size; the template only serves a new StatefulSet
                # (its claim templates are immutable: a change would replace the StatefulSet)
                ignore_changes=["spec.volumeClaimTemplates"],
            ),
        )
        self.summary = args.summary
        self.register_outputs(self.summary)


@dataclass(frozen=True)
class EnvironmentArgs:
    inputs: DeploymentInputs


class EnvironmentComponent(pulumi.ComponentResource):
    """The environment: namespace (if asked), ServiceAccount, the endpoints and credentials
    Secrets, the shard catalog, the runtime image, one `ShardComponent` per shard and the
    client stream that merges them."""

    def __init__(
        self, name: str, args: EnvironmentArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("ssmd:index:Environment", name, None, opts)
        from ssmd_infra.pulumi.stream_provider import NatsStream

        inputs = args.inputs
        env, config = inputs.env, inputs.config
        # ConfigMaps mutable: the shard catalog is edited in place (it rolls no pod); the
        # shard ConfigMaps are content-addressed and immutable, so they are still replaced.
        self.kubernetes = k8s.Provider(
            "kubernetes",
            enable_config_map_mutable=True,
            opts=pulumi.ResourceOptions(parent=self),
        )
        child = pulumi.ResourceOptions(parent=self, providers={"kubernetes": self.kubernetes})
        base: list[pulumi.Resource] = []
        if config.create_namespace:
            self.namespace: pulumi.CustomResource | None = _k8s(
                "Namespace",
                "namespace",
                manifests.namespace(env, config),
                pulumi.ResourceOptions.merge(
                    child,
                    pulumi.ResourceOptions(protect=config.protect, retain_on_delete=True),
                ),
            )
            base.append(self.namespace)
        else:
            self.namespace = None
        after_ns = pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=base))
        self.service_account = _k8s(
            "ServiceAccount", "service-account", manifests.service_account(env, config), after_ns
        )
        self.catalog = _k8s("ConfigMap", "shard-catalog", inputs.catalog, after_ns)
        secret_opts = pulumi.ResourceOptions.merge(
            after_ns, pulumi.ResourceOptions(additional_secret_outputs=["stringData", "data"])
        )
        stack_config = pulumi.Config(PREFIX)
        self.endpoints = _k8s(
            "Secret",
            manifests.ENDPOINTS_SECRET_PREFIX,
            manifests.endpoints_secret(
                env,
                config,
                stack_config.require_secret(NATS_URL),
                stack_config.require_secret("redisUrl"),
            ),
            secret_opts,
        )
        base += [self.service_account, self.catalog, self.endpoints]
        self.secret: pulumi.CustomResource | None = None
        if inputs.private_key is not None:
            self.secret = _k8s(
                "Secret",
                manifests.KALSHI_SECRET_PREFIX,
                manifests.kalshi_secret(env, config, inputs.private_key),
                pulumi.ResourceOptions.merge(
                    secret_opts,
                    # its name in stacks deployed before the Secret was auto-named: the same
                    # resource, replaced (new object first) rather than deleted and created
                    pulumi.ResourceOptions(aliases=[pulumi.Alias(name="kalshi-credentials")]),
                ),
            )
            base.append(self.secret)
        self.image_ref = self._image(config)
        # NATS users: admin (the stream provider) and client here, each shard's in its
        # component; their seed Secrets are swapped into the pods per shard
        nkeys = env.nats.auth == "nkeys"
        self.nats_keys: dict[str, Any] = {}
        admin_seed: pulumi.Output[str] | None = None
        if nkeys:
            for role in (ADMIN_ROLE, CLIENT_ROLE):
                self.nats_keys[role] = _nats_user_key(
                    role, role, pulumi.ResourceOptions(parent=self)
                )
            admin_seed = self.nats_keys[ADMIN_ROLE].seed
            # for the readers of ssmd-client (not the admin's: it stays in the Pulumi state)
            self.client_seed_secret = _seed_secret(
                env, config, CLIENT_ROLE, self.nats_keys[CLIENT_ROLE], after_ns
            )
        pending = next(iter(inputs.shard_objects.values())).refs if inputs.shard_objects else None
        refs = manifests.Refs(
            image=self.image_ref,
            endpoints_secret=_secret_name(self.endpoints),
            kalshi_secret=_secret_name(self.secret) if self.secret is not None else None,
            # still placeholders: each shard component swaps in its own roles' Secrets
            connector_seed_secret=pending.connector_seed_secret if pending else None,
            archiver_seed_secret=pending.archiver_seed_secret if pending else None,
        )

        self.shards: dict[str, ShardComponent] = {}
        for shard in env.shards:
            self.shards[shard] = ShardComponent(
                shard,
                ShardArgs(
                    name=shard,
                    objects=inputs.shard_objects[shard].with_refs(refs),
                    summary=_summary(inputs, shard),
                    stream=inputs.internal_streams[shard],
                    protect=config.protect,
                    depends_on=list(base),
                    admin_seed=admin_seed,
                    env=env if nkeys else None,
                    config=config if nkeys else None,
                ),
                child,
            )
            self.nats_keys.update(self.shards[shard].nats_keys)
        if nkeys:
            self.nats_authorization = self._nats_authorization(env, config, after_ns)
        self.client_stream = NatsStream(
            "client-stream",
            inputs.client_stream,
            pulumi.ResourceOptions(
                parent=self,
                protect=config.protect,
                depends_on=[s.stream for s in self.shards.values()],
            ),
            admin_seed=admin_seed,
        )
        self.outputs: dict[str, Any] = {
            "environment": env.name,
            "namespace": config.namespace,
            "image": self.image_ref,
            "client_subjects": client_feed_wildcard(env.feed),
            "client_stream": CLIENT_STREAM,
            "shards": {name: s.summary for name, s in self.shards.items()},
        }
        if nkeys:  # public keys only: the seeds never leave their Secrets (and the state)
            self.outputs["nats_users"] = {
                role: key.public_key for role, key in sorted(self.nats_keys.items())
            }
        self.register_outputs(self.outputs)

    def _nats_authorization(
        self, env: Environment, config: StackConfig, opts: pulumi.ResourceOptions
    ) -> pulumi.CustomResource:
        """The Secret `ssmd-nats-authorization` (`authorization.conf`): every role's public
        NKEY with its permissions, for the NATS Helm release to include. A role whose shard
        is gone is no longer listed: the next reload of the server revokes it."""
        keys = {role: key.public_key for role, key in self.nats_keys.items()}
        mutable = k8s.Provider(
            manifests.MUTABLE_SECRETS_PROVIDER,
            enable_secret_mutable=True,
            opts=pulumi.ResourceOptions(parent=self),
        )
        opts = pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(providers={"kubernetes": mutable})
        )
        text = pulumi.Output.all(**keys).apply(
            lambda public: render_authorization(env, dict(public))
        )
        return _k8s(
            "Secret",
            AUTHORIZATION_SECRET,
            manifests.nats_authorization_secret(
                env, config.nats_namespace, AUTHORIZATION_SECRET, text
            ),
            opts,
        )

    def _image(self, config: StackConfig) -> pulumi.Output[str]:
        """The digest-pinned runtime image: built and pushed here unless `ssmd:image` is given
        (then no build resource exists at all: preview needs no Docker)."""
        if config.image is not None:
            return pulumi.Output.from_input(config.image)
        assert config.image_repository is not None
        self.image = docker_build.Image(
            "runtime-image",
            context=docker_build.BuildContextArgs(location=BUILD_CONTEXT),
            dockerfile=docker_build.DockerfileArgs(location=DOCKERFILE),
            platforms=[docker_build.Platform.LINUX_AMD64],
            push=True,
            # a preview must not need Docker nor run a build; `up` builds
            build_on_preview=False,
            tags=[f"{config.image_repository}:{config.image_tag}"],
            opts=pulumi.ResourceOptions(parent=self),
        )
        return self.image.ref


def deploy(stack: str) -> EnvironmentComponent:
    """The whole program: validate everything, then declare the environment component."""
    inputs = load_inputs(stack)
    return EnvironmentComponent(inputs.env.name, EnvironmentArgs(inputs))
