"""Security: passwords, tokens, API keys, RBAC, rate limiting, sessions, MFA and mTLS.

Import the names you need from here: ``from mainspring.security import PasswordHasher``.
"""

from typing import TYPE_CHECKING

from mainspring._compat import lazy_exports
from mainspring.context import Principal
from mainspring.security._apikeys import (
    ApiKeyRecord,
    ApiKeyService,
    ApiKeyStore,
    IssuedApiKey,
    MemoryApiKeyStore,
)
from mainspring.security._csrf import CsrfProtect
from mainspring.security._jose import MAX_TOKEN_BYTES
from mainspring.security._jwks import JwksClient, JwksFetcher, parse_jwks
from mainspring.security._keys import JWT_ALGORITHMS, JwtAlgorithm, JwtKey, KeyRing
from mainspring.security._mtls import (
    IdentitySource,
    client_tls_context,
    principal_from_certificate,
    server_tls_context,
)
from mainspring.security._passwords import BCRYPT_MAX_PASSWORD_BYTES, MAX_PASSWORD_CHARS, PasswordHasher
from mainspring.security._policy import CHARACTER_CLASSES, PasswordPolicy, load_common_passwords
from mainspring.security._ratelimit import RateLimitBackendError, RateLimiter, RateLimiterStats, RateLimitKey
from mainspring.security._ratelimit_types import Decision, Limit, Strategy, parse_limit, rate_limit_headers
from mainspring.security._rbac import RBAC, RoleSpec
from mainspring.security._recovery import MemoryRecoveryCodeStore, RecoveryCodes, RecoveryCodeStore
from mainspring.security._refresh import (
    IssuedRefreshToken,
    MemoryRefreshTokenStore,
    RefreshTokenRecord,
    RefreshTokenService,
    RefreshTokenStore,
    RotateOutcome,
)
from mainspring.security._revocation import MemoryRevocationList, RedisRevocationList, RevocationList
from mainspring.security._sessions import (
    MemorySessionStore,
    RedisSessionStore,
    Session,
    SessionCookie,
    SessionManager,
    SessionRecord,
    SessionStore,
)
from mainspring.security._stores_redis import (
    RedisApiKeyStore,
    RedisRecoveryCodeStore,
    RedisRefreshTokenStore,
    RedisTotpReplayStore,
)
from mainspring.security._tokens import DEFAULT_REQUIRED_CLAIMS, TokenService, VerifiedToken, verify_jws
from mainspring.security._totp import MemoryTotpReplayStore, Totp, TotpAlgorithm, TotpReplayStore

if TYPE_CHECKING:
    from mainspring.security._stores_sql import (
        SqlApiKeyStore,
        SqlRecoveryCodeStore,
        SqlRefreshTokenStore,
        SqlTotpReplayStore,
    )

# The SQL stores pull in SQLAlchemy (about 20 MB): imported on first use, so a service that does not
# use them (a JWT-only API, say) never loads it.
__getattr__ = lazy_exports(
    __name__,
    "mainspring.security._stores_sql",
    ("SqlApiKeyStore", "SqlRecoveryCodeStore", "SqlRefreshTokenStore", "SqlTotpReplayStore"),
)

__all__ = [
    "BCRYPT_MAX_PASSWORD_BYTES",
    "CHARACTER_CLASSES",
    "DEFAULT_REQUIRED_CLAIMS",
    "JWT_ALGORITHMS",
    "MAX_PASSWORD_CHARS",
    "MAX_TOKEN_BYTES",
    "RBAC",
    "ApiKeyRecord",
    "ApiKeyService",
    "ApiKeyStore",
    "CsrfProtect",
    "Decision",
    "IdentitySource",
    "IssuedApiKey",
    "IssuedRefreshToken",
    "JwksClient",
    "JwksFetcher",
    "JwtAlgorithm",
    "JwtKey",
    "KeyRing",
    "Limit",
    "MemoryApiKeyStore",
    "MemoryRecoveryCodeStore",
    "MemoryRefreshTokenStore",
    "MemoryRevocationList",
    "MemorySessionStore",
    "MemoryTotpReplayStore",
    "PasswordHasher",
    "PasswordPolicy",
    "Principal",
    "RateLimitBackendError",
    "RateLimitKey",
    "RateLimiter",
    "RateLimiterStats",
    "RecoveryCodeStore",
    "RecoveryCodes",
    "RedisApiKeyStore",
    "RedisRecoveryCodeStore",
    "RedisRefreshTokenStore",
    "RedisRevocationList",
    "RedisSessionStore",
    "RedisTotpReplayStore",
    "RefreshTokenRecord",
    "RefreshTokenService",
    "RefreshTokenStore",
    "RevocationList",
    "RoleSpec",
    "RotateOutcome",
    "Session",
    "SessionCookie",
    "SessionManager",
    "SessionRecord",
    "SessionStore",
    "SqlApiKeyStore",
    "SqlRecoveryCodeStore",
    "SqlRefreshTokenStore",
    "SqlTotpReplayStore",
    "Strategy",
    "TokenService",
    "Totp",
    "TotpAlgorithm",
    "TotpReplayStore",
    "VerifiedToken",
    "client_tls_context",
    "load_common_passwords",
    "parse_jwks",
    "parse_limit",
    "principal_from_certificate",
    "rate_limit_headers",
    "server_tls_context",
    "verify_jws",
]
