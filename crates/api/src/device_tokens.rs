//! `/api/device-tokens/`: the tokens users' phones and browsers registered with a push service
//! (Expo, FCM, APNs VoIP), as the original app's `DeviceTokenViewSet` keeps them. The outbound
//! crate's `MobilePushSender` rings them when a call rings their user (`docs/push.md`).
//!
//! A user sees and deletes only their own tokens; posting a token that exists moves it to the
//! poster (a phone has one token, for whoever signed in last on it).

use std::sync::Arc;

use poem::Request;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use ringline_domain::{Clock, DevicePlatform, DeviceRegistration, DeviceToken, DeviceTokens, ErrorCode, PushProvider};

use crate::ApiTags;
use crate::auth::Authenticator;
use crate::error::ApiError;
use crate::models::{IntegerParam, UtcTime};
use crate::pagination;
use crate::security::{BearerAuth, authenticate};

/// The kind of device.
#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "lowercase")]
pub enum PlatformJson {
    Ios,
    Android,
    Web,
}

impl From<PlatformJson> for DevicePlatform {
    fn from(platform: PlatformJson) -> Self {
        match platform {
            PlatformJson::Ios => Self::Ios,
            PlatformJson::Android => Self::Android,
            PlatformJson::Web => Self::Web,
        }
    }
}

impl From<DevicePlatform> for PlatformJson {
    fn from(platform: DevicePlatform) -> Self {
        match platform {
            DevicePlatform::Ios => Self::Ios,
            DevicePlatform::Android => Self::Android,
            DevicePlatform::Web => Self::Web,
        }
    }
}

/// The push service a token belongs to.
#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "snake_case")]
pub enum ProviderJson {
    /// Expo's push service (`ExponentPushToken[…]`).
    Expo,
    /// Firebase Cloud Messaging.
    Fcm,
    /// Apple's VoIP pushes (a PushKit token).
    ApnsVoip,
}

impl From<ProviderJson> for PushProvider {
    fn from(provider: ProviderJson) -> Self {
        match provider {
            ProviderJson::Expo => Self::Expo,
            ProviderJson::Fcm => Self::Fcm,
            ProviderJson::ApnsVoip => Self::ApnsVoip,
        }
    }
}

impl From<PushProvider> for ProviderJson {
    fn from(provider: PushProvider) -> Self {
        match provider {
            PushProvider::Expo => Self::Expo,
            PushProvider::Fcm => Self::Fcm,
            PushProvider::ApnsVoip => Self::ApnsVoip,
        }
    }
}

/// A device token to register.
#[derive(Debug, Object)]
pub struct DeviceTokenBody {
    /// The token the push service gave the app: 1 to 512 printable ASCII characters, no
    /// spaces. An `expo` token is `ExponentPushToken[…]` (or `ExpoPushToken[…]`), an
    /// `apns_voip` token hexadecimal on `ios`.
    #[oai(validator(min_length = 1, max_length = 512, pattern = r"^[!-~]+$"))]
    pub token: String,
    pub platform: PlatformJson,
    /// The service it belongs to. When absent: Expo for an `ExponentPushToken[…]`, else APNs
    /// VoIP on `ios` and FCM on `android` and `web`.
    pub provider: Option<ProviderJson>,
}

/// A registered device token, as the original app shows it (plus its service).
#[derive(Debug, Object)]
pub struct DeviceTokenJson {
    pub id: i64,
    pub token: String,
    pub platform: PlatformJson,
    pub provider: ProviderJson,
    pub created_at: UtcTime,
    /// When it was last registered.
    pub last_seen_at: UtcTime,
}

impl From<&DeviceToken> for DeviceTokenJson {
    fn from(token: &DeviceToken) -> Self {
        Self {
            id: token.id,
            token: token.token.clone(),
            platform: token.platform.into(),
            provider: token.provider.into(),
            created_at: UtcTime(token.created_at),
            last_seen_at: UtcTime(token.last_seen_at),
        }
    }
}

