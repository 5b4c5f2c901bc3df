//! The server's VAPID identity (RFC 8292): the key pair push services know this server by, and
//! the `Authorization` header each push request carries (an ES256 JWT whose audience is the
//! push service's origin, signed with `jsonwebtoken`).

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ringline_domain::VapidKeys;

/// The server's VAPID identity.
#[derive(Clone)]
pub struct Vapid {
    key: jsonwebtoken::EncodingKey,
    /// The public key, base64url (the browser's `applicationServerKey`, and `k=` of each request).
    public_key: String,
    /// Who to contact about this server's pushes (`mailto:` or `https:`), the JWT's `sub`.
    subject: String,
}

impl std::fmt::Debug for Vapid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vapid").field("public_key", &self.public_key).finish_non_exhaustive()
    }
}

/// The VAPID key pair could not be made or read.
#[derive(Debug, thiserror::Error)]
#[error("the VAPID key is unusable: {0}")]
pub struct VapidError(String);

impl Vapid {
    /// A new P-256 key pair, for the storage to keep (`SqlPushSubscriptions::vapid_keys`).
    ///
    /// # Panics
    /// When the system's random source fails (nothing can be signed then).
    pub fn generate() -> VapidKeys {
        let random = ring::rand::SystemRandom::new();
        let algorithm = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(algorithm, &random).expect("a random key");
        let pair = ring::signature::EcdsaKeyPair::from_pkcs8(algorithm, pkcs8.as_ref(), &random).expect("our own key");
        VapidKeys {
            private_pkcs8_base64: STANDARD.encode(pkcs8.as_ref()),
            public_key: URL_SAFE_NO_PAD.encode(ring::signature::KeyPair::public_key(&pair).as_ref()),
        }
    }

    /// # Errors
    /// When the stored private key is not base64 PKCS#8.
    pub fn new(keys: &VapidKeys, subject: impl Into<String>) -> Result<Self, VapidError> {
        let der = STANDARD.decode(&keys.private_pkcs8_base64).map_err(|error| VapidError(error.to_string()))?;
        Ok(Self {
            key: jsonwebtoken::EncodingKey::from_ec_der(&der),
            public_key: keys.public_key.clone(),
            subject: subject.into(),
        })
    }

    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    /// `Authorization: vapid t=<JWT>, k=<public key>` for a request to `endpoint`.
    pub(super) fn authorization(&self, endpoint: &reqwest::Url, now_unix: i64) -> Result<String, VapidError> {
        let audience = endpoint.origin().ascii_serialization();
        let claims = serde_json::json!({"aud": audience, "exp": now_unix + 12 * 3600, "sub": self.subject});
        let token =
            jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256), &claims, &self.key)
                .map_err(|error| VapidError(error.to_string()))?;
        Ok(format!("vapid t={token}, k={}", self.public_key))
    }
}
