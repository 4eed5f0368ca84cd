"""The environment: one YAML file in git that says which shards exist and what they get.

The model is strict (unknown keys, wrong types and malformed quantities are errors) and every
error names the file, the line and the key path. Everything optional has a default here, so
consumers (Pulumi program, CLI, local runner, runtime) never invent their own.
"""

from __future__ import annotations

import os
import re
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)

from ssmd_infra.core.errors import ConfigError, Problem
from ssmd_infra.core.quantity import canonical_quantity, parse_duration, parse_quantity
from ssmd_infra.core.subjects import SHARD_NAME, TOKEN_NAME, name_problem
from ssmd_infra.core.yamlsource import SourceMap, load_yaml

ENV_DIR_VARIABLE = "SSMD_ENV_DIR"
DEFAULT_ENV_DIR = Path("exchanges") / "environments"


def attribute_text(value: Any) -> str:
    """Attribute values compare as the YAML wrote them: `1` == "1", `true` == "true"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    shown = {type(None): "nothing (null)", dict: "a mapping", list: "a list"}
    raise ValueError(
        f"expected a string or number, got {shown.get(type(value), type(value).__name__)}"
    )


AttrValue = Annotated[str, BeforeValidator(attribute_text)]
# Counts are whole numbers as the YAML wrote them: `true`, `"2"` and `2.0` are mistakes.
Count = Annotated[int, Strict()]
Quantity = Annotated[str, BeforeValidator(canonical_quantity)]
Seconds = Annotated[float, BeforeValidator(parse_duration)]
DropPolicy = Literal["drop_oldest", "drop_newest", "block"]
# Exchange channels a shard's connector can capture (Kalshi WebSocket v2 channel names);
# `orderbook_delta` (snapshots + deltas) is a private channel: it needs the Kalshi API key.
CaptureChannel = Literal["trade", "ticker", "orderbook_delta"]
DEFAULT_CHANNELS: tuple[CaptureChannel, ...] = ("trade", "ticker")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class ResourceAmounts(_Strict):
    cpu: Quantity
    memory: Quantity

    @property
    def cpu_cores(self) -> Decimal:
        return parse_quantity(self.cpu)

    @property
    def memory_bytes(self) -> Decimal:
        return parse_quantity(self.memory)


class Resources(_Strict):
    """Short form `{cpu, memory}` sets requests = limits (Guaranteed QoS, fixed memory)."""

    requests: ResourceAmounts
    limits: ResourceAmounts

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, data: Any) -> Any:
        if isinstance(data, dict) and ("cpu" in data or "memory" in data):
            extra = set(data) - {"cpu", "memory"}
            if extra:
                raise ValueError(
                    f"unknown key(s) {sorted(extra)}: use either {{cpu, memory}} or "
                    f"{{requests: {{cpu, memory}}, limits: {{cpu, memory}}}}"
                )
            return {"requests": data, "limits": data}
        return data

    @model_validator(mode="after")
    def _limits_cover_requests(self) -> Resources:
        if self.limits.cpu_cores < self.requests.cpu_cores:
            raise ValueError(
                f"limits.cpu {self.limits.cpu} is below requests.cpu {self.requests.cpu}"
            )
        if self.limits.memory_bytes < self.requests.memory_bytes:
            raise ValueError(
                f"limits.memory {self.limits.memory} is below requests.memory {self.requests.memory}"
            )
        for part in (self.requests, self.limits):
            if part.cpu_cores <= 0 or part.memory_bytes <= 0:
                raise ValueError("cpu and memory must be greater than zero")
        return self


DEFAULT_RESOURCES = Resources.model_validate({"cpu": "250m", "memory": "256Mi"})


class Autoscaling(_Strict):
    cpu_utilization: Count = Field(70, ge=1, le=100, description="HPA CPU averageUtilization, %")
    message_rate: Count = Field(10000, gt=0, description="HPA msg/s per pod target")


class Buffer(_Strict):
    """The bounded buffer between the exchange socket and NATS in the connector."""

    capacity: Count = Field(10000, gt=0, le=10_000_000)
    drop_policy: DropPolicy = "drop_oldest"


class StreamLimits(_Strict):
    """JetStream limits: bounded by age and bytes, discard old, explicit dedup window."""

    max_age: Seconds = 72 * 3600.0
    max_bytes: Quantity = "10Gi"
    max_msgs: Count = Field(-1, ge=-1)
    replicas: Count = Field(1, ge=1, le=5)
    duplicate_window: Seconds = 120.0
    storage: Literal["file", "memory"] = "file"

    @field_validator("max_bytes")
    @classmethod
    def _positive_bytes(cls, value: str) -> str:
        if parse_quantity(value) < 1:
            raise ValueError(f"max_bytes must be at least 1 byte, got {value!r}")
        return value

    @field_validator("max_msgs")
    @classmethod
    def _msgs(cls, value: int) -> int:
        if value == 0:
            raise ValueError("max_msgs must be positive, or -1 for no message-count limit")
        return value

    @property
    def max_bytes_int(self) -> int:
        return int(parse_quantity(self.max_bytes))


class InternalStreamLimits(StreamLimits):
    """A shard stream's limits, plus republish: every stored message is also published on
    core NATS under the client subject (`md.{feed}.>`), for live readers that need not wait
    for the client stream's sourcing."""

    republish: Annotated[bool, Strict()] = False