#[derive(Debug, Object)]
pub struct DeviceTokenPage {
    pub count: u64,
    #[oai(nullable)]
    pub next: Option<String>,
    #[oai(nullable)]
    pub previous: Option<String>,
    pub results: Vec<DeviceTokenJson>,
}

#[derive(ApiResponse)]
enum Registered {
    /// Stored (or moved to you and refreshed, for a token stored before).
    #[oai(status = 201)]
    Created(Json<DeviceTokenJson>),
}

#[derive(ApiResponse)]
enum Removed {
    #[oai(status = 204)]
    Done,
}

#[derive(Debug)]
pub struct DeviceTokensApi {
    tokens: Arc<dyn DeviceTokens>,
    auth: Arc<dyn Authenticator>,
    clock: Arc<dyn Clock>,
}

impl DeviceTokensApi {
    pub fn new(tokens: Arc<dyn DeviceTokens>, auth: Arc<dyn Authenticator>, clock: Arc<dyn Clock>) -> Self {
        Self { tokens, auth, clock }
    }
}

#[OpenApi(tag = "ApiTags::Push")]
impl DeviceTokensApi {
    /// Your device tokens
    ///
    /// The one registered most recently first, ten a page, paginated like `GET /api/calls/`.
    #[oai(path = "/api/device-tokens/", method = "get", operation_id = "device_tokens_list")]
    async fn list(
        &self,
        req: &Request,
        auth: BearerAuth,
        /// 1-based page number.
        page: Query<Option<String>>,
    ) -> Result<Json<DeviceTokenPage>, ApiError> {
        let user = authenticate(self.auth.as_ref(), req, &auth).await?;
        let page = pagination::requested(page.0.as_deref())?;
        let found = self.tokens.list(&user, page).await.map_err(|error| ApiError::internal(&error))?;
        let (next, previous) = pagination::links(req, page, found.total, None)?;
        let results = found.items.iter().map(DeviceTokenJson::from).collect();
        Ok(Json(DeviceTokenPage { count: found.total, next, previous, results }))
    }

    /// Register a device token
    ///
    /// Calls to you then ring this device through its push service, also while its app is
    /// closed (`docs/push.md`). A token registered before (by anyone) is moved to you and its
    /// `last_seen_at` refreshed. You keep your ten most recently registered tokens. 400
    /// `invalid_device_token` for a token that is empty, too long, or not of its service.
    #[oai(path = "/api/device-tokens/", method = "post", operation_id = "device_tokens_create")]
    async fn create(
        &self,
        req: &Request,
        auth: BearerAuth,
        body: Json<DeviceTokenBody>,
    ) -> Result<Registered, ApiError> {
        let user = authenticate(self.auth.as_ref(), req, &auth).await?;
        let body = body.0;
        let registration = DeviceRegistration::new(body.token, body.platform.into(), body.provider.map(Into::into))
            .map_err(|invalid| ApiError::with_detail(ErrorCode::InvalidDeviceToken, invalid.to_string()))?;
        let stored = self.tokens.register(&user, &registration, self.clock.now()).await;
        let stored = stored.map_err(|error| ApiError::internal(&error))?;
        Ok(Registered::Created(Json(DeviceTokenJson::from(&stored))))
    }

    /// Remove one of your device tokens
    ///
    /// 404 `device_token_not_found` when you have none with this id.
    #[oai(path = "/api/device-tokens/:id/", method = "delete", operation_id = "device_tokens_delete")]
    async fn delete(&self, req: &Request, auth: BearerAuth, id: Path<IntegerParam>) -> Result<Removed, ApiError> {
        let user = authenticate(self.auth.as_ref(), req, &auth).await?;
        let not_found = || ApiError::new(ErrorCode::DeviceTokenNotFound);
        let id = id.0.0.parse::<i64>().map_err(|_| not_found())?;
        let removed = self.tokens.remove(&user, id).await.map_err(|error| ApiError::internal(&error))?;
        if removed { Ok(Removed::Done) } else { Err(not_found()) }
    }
}
