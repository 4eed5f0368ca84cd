"""NKEY user seeds: generated ones are accepted by the `nkeys` package (which nats-py signs
the server's nonce with), and a role's seed file is refused, with its path and the reason,
when it is missing, malformed, damaged, of another kind of key, or of another role."""

from __future__ import annotations

from pathlib import Path

import nkeys
import pytest

from ssmd_infra.core.errors import ConfigError
from ssmd_infra.core.nkey_seeds import (
    generate_user_seed,
    parse_role_seed,
    public_key_problem,
    read_seed_file,
    seed_problem,
    user_public_key,
)


def test_generated_seeds_are_user_seeds_that_nkeys_signs_with() -> None:
    seed = generate_user_seed()
    assert (seed[:2], len(seed), seed_problem(seed)) == ("SU", 58, None)
    pair = nkeys.from_seed(bytearray(seed.encode()))
    public = user_public_key(seed)
    assert public == pair.public_key.decode()
    assert (public[0], len(public), public_key_problem(public)) == ("U", 56, None)
    nonce = b"server nonce"
    assert pair.verify(nonce, pair.sign(nonce))
    assert generate_user_seed() != seed


def test_a_damaged_or_foreign_seed_is_not_a_user_seed() -> None:
    seed = generate_user_seed()
    flipped = seed[:10] + ("A" if seed[10] != "A" else "B") + seed[11:]
    assert seed_problem(flipped) == "checksum mismatch (the key is damaged)"
    account = nkeys.encode_seed(bytes(32), nkeys.PREFIX_BYTE_ACCOUNT).decode()
    assert seed_problem(account) == (
        "the seed of another kind of key (account, operator or server), not of a user"
    )
    assert seed_problem(user_public_key(seed)) == "a seed starts with 'S'"
    assert seed_problem(seed[:-1]) == "a user seed has 58 characters, this has 57"
    account_key = nkeys.from_seed(bytearray(account.encode())).public_key.decode()
    assert public_key_problem(account_key) == "a user public key starts with 'U'"
    public = user_public_key(seed)
    damaged = public[:20] + ("A" if public[20] != "A" else "B") + public[21:]
    assert public_key_problem(damaged) == "checksum mismatch (the key is damaged)"


def test_a_role_seed_file_is_read_and_checked(tmp_path: Path) -> None:
    seed = generate_user_seed()
    path = tmp_path / "connector-tier1.nk"
    path.write_text(seed + "\n")
    read = read_seed_file(path, "connector-tier1")
    assert (read.role, read.seed, read.public_key) == (
        "connector-tier1",
        seed,
        user_public_key(seed),
    )
    assert seed not in repr(read)


@pytest.mark.parametrize(
    ("name", "content", "role", "message"),
    [
        ("connector-tier1.nk", None, "connector-tier1", "{path} does not exist"),
        ("connector-tier1.nk", "", "connector-tier1", "{path} is empty"),
        (
            "connector-tier1.nk",
            "not a seed",
            "connector-tier1",
            "{path} is not a NATS user seed: a seed starts with 'S'",
        ),
        (
            "archiver-tier1.nk",
            "SEED",
            "connector-tier1",
            "{path} is the seed of role 'archiver-tier1', not of 'connector-tier1' "
            "(expected a file named connector-tier1.nk)",
        ),
        (
            "seed.txt",
            "SEED",
            "connector-tier1",
            "{path}: the file must be named connector-tier1.nk (the name records the role "
            "it belongs to)",
        ),
        (
            "connector-tier1.nk",
            "S" * 5000,
            "connector-tier1",
            "{path} is not a seed: larger than 4096 bytes",
        ),
    ],
)
def test_a_bad_seed_file_is_a_config_error_naming_it(
    tmp_path: Path, name: str, content: str | None, role: str, message: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content.replace("SEED", generate_user_seed()))
    with pytest.raises(ConfigError) as raised:
        read_seed_file(path, role)
    assert str(raised.value) == "NATS seed file " + message.format(path=path) + (
        " (`ssmd nats auth ENV --out DIR` writes one per role)" if content is None else ""
    )


def test_an_unreadable_seed_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "client.nk"
    path.mkdir()
    with pytest.raises(ConfigError, match=f"cannot read NATS seed file {path}: "):
        read_seed_file(path, "client")


def test_a_seed_handed_in_as_text_is_checked_the_same_way() -> None:
    seed = generate_user_seed()
    parsed = parse_role_seed(f"  {seed}\n", "admin", source="Pulumi secret adminSeed")
    assert (parsed.role, parsed.seed, parsed.source) == ("admin", seed, "Pulumi secret adminSeed")
    with pytest.raises(ConfigError) as raised:
        parse_role_seed(seed[:-2], "admin", source="Pulumi secret adminSeed")
    assert str(raised.value) == (
        "Pulumi secret adminSeed is not a NATS user seed: a user seed has 58 characters, "
        "this has 56"
    )
    assert seed[:-2] not in str(raised.value)
