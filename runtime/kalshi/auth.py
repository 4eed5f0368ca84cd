"""Kalshi API request signing (RSA-PSS over SHA-256) and its verification.

Every authenticated request, including the WebSocket upgrade, carries three headers:
`KALSHI-ACCESS-KEY` (the key id), `KALSHI-ACCESS-TIMESTAMP` (milliseconds) and
`KALSHI-ACCESS-SIGNATURE`, the base64 RSA-PSS signature (SHA-256, MGF1 SHA-256, salt length
equal to the digest length) of `timestamp + METHOD + path`. The path is signed without its
query string. Verification lives here too so the simulator checks exactly what we sign.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ssmd_infra.core.errors import SsmdError

KEY_HEADER = "KALSHI-ACCESS-KEY"
TIMESTAMP_HEADER = "KALSHI-ACCESS-TIMESTAMP"
SIGNATURE_HEADER = "KALSHI-ACCESS-SIGNATURE"

_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)


def _message(timestamp: str, method: str, path: str) -> bytes:
    return (timestamp + method.upper() + path.split("?", 1)[0]).encode("utf-8")


class KalshiSigner:
    """Signs requests with one API key; holds the private key, never prints it."""

    def __init__(self, key_id: str, private_key: rsa.RSAPrivateKey) -> None:
        if not key_id:
            raise SsmdError("Kalshi API key id is empty (set KALSHI_API_KEY_ID)")
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise SsmdError("Kalshi private key must be an RSA key")
        self.key_id = key_id
        self._key = private_key

    @classmethod
    def from_files(cls, key_id: str, pem_path: str | Path) -> KalshiSigner:
        """Load the PEM private key at `pem_path`; a clear error when it cannot be used."""
        path = Path(pem_path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SsmdError(
                f"cannot read Kalshi private key {path}: {exc.strerror or exc}"
            ) from None
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise SsmdError(f"{path} is not an unencrypted PEM private key: {exc}") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise SsmdError(f"{path} holds a non-RSA key ({type(key).__name__}); Kalshi needs RSA")
        return cls(key_id, key)

    def headers(self, method: str, path: str, now_ms: int | None = None) -> dict[str, str]:
        """The three auth headers for `METHOD path` at `now_ms` (default: now)."""
        timestamp = str(int(time.time() * 1000) if now_ms is None else now_ms)
        signature = self._key.sign(_message(timestamp, method, path), _PSS, hashes.SHA256())
        return {
            KEY_HEADER: self.key_id,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: base64.b64encode(signature).decode("ascii"),
        }

    def __repr__(self) -> str:
        return f"KalshiSigner(key_id={self.key_id!r})"


def load_public_key(pem: bytes) -> rsa.RSAPublicKey:
    """The RSA public key in `pem`, or an `SsmdError` saying why not."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise SsmdError(f"not a PEM public key: {exc}") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise SsmdError(f"public key is a {type(key).__name__}, Kalshi uses RSA keys")
    return key


def verify_headers(
    public_key: rsa.RSAPublicKey,
    headers: Mapping[str, str],
    method: str,
    path: str,
    max_skew_s: float = 60.0,
    now_ms: int | None = None,
) -> bool:
    """True when `headers` carry a valid, fresh signature of `METHOD path` by `public_key`.

    Header names are matched case-insensitively (HTTP servers normalise them differently).
    """
    lower = {k.lower(): v for k, v in headers.items()}
    key_id = lower.get(KEY_HEADER.lower())
    timestamp = lower.get(TIMESTAMP_HEADER.lower())
    signature = lower.get(SIGNATURE_HEADER.lower())
    if not key_id or not timestamp or not signature or not timestamp.isdigit():
        return False
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if abs(now - int(timestamp)) > max_skew_s * 1000:
        return False
    try:
        raw = base64.b64decode(signature, validate=True)
        public_key.verify(raw, _message(timestamp, method, path), _PSS, hashes.SHA256())
    except (InvalidSignature, ValueError):
        return False
    return True


def generate_key_pair(directory: str | Path, bits: int = 2048) -> tuple[Path, Path]:
    """A fresh RSA key pair as `kalshi-private.pem` / `kalshi-public.pem` under `directory`.

    For tests and local mode (the simulator gets the public half). The private file is
    written with mode 0600.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private_path = out / "kalshi-private.pem"
    public_path = out / "kalshi-public.pem"
    private_path.touch(mode=0o600, exist_ok=True)
    private_path.chmod(0o600)
    private_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private_path, public_path
