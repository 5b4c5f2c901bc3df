//! Who is calling: bearer tokens in, a [`UserId`] out.
//!
//! [`Authenticator`] is the seam for embedding applications, which may check tokens their own
//! way. [`JwtAuthenticator`] accepts the HS256 access tokens that `djangorestframework-simplejwt`
//! issues (claims `user_id`, `exp`, `token_type: "access"`, `jti`), so a Django app and
//! Ringline configured with the same secret accept the same tokens. Tokens are never logged.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ringline_domain::{AccountStatus, Accounts, Clock, ErrorCode, UserId, UserProfile};
use ringline_signaling::throttle::OncePerSecond;
use ringline_storage::SqlDirectory;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};

/// Why a token was refused. The variants map to the API's 401 codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("Authentication credentials were not provided.")]
    Missing,
    #[error("Given token not valid for any token type")]
    Invalid,
    #[error("Token is expired")]
    Expired,
    /// The token's user was removed, or was never known and may not be registered from it.
    #[error("User not found")]
    UserNotFound,
    /// The token's user was turned off by the operator.
    #[error("User is inactive")]
    Inactive,
    #[error("the user directory is unavailable")]
    Unavailable,
}

impl AuthError {
    /// The catalogue's code; simplejwt's own where it has one (`user_not_found`, `user_inactive`).
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Missing => ErrorCode::NotAuthenticated,
            Self::Invalid | Self::Expired => ErrorCode::TokenNotValid,
            Self::UserNotFound => ErrorCode::AccountNotFound,
            Self::Inactive => ErrorCode::UserInactive,
            Self::Unavailable => ErrorCode::ServiceUnavailable,
        }
    }
}

/// Turns a bearer token into the user it speaks for.
#[async_trait]
pub trait Authenticator: Send + Sync + std::fmt::Debug {
    /// # Errors
    /// [`AuthError`] when the token is not acceptable.
    async fn authenticate(&self, token: &str) -> Result<UserId, AuthError>;
}

/// HS256 JWTs as simplejwt issues them.
pub struct JwtAuthenticator {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
    user_claim: String,
    /// Whether the token's user may still use the service; `None`: any validly signed token
    /// is taken (an embedding application checks its users itself).
    accounts: Option<Arc<Accounts>>,
    /// Where users named by a token's `username` claim are registered on first use; `None`:
    /// with `accounts`, users the directory does not know are refused.
    provision_into: Option<SqlDirectory>,
    clock: Arc<dyn Clock>,
    /// One WARN a second at most while the directory cannot be read.
    outage_logged: OncePerSecond,
}

impl std::fmt::Debug for JwtAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuthenticator").field("user_claim", &self.user_claim).finish_non_exhaustive()
    }
}

impl JwtAuthenticator {
    /// Accepts tokens signed with `secret`, reading the user id from claim `user_claim`.
    pub fn new(secret: &SecretString, user_claim: impl Into<String>, clock: Arc<dyn Clock>) -> Self {
        let bytes = secret.expose_secret().as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp"]);
        validation.leeway = 0;
        Self {
            decoding: DecodingKey::from_secret(bytes),
            encoding: EncodingKey::from_secret(bytes),
            validation,
            user_claim: user_claim.into(),
            accounts: None,
            provision_into: None,
            clock,
            outage_logged: OncePerSecond::new(),
        }
    }

    /// Refuses the tokens of users that `accounts` says were removed (`user_not_found`) or
    /// deactivated (`user_inactive`), as simplejwt does; users the directory never knew are
    /// refused too (`user_not_found`), unless [`JwtAuthenticator::provisioning_into`] registers
    /// them. While the directory cannot be read, a validly signed token is taken (see
    /// `docs/api.md`).
    #[must_use]
    pub fn checking_accounts(mut self, accounts: Arc<Accounts>) -> Self {
        self.accounts = Some(accounts);
        self
    }

    /// Registers unknown users whose token carries a `username` claim (and optionally
    /// `first_name`, `last_name`) in `directory` the first time they are seen; an unknown user
    /// whose token has none is let in unregistered. Never a removed user: their row stays.
    #[must_use]
    pub fn provisioning_into(mut self, directory: SqlDirectory) -> Self {
        self.provision_into = Some(directory);
        self
    }

