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
use ringline_domain::{Clock, Directory, UserId, UserProfile};
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
    #[error("the user directory is unavailable")]
    Unavailable,
}

impl AuthError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing => "not_authenticated",
            Self::Invalid | Self::Expired => "token_not_valid",
            Self::Unavailable => "service_unavailable",
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
    /// Where users named by a token's `username` claim are registered on first use.
    provision_into: Option<SqlDirectory>,
    clock: Arc<dyn Clock>,
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
            provision_into: None,
            clock,
        }
    }

    /// Registers unknown users whose token carries a `username` claim (and optionally
    /// `first_name`, `last_name`) in `directory` the first time they are seen.
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

    async fn provision(&self, user: &UserId, claims: &Map<String, Value>) -> Result<(), AuthError> {
        let (Some(directory), Some(username)) = (&self.provision_into, claims.get("username").and_then(Value::as_str))
        else {
            return Ok(());
        };
        let known = directory.user(user).await.map_err(|error| {
            tracing::error!(%error, "cannot look up a token's user");
            AuthError::Unavailable
        })?;
        if known.is_some() {
            return Ok(());
        }
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
        self.provision(&user, &claims).await?;
        Ok(user)
    }
}

/// Extracts the token from `Authorization: Bearer <token>`, if present.
pub fn bearer_token(header: Option<&str>) -> Option<&str> {
    let (scheme, token) = header?.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|token| !token.is_empty())
}
