"""``cryptography`` (about 10 MB resident) loads only when an asymmetric key or a certificate needs it.

Each check runs in a fresh interpreter: in this process other tests have long since imported it.
"""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

# Prints, as JSON, whether cryptography was loaded after each step: HS256-only work first, then the
# steps that do need it (which also shows the check can see it being loaded).
_CHILD = """
import sys

import orjson

loaded = {}


def step(name):
    loaded[name] = "cryptography" in sys.modules
    loaded[name + ":sqlalchemy"] = "sqlalchemy" in sys.modules


import mainspring.security
import mainspring.security.fastapi

step("import")
from mainspring.security import JwtKey, KeyRing, TokenService, principal_from_certificate

secret = JwtKey.hmac(b"x" * 32, kid="k")
service = TokenService(KeyRing(secret, [JwtKey.generate("HS256")]), issuer="i", audience="a")
service.verify(service.issue("user-1"))
assert service.ring.jwks() == {"keys": []}
oct_jwk = {"kty": "oct", "k": "eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHg", "alg": "HS256", "kid": "o"}
JwtKey.from_jwk(oct_jwk)
principal_from_certificate({"subject": ((("commonName", "orders"),),)})
step("hs256")
JwtKey.generate("EdDSA")
step("eddsa")
from mainspring.security import SqlApiKeyStore

step("sql-store")
sys.stdout.write(orjson.dumps(loaded).decode())
"""


@pytest.fixture(scope="module")
def loaded() -> dict[str, bool]:
    child = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, check=False)
    assert child.returncode == 0, child.stderr
    result: dict[str, bool] = orjson.loads(child.stdout)
    return result


def test_importing_security_and_its_fastapi_module_does_not_load_cryptography(
    loaded: dict[str, bool],
) -> None:
    assert loaded["import"] is False


def test_hs256_tokens_key_rings_and_a_getpeercert_dict_do_not_load_cryptography(
    loaded: dict[str, bool],
) -> None:
    assert loaded["hs256"] is False


def test_generating_an_eddsa_key_loads_cryptography(loaded: dict[str, bool]) -> None:
    assert loaded["eddsa"] is True


def test_the_sql_stores_and_so_sqlalchemy_load_only_when_asked_for(loaded: dict[str, bool]) -> None:
    assert loaded["import:sqlalchemy"] is False
    assert loaded["eddsa:sqlalchemy"] is False
    assert loaded["sql-store:sqlalchemy"] is True