    /// Signs an access token for `user`, valid for `ttl`, in simplejwt's shape.
    ///
    /// # Errors
    /// Only if signing fails, which HS256 with an in-memory key does not.
    pub fn mint(&self, user: &UserId, ttl: Duration) -> Result<String, jsonwebtoken::errors::Error> {
        let now = self.clock.now().unix_micros() / 1_000_000;
        let exp = now.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX));
        let mut claims = Map::new();
        claims.insert("token_type".into(), Value::from("access"));
        claims.insert("exp".into(), Value::from(exp));
        claims.insert("iat".into(), Value::from(now));
        claims.insert("jti".into(), Value::from(uuid::Uuid::new_v4().simple().to_string()));
        claims.insert(self.user_claim.clone(), Value::from(user.as_str()));
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
    }

    fn verify(&self, token: &str) -> Result<(UserId, Map<String, Value>), AuthError> {
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, &self.decoding, &self.validation).map_err(|error| {
                match error.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                    _ => AuthError::Invalid,
                }
            })?;
        let claims = data.claims;
        // simplejwt marks access tokens "access" (refresh tokens "refresh") and refuses a token
        // without the claim; only access tokens open the API.
        if claims.get("token_type").and_then(Value::as_str) != Some("access") {
            return Err(AuthError::Invalid);
        }
        let user = match claims.get(&self.user_claim) {
            Some(Value::String(id)) => UserId::parse(id.clone()),
            Some(Value::Number(id)) => UserId::parse(id.to_string()),
            _ => return Err(AuthError::Invalid),
        }
        .map_err(|_| AuthError::Invalid)?;
        Ok((user, claims))
    }

    /// Whether `user` may come in: known and active, or unknown and registered now.
    async fn admit(&self, user: &UserId, claims: &Map<String, Value>) -> Result<(), AuthError> {
        let Some(accounts) = &self.accounts else { return Ok(()) };
        match accounts.refused(user) {
            Some(AccountStatus::Inactive) => return Err(AuthError::Inactive),
            Some(_) => return Err(AuthError::UserNotFound),
            None => {}
        }
        // Not refused: the directory is asked only when it matters whether it knows the user,
        // to register them, or to refuse the unknown.
        let may_register = self.provision_into.is_some();
        if may_register && !claims.contains_key("username") {
            return Ok(());
        }
        let status = match accounts.status(user).await {
            Ok(status) => status,
            Err(error) => {
                // Fail open: with the database down nothing that needs the account works
                // anyway, and refusing would tell clients their token is bad.
                if self.outage_logged.due() {
                    tracing::warn!(%error, "cannot check a token's user: letting validly signed tokens in meanwhile");
                }
                return Ok(());
            }
        };
        match status {
            AccountStatus::Active => Ok(()),
            AccountStatus::Inactive => Err(AuthError::Inactive),
            AccountStatus::Removed => Err(AuthError::UserNotFound),
            AccountStatus::Unknown => match &self.provision_into {
                Some(directory) => self.provision(directory, user, claims).await,
                None => Err(AuthError::UserNotFound),
            },
        }
    }

    async fn provision(
        &self,
        directory: &SqlDirectory,
        user: &UserId,
        claims: &Map<String, Value>,
    ) -> Result<(), AuthError> {
        let Some(username) = claims.get("username").and_then(Value::as_str) else {
            return Ok(());
        };
        let text = |name: &str| claims.get(name).and_then(Value::as_str).unwrap_or_default().to_owned();
        let profile = UserProfile {
            id: user.clone(),
            username: username.to_owned(),
            first_name: text("first_name"),
            last_name: text("last_name"),
            profile_image_url: None,
        };
        directory.upsert_user(&profile, self.clock.now()).await.map_err(|error| {
            tracing::error!(%error, "cannot register a token's user");
            AuthError::Unavailable
        })?;
        tracing::info!(user = %user, "registered a new user from their token's claims");
        Ok(())
    }
}

#[async_trait]
impl Authenticator for JwtAuthenticator {
    async fn authenticate(&self, token: &str) -> Result<UserId, AuthError> {
        let (user, claims) = self.verify(token)?;
        self.admit(&user, &claims).await?;
        Ok(user)
    }
}

/// Extracts the token from `Authorization: Bearer <token>`, if present.
pub fn bearer_token(header: Option<&str>) -> Option<&str> {
    let (scheme, token) = header?.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|token| !token.is_empty())
}