class Streams(_Strict):
    internal: InternalStreamLimits = InternalStreamLimits()
    client: StreamLimits = StreamLimits()


class Archiver(_Strict):
    rotation: Seconds = 3600.0
    batch_size: Count = Field(1000, gt=0, le=100_000)
    storage: Quantity = "10Gi"


class Secmaster(_Strict):
    """Where symbols come from besides the file's own `symbols` (the manual source)."""

    source: Literal["manual", "kalshi"] = "manual"
    status: str = "open"
    refresh_interval: Seconds = 300.0
    defaults: dict[str, AttrValue] = Field(default_factory=dict)


class Nats(_Strict):
    """How the environment's processes authenticate to NATS.

    `nkeys` (the default): every role (`ssmd_infra.core.nats_auth`) connects with its own
    NKEY and nats-server enforces its permissions; a server that lets anyone in is refused.
    `none`: no authentication, for a shared development server."""

    auth: Literal["nkeys", "none"] = "nkeys"


SelectorValue = AttrValue | list[AttrValue]


class Shard(_Strict):
    name: str = ""  # filled from the mapping key
    selector: dict[str, SelectorValue]
    replicas: Count = Field(ge=1, le=1000, description="autoscaler maximum")
    min_replicas: Count = Field(1, ge=1)
    resources: Resources = DEFAULT_RESOURCES
    autoscaling: Autoscaling = Autoscaling()
    buffer: Buffer = Buffer()
    channels: list[CaptureChannel] = Field(
        default_factory=lambda: list(DEFAULT_CHANNELS), min_length=1
    )

    @field_validator("channels")
    @classmethod
    def _distinct_channels(cls, value: list[CaptureChannel]) -> list[CaptureChannel]:
        repeated = sorted({c for c in value if value.count(c) > 1})
        if repeated:
            raise ValueError(f"channel(s) listed twice: {', '.join(repeated)}")
        return value

    @field_validator("selector")
    @classmethod
    def _selector_values(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not value:
            raise ValueError(
                "empty selector: it would claim every symbol; give at least one key "
                "(a deliberate catch-all is `symbol: '*'`)"
            )
        for key, item in value.items():
            if isinstance(item, list) and not item:
                raise ValueError(f"selector key {key!r} has an empty list, which matches nothing")
        return value

    @model_validator(mode="after")
    def _bounds(self) -> Shard:
        if self.min_replicas > self.replicas:
            raise ValueError(
                f"min_replicas {self.min_replicas} is greater than replicas {self.replicas} "
                f"(replicas is the autoscaler's maximum)"
            )
        return self


class Environment(_Strict):
    name: str
    feed: str
    schema_: str = Field("trade:v1", alias="schema")
    secmaster: Secmaster = Secmaster()
    symbols: dict[str, dict[str, AttrValue]] = Field(default_factory=dict)
    assignments: dict[str, str] = Field(default_factory=dict)
    streams: Streams = Streams()
    archiver: Archiver = Archiver()
    nats: Nats = Nats()
    shards: dict[str, Shard]

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    _file: str | None = PrivateAttr(default=None)
    _source: SourceMap | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _name_shards(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("shards"), dict):
            shards = {}
            for key, body in data["shards"].items():
                if isinstance(body, dict) and "name" not in body:
                    body = {"name": key, **body}
                shards[key] = body
            data = {**data, "shards": shards}
        return data

    @property
    def file(self) -> str | None:
        return self._file

    @property
    def source(self) -> SourceMap | None:
        return self._source

    def shard(self, name: str) -> Shard:
        try:
            return self.shards[name]
        except KeyError:
            known = ", ".join(self.shards)
            raise ConfigError(
                f"no shard {name!r} in environment {self.name!r} (shards: {known})"
            ) from None


# The environment's name prefixes Redis keys (`{env}:shard:...`), names the local state
# file and labels Kubernetes objects (label values: at most 63 characters).
ENV_NAME = re.compile(r"^[A-Za-z0-9]([-_.A-Za-z0-9]{0,61}[A-Za-z0-9])?\Z")


def _document_problems(data: dict[str, Any], source: SourceMap) -> list[Problem]:
    """Checks on the document as written, run whether or not the schema check passes.

    They need no typed model (names, pins, the `shards` mapping itself), so a file with a
    bad quantity *and* a bad shard name gets both reported in one run.
    """
    problems: list[Problem] = []
    name = data.get("name")
    if isinstance(name, str) and not ENV_NAME.match(name):
        problems.append(
            source.problem(
                ("name",),
                f"environment name {name!r} must be letters, digits, '-', '_' or '.', start "
                f"and end with a letter or digit, at most 63 characters (it prefixes Redis "
                f"keys and labels Kubernetes objects)",
            )
        )
    feed = data.get("feed")
    if isinstance(feed, str):
        why = name_problem("feed", feed, TOKEN_NAME)
        if why:
            problems.append(source.problem(("feed",), why))
    shards = data.get("shards")
    if "shards" in data and not shards:  # null, {} or []
        problems.append(source.problem(("shards",), "no shards defined: at least one is required"))
    if isinstance(shards, dict):
        for shard, body in shards.items():
            why = name_problem("shard", shard, SHARD_NAME)
            if why:
                problems.append(source.problem(("shards", shard), why))
            if isinstance(body, dict) and "name" in body and body["name"] != shard:
                # a dumped environment (the runtime's ConfigMap) repeats the key as `name`
                problems.append(
                    source.problem(
                        ("shards", shard, "name"),
                        f"name {body['name']!r} differs from the shard's key {shard!r} "
                        f"(a shard is named by its key under `shards`)",
                    )
                )
    assignments = data.get("assignments")
    if isinstance(assignments, dict) and isinstance(shards, dict) and shards:
        for symbol, target in assignments.items():
            if isinstance(target, str) and target not in shards:
                problems.append(
                    source.problem(
                        ("assignments", symbol),
                        f"pin of {symbol!r} to shard {target!r}, which does not exist "
                        f"(shards: {', '.join(shards)})",
                    )
                )
    symbols = data.get("symbols")
    if isinstance(symbols, dict):
        for symbol in symbols:
            if not symbol.strip() or symbol != symbol.strip():
                problems.append(source.problem(("symbols", symbol), f"bad symbol name {symbol!r}"))
    return problems


_UNION_TAGS = {
    "str",
    "list[str]",
    "function-before[attribute_text(), str]",
    "list[function-before[attribute_text(), str]]",
}


def _pydantic_problems(exc: ValidationError, source: SourceMap) -> list[Problem]:
    problems: list[Problem] = []
    unions: dict[tuple[Any, ...], list[tuple[tuple[Any, ...], Any]]] = {}
    for err in exc.errors(include_url=False):
        raw_loc = err["loc"]
        tagged = [i for i, p in enumerate(raw_loc) if isinstance(p, str) and p in _UNION_TAGS]
        if tagged:
            # one value, several union branches (a string, or a list of strings): group
            # them and say it once
            at = tagged[0]
            unions.setdefault(tuple(raw_loc[:at]), []).append((tuple(raw_loc[at + 1 :]), err))
            continue
        problems.append(_problem_of(tuple(raw_loc), err, source))
    for loc, branches in unions.items():
        deeper = [(rest, err) for rest, err in branches if rest]
        if deeper:  # a list whose items are wrong: name the items
            problems.extend(_problem_of((*loc, *rest), err, source) for rest, err in deeper)
        else:
            value = branches[0][1].get("input")
            problems.append(
                source.problem(
                    _public_loc(loc, source),
                    f"expected a string, a number or a list of them, got {_describe(value)}",
                )
            )
    # one message per place
    unique: dict[tuple[object, ...], Problem] = {}
    for p in problems:
        unique.setdefault((p.path, p.message), p)
    return list(unique.values())


def _public_loc(loc: tuple[Any, ...], source: SourceMap) -> tuple[Any, ...]:
    """The key path as the file writes it (`schema`, the short form of `resources`)."""
    if loc and loc[0] == "schema_":
        loc = ("schema", *loc[1:])
    # `resources: {cpu, memory}` is expanded into requests and limits: report the
    # written key once, not twice
    for i in range(len(loc) - 1):
        if loc[i] == "resources" and loc[i + 1] in ("requests", "limits"):
            if loc[: i + 2] not in source.lines:
                loc = (*loc[: i + 1], *loc[i + 2 :])
            break
    return loc


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


_PLAIN_MESSAGES = {
    "dict_type": "expected a mapping",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
    "int_type": "expected a whole number",
    "int_parsing": "expected a whole number",
    "string_type": "expected a string",
    "list_type": "expected a list",
}


_BOUNDS = {
    "greater_than_equal": "at least",
    "greater_than": "greater than",
    "less_than_equal": "at most",
    "less_than": "less than",
}


def _problem_of(raw_loc: tuple[Any, ...], err: Any, source: SourceMap) -> Problem:
    loc = _public_loc(raw_loc, source)
    kind = err["type"]
    if kind == "extra_forbidden":
        return source.problem(loc, f"unknown key {loc[-1]!r}")
    if kind == "missing":
        return source.problem(loc[:-1], f"required key {loc[-1]!r} is missing")
    message = _PLAIN_MESSAGES.get(kind) or str(err["msg"]).removeprefix("Value error, ")
    bound = err.get("ctx") or {}
    for key, words in _BOUNDS.items():
        if kind == key and len(bound) == 1:
            message = f"must be {words} {next(iter(bound.values()))}"
    if "input" in err and not isinstance(err["input"], (dict, list)):
        value = err["input"]
        shown = (
            "null"
            if value is None
            else attribute_text(value)
            if isinstance(value, bool)
            else repr(value)
        )
        if repr(value) not in message:
            message += f" (got {shown})"
    return source.problem(loc, message)


def parse_environment(text: str | bytes, file: str) -> Environment:
    """Validate an environment document; `ConfigError` lists every problem found."""
    data, source = load_yaml(text, file)
    return environment_from_data(data, source)


def environment_from_data(data: Any, source: SourceMap) -> Environment:
    """Validate an environment document already loaded by `load_yaml` (`source` locates its
    keys); `ConfigError` lists every problem found."""
    file = source.file
    if not isinstance(data, dict):
        raise ConfigError(
            Problem(
                f"expected a mapping with name, feed, symbols and shards, got {_describe(data)}",
                file=file,
                line=1,
            )
        )
    problems = _document_problems(data, source)
    env: Environment | None = None
    try:
        env = Environment.model_validate(data)
    except ValidationError as exc:
        written = {p.path for p in problems}
        problems.extend(p for p in _pydantic_problems(exc, source) if p.path not in written)
    ConfigError.collect(problems)
    assert env is not None
    env._file = file
    env._source = source
    return env


def environments_dir() -> Path:
    """`$SSMD_ENV_DIR`, else `exchanges/environments` under the working directory, else the repo's."""
    configured = os.environ.get(ENV_DIR_VARIABLE)
    if configured:
        return Path(configured)
    local = Path.cwd() / DEFAULT_ENV_DIR
    if local.is_dir():
        return local
    return Path(__file__).resolve().parents[2] / DEFAULT_ENV_DIR


def available_environments() -> list[str]:
    directory = environments_dir()
    if not directory.is_dir():
        return []
    return sorted(p.stem for p in directory.glob("*.yaml"))


def environment_path(ref: str) -> Path:
    """ENV as the CLI takes it: a name under `exchanges/environments/` or a path to a file."""
    as_path = Path(ref)
    if as_path.suffix in (".yaml", ".yml") or os.sep in ref or as_path.is_file():
        if not as_path.is_file():
            raise ConfigError(f"environment file {ref} does not exist")
        return as_path
    candidate = environments_dir() / f"{ref}.yaml"
    if candidate.is_file():
        return candidate
    known = available_environments()
    listing = ", ".join(known) if known else "none"
    raise ConfigError(f"unknown environment {ref!r}; available in {environments_dir()}: {listing}")


def load_environment(ref: str | Path) -> Environment:
    """Read and validate an environment by name or path."""
    path = environment_path(str(ref))
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read environment file {path}: {exc.strerror}") from None
    return parse_environment(data, str(path))
