//! Security schemes as the OpenAPI document shows them, and the per-request user slot the
//! request log reads.

use std::sync::{Arc, OnceLock};

use poem::Request;
use poem_openapi::SecurityScheme;
use poem_openapi::auth::Bearer;
use ringline_domain::{ErrorCode, UserId};

use crate::auth::{AuthError, Authenticator};
use crate::error::ApiError;

/// A user's access token: `Authorization: Bearer <JWT>`.
#[derive(Debug, SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "JWT")]
pub struct BearerAuth(pub Bearer);

/// The operator's admin token: `Authorization: Bearer <RINGLINE_ADMIN_TOKEN>`.
#[derive(Debug, SecurityScheme)]
#[oai(ty = "bearer")]
pub struct AdminToken(pub Bearer);

/// The authenticated user of a request, filled in by the handler once the token checks out,
/// so that the request log can name them without ever seeing the token.
#[derive(Debug, Clone, Default)]
pub struct RequestUser(Arc<OnceLock<UserId>>);

impl RequestUser {
    pub fn get(&self) -> Option<&UserId> {
        self.0.get()
    }
}

/// Checks the bearer token and records who the request is from.
///
/// # Errors
/// 401 for a bad token, 503 when the directory needed to check it is down.
pub async fn authenticate(auth: &dyn Authenticator, req: &Request, bearer: &BearerAuth) -> Result<UserId, ApiError> {
    match auth.authenticate(&bearer.0.token).await {
        Ok(user) => {
            if let Some(slot) = req.extensions().get::<RequestUser>() {
                // A second set in one request cannot happen; ignoring it keeps the first.
                let _ = slot.0.set(user.clone());
            }
            Ok(user)
        }
        Err(AuthError::Unavailable) => Err(ApiError::new(ErrorCode::ServiceUnavailable)),
        Err(error) => Err(ApiError::with_detail(error.code(), error.to_string())),
    }
}
