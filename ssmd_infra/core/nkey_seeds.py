"""NATS user NKEYs: make a seed, tell its public key, and read a role's seed file safely.

An NKEY is an Ed25519 key pair; a user *seed* (`SU…`, 58 characters) is the 32-byte private
seed, prefixed and CRC16-checked, in base32; its public key (`U…`, 56 characters) is what
nats-server's `authorization` lists. The `nkeys` package does the encoding (`encode_seed`,
`from_seed`); this module adds what it leaves out: checking the CRC and the key type, so a
damaged or wrong kind of key is refused here, with the file named, instead of by the server
as an anonymous "authorization violation".

It lives in the core because it is pure computation plus reading one given file: the
runtime (which imports only the core) checks its seed file with the same function as the
supervisor and `ssmd nats auth`.

A role's seed file holds the seed alone (one line) so that every NATS client can read it
(nats-py `nkeys_seed=PATH`, `nats --nkey PATH`); its role is recorded in its name,
`{role}.nk`, and checked against the role the process runs as.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import nkeys

from ssmd_infra.core.errors import ConfigError
from ssmd_infra.core.subjects import role_inbox_prefix

SEED_SUFFIX = ".nk"
# where a runtime process finds its seed file when no `--nats-nkey-seed` is given
NKEY_SEED_VARIABLE = "NATS_NKEY_SEED"
_SEED_LENGTH = 58  # base32 of 1 + 1 prefix bytes, 32 key bytes, 2 CRC bytes, unpadded
_PUBLIC_KEY_LENGTH = 56  # base32 of 1 prefix byte, 32 key bytes, 2 CRC bytes
_MAX_FILE_BYTES = 4096  # a seed file is one line; anything bigger is not one


def seed_file_name(role: str) -> str:
    """`{role}.nk`: the name of a role's seed file (the name records the role)."""
    return f"{role}{SEED_SUFFIX}"


def generate_user_seed() -> str:
    """A new user seed from 32 bytes of the operating system's CSPRNG."""
    seed: bytes = nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER)
    return seed.decode("ascii")


def _base32(text: str) -> bytes:
    try:
        return base64.b32decode(text + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError):
        raise ValueError("not base32") from None


def _check_crc(raw: bytes) -> None:
    body, crc = raw[:-2], raw[-2:]
    if nkeys.crc16(body) != int.from_bytes(crc, "little"):
        raise ValueError("checksum mismatch (the key is damaged)")


def seed_problem(text: str) -> str | None:
    """Why `text` is not a NATS user seed, or None when it is one."""
    if not text.startswith("S"):
        return "a seed starts with 'S'"
    if len(text) != _SEED_LENGTH:
        return f"a user seed has {_SEED_LENGTH} characters, this has {len(text)}"
    try:
        raw = _base32(text)
        _check_crc(raw)
    except ValueError as exc:
        return str(exc)
    try:
        prefix, _ = nkeys.decode_seed(text.encode("ascii"))
    except nkeys.NkeysError as exc:
        return str(exc)
    if prefix != nkeys.PREFIX_BYTE_USER:
        return "the seed of another kind of key (account, operator or server), not of a user"
    return None


def user_public_key(seed: str) -> str:
    """The public key (`U…`) of a user seed; `ValueError` when `seed` is not one."""
    problem = seed_problem(seed)
    if problem:
        raise ValueError(problem)
    public: bytes = nkeys.from_seed(bytearray(seed.encode("ascii"))).public_key
    return public.decode("ascii")


def public_key_problem(key: str) -> str | None:
    """Why `key` is not a NATS user public key, or None when it is one."""
    if not key.startswith("U"):
        return "a user public key starts with 'U'"
    if len(key) != _PUBLIC_KEY_LENGTH:
        return f"a user public key has {_PUBLIC_KEY_LENGTH} characters, this has {len(key)}"
    try:
        raw = _base32(key)
        _check_crc(raw)
    except ValueError as exc:
        return str(exc)
    if raw[0] != nkeys.PREFIX_BYTE_USER:
        return "not a user key"
    return None


@dataclass(frozen=True)
class RoleSeed:
    """A role's seed, checked (the seed itself is never printed); `source` says where it came
    from (its file, or the secret it was handed in)."""

    role: str
    source: str
    seed: str = field(repr=False)
    public_key: str

    def nats_py_options(self) -> dict[str, str]:
        """nats-py `connect()` options: the seed (signs the server's nonce) and the role's own
        inbox prefix (the only place it may receive replies)."""
        return {"nkeys_seed_str": self.seed, "inbox_prefix": role_inbox_prefix(self.role)}


def parse_role_seed(text: str, role: str, *, source: str) -> RoleSeed:
    """`role`'s seed from `text` (surrounding whitespace ignored), or `ConfigError` that names
    `source` (e.g. "NATS seed file connector-tier1.nk") and what is wrong, never the text."""
    text = text.strip()
    if not text:
        raise ConfigError(f"{source} is empty")
    problem = seed_problem(text)
    if problem:
        raise ConfigError(f"{source} is not a NATS user seed: {problem}")
    return RoleSeed(role=role, source=source, seed=text, public_key=user_public_key(text))


def read_seed_file(path: Path | str, role: str) -> RoleSeed:
    """The seed of `role` from `path`, or `ConfigError` naming the file and what is wrong:
    missing, unreadable, not a user seed, or the seed of another role (its file name)."""
    path = Path(path)
    expected = seed_file_name(role)
    if path.name != expected:
        if path.name.endswith(SEED_SUFFIX):
            found = path.name.removesuffix(SEED_SUFFIX)
            raise ConfigError(
                f"NATS seed file {path} is the seed of role {found!r}, not of {role!r} "
                f"(expected a file named {expected})"
            )
        raise ConfigError(
            f"NATS seed file {path}: the file must be named {expected} (the name records "
            f"the role it belongs to)"
        )
    try:
        with path.open("rb") as handle:
            data = handle.read(_MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(
            f"NATS seed file {path} does not exist (`ssmd nats auth ENV --out DIR` writes "
            f"one per role)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read NATS seed file {path}: {exc.strerror}") from None
    if len(data) > _MAX_FILE_BYTES:
        raise ConfigError(
            f"NATS seed file {path} is not a seed: larger than {_MAX_FILE_BYTES} bytes"
        )
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise ConfigError(f"NATS seed file {path} is not a seed: not ASCII text") from None
    return parse_role_seed(text, role, source=f"NATS seed file {path}")
