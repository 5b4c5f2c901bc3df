//! `/api/demo/…`: sign-in for trying Ringline on a laptop.
//!
//! Enabled only while the server runs on the built-in development JWT secret. With that secret
//! anyone can already mint tokens for any user (`ringline token`, or by hand), so handing them
//! out here exposes nothing new; with a real secret these endpoints answer 404
//! `demo_disabled`. The web client uses them to offer a list of users to sign in as.

use std::sync::Arc;
use std::time::Duration;

use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use ringline_domain::{Directory, ErrorCode, UserId};
use ringline_storage::SqlDirectory;

use crate::ApiTags;
use crate::auth::JwtAuthenticator;
use crate::error::ApiError;
use crate::models::{FlexibleId, UserJson};

/// How long a demo token lasts.
const DEMO_TOKEN_TTL: Duration = Duration::from_secs(12 * 60 * 60);

#[derive(Debug, Object)]
pub struct DemoUsers {
    pub users: Vec<UserJson>,
}

#[derive(Debug, Object)]
pub struct DemoTokenRequest {
    pub user_id: FlexibleId,
}

#[derive(Debug, Object)]
pub struct DemoToken {
    /// An access token for the user, valid for 12 hours.
    pub token: String,
    pub user: UserJson,
}

#[derive(Debug)]
pub struct DemoApi {
    /// `Some` only when demo sign-in is enabled.
    enabled: Option<(SqlDirectory, Arc<JwtAuthenticator>)>,
}

impl DemoApi {
    pub fn new(enabled: Option<(SqlDirectory, Arc<JwtAuthenticator>)>) -> Self {
        Self { enabled }
    }

    fn enabled(&self) -> Result<&(SqlDirectory, Arc<JwtAuthenticator>), ApiError> {
        self.enabled.as_ref().ok_or_else(|| ApiError::new(ErrorCode::DemoDisabled))
    }
}

#[OpenApi(tag = "ApiTags::Demo")]
impl DemoApi {
    /// Users to sign in as (development only)
    #[oai(path = "/api/demo/users/", method = "get", operation_id = "demo_users")]
    async fn users(&self) -> Result<Json<DemoUsers>, ApiError> {
        let (directory, _) = self.enabled()?;
        let users = directory.list_users(50).await.map_err(|error| ApiError::internal(&error))?;
        Ok(Json(DemoUsers { users: users.iter().map(UserJson::from_profile).collect() }))
    }

    /// A token for a user (development only)
    #[oai(path = "/api/demo/token/", method = "post", operation_id = "demo_token")]
    async fn token(&self, body: Json<DemoTokenRequest>) -> Result<Json<DemoToken>, ApiError> {
        let (directory, authenticator) = self.enabled()?;
        let not_found = || ApiError::new(ErrorCode::UserNotFound);
        let user = UserId::parse(body.0.user_id.0).map_err(|_| not_found())?;
        let profile = directory.user(&user).await.map_err(|error| ApiError::internal(&error))?.ok_or_else(not_found)?;
        let token = authenticator.mint(&user, DEMO_TOKEN_TTL).map_err(|error| ApiError::internal(&error))?;
        Ok(Json(DemoToken { token, user: UserJson::from_profile(&profile) }))
    }
}
