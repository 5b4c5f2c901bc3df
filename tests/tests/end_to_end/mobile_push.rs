//! Mobile push against stand-ins of the three services, run by the test on 127.0.0.1 and
//! checking what the real ones check:
//! - Expo: the JSON of each message, answered per token as Expo documents (a ticket `ok`,
//!   `DeviceNotRegistered`, 429 with `Retry-After`, 500);
//! - FCM: an OAuth token endpoint that verifies the RS256 assertion against the test's own
//!   service-account key, and an HTTP v1 endpoint that takes only the token it issued;
//! - APNs: HTTP/2 over TLS (a certificate of the test's own CA), the ES256 provider token
//!   verified against the test's `.p8` key, the VoIP headers and topic.
//!
//! Keys and certificates are made with the `openssl` command, once per test binary (the
//! tests differ in what they push, not in their keys).
//!
//! Cases: a ring and each of the four endings on every service; tokens the services reject
//! deleted; retries after 429 and 500; a restart while ringing; blocked and do-not-disturb
//! calls pushing nothing; the device-token API as the original app's clients use it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use poem::http::uri::Scheme;
use poem::http::{StatusCode, Version};
use poem::listener::{Acceptor, Listener, TcpAcceptor, TcpListener};
use poem::web::{LocalAddr, RemoteAddr};
use poem::{Request, Response, Route, Server};
use reqwest::Method;
use ringline_tests::{DatabaseBackend, TestApp, on_both_databases, spawn_http};
use serde_json::{Value, json};

const PROJECT: &str = "ringline-test-project";
const CLIENT_EMAIL: &str = "pusher@ringline-test-project.iam.gserviceaccount.com";
const KEY_ID: &str = "ABC123DEFG";
const TEAM_ID: &str = "TEAM123456";
const BUNDLE: &str = "org.example.calls";

/// A token of each kind, as apps register them.
const EXPO_ANDROID: &str = "ExponentPushToken[android-phone-0001]";
const EXPO_IOS: &str = "ExpoPushToken[iphone-0002]";
const FCM_WEB: &str = "fcm-web:APA91bBrowserToken";
const FCM_ANDROID: &str = "fcm-android:APA91bPhoneToken";
fn apns_token(prefix: &str) -> String {
    format!("{prefix}{}", "ab".repeat(32 - prefix.len() / 2))
}

/// One push a stand-in took.
#[derive(Debug, Clone)]
struct Pushed {
    service: &'static str,
    token: String,
    /// The message (Expo, FCM) or the payload (APNs), as sent.
    body: Value,
    /// The APNs headers that matter.
    headers: HashMap<String, String>,
    answered: u16,
}

impl Pushed {
    /// The `type` the apps read (`call.ringing`, `call.rejected`, …).
    fn kind(&self) -> String {
        let data = match self.service {
            "expo" => &self.body["data"],
            "fcm" => &self.body["message"]["data"],
            _ => &self.body,
        };
        data["type"].as_str().unwrap_or_default().to_owned()
    }

    fn call_id(&self) -> String {
        let data = match self.service {
            "expo" => &self.body["data"],
            "fcm" => &self.body["message"]["data"],
            _ => &self.body,
        };
        data["call_id"].as_str().unwrap_or_default().to_owned()
    }
}

/// How a stand-in answers a token: by what the token contains, and how often it was tried.
fn scripted(token: &str, attempt: usize) -> &'static str {
    if token.contains("gone") || token.starts_with("dead") {
        "gone"
    } else if token.starts_with("bad0") {
        "bad"
    } else if token.contains("busy") && attempt == 0 {
        "busy"
    } else if token.contains("broken") && attempt == 0 {
        "broken"
    } else {
        "ok"
    }
}

/// The three stand-ins, their keys, and everything they took.
#[derive(Clone)]
struct Services {
    dir: Arc<tempdir::Dir>,
    expo_url: String,
    fcm_url: String,
    apns_url: String,
    service_account: Value,
    pushed: Arc<Mutex<Vec<Pushed>>>,
    issued: Arc<Mutex<Vec<String>>>,
}

mod tempdir {
    /// A directory removed when dropped.
    pub struct Dir(pub std::path::PathBuf);

    impl Dir {
        pub fn new() -> Self {
            let path = std::env::temp_dir().join(format!("ringline-push-{}", uuid_like()));
            std::fs::create_dir_all(&path).expect("a temporary directory");
            Self(path)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn uuid_like() -> String {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos();
        format!("{}-{nanos}", std::process::id())
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = std::process::Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
    assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).expect("a file openssl wrote")
}

/// The keys and certificates every test uses: the service account's RSA key, the APNs .p8
/// key, and a CA with a certificate for 127.0.0.1 (an end-entity certificate: rustls takes no
/// CA as a server's own).
struct Keys {
    fcm_private: String,
    fcm_public: String,
    apns_private: String,
    apns_public: String,
    ca_certificate: String,
    tls_key: String,
    tls_certificate: String,
}

/// [`Keys`], made once per test binary (an RSA key takes a while).
fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = tempdir::Dir::new();
        let path = dir.0.clone();
        openssl(&path, &["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "fcm.pem"]);
        openssl(&path, &["pkey", "-in", "fcm.pem", "-pubout", "-out", "fcm.pub"]);
        openssl(&path, &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "apns.p8"]);
        openssl(&path, &["pkey", "-in", "apns.p8", "-pubout", "-out", "apns.pub"]);
        openssl(
            &path,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "1",
                "-subj",
                "/CN=ringline test CA",
            ],
        );
        openssl(
            &path,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "tls.key",
                "-out",
                "tls.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        );
        std::fs::write(
            path.join("tls.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write");
        openssl(
            &path,
            &[
                "x509",
                "-req",
                "-in",
                "tls.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "tls.crt",
                "-days",
                "1",
                "-extfile",
                "tls.ext",
            ],
        );
        Keys {
            fcm_private: read(&path, "fcm.pem"),
            fcm_public: read(&path, "fcm.pub"),
            apns_private: read(&path, "apns.p8"),
            apns_public: read(&path, "apns.pub"),
            ca_certificate: read(&path, "ca.crt"),
            tls_key: read(&path, "tls.key"),
            tls_certificate: read(&path, "tls.crt"),
        }
    })
}

/// TLS on a TCP acceptor for the APNs stand-in, offering HTTP/2 by ALPN as Apple does.
struct TlsAcceptor {
    tcp: TcpAcceptor,
    tls: tokio_rustls::TlsAcceptor,
}

impl TlsAcceptor {
    async fn bind(keys: &Keys) -> Self {
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certificates = CertificateDer::pem_slice_iter(keys.tls_certificate.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("the stand-in's certificate");
        let key = PrivateKeyDer::from_pem_slice(keys.tls_key.as_bytes()).expect("the stand-in's key");
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(certificates, key)
            .expect("a TLS configuration");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let tcp = TcpListener::bind("127.0.0.1:0").into_acceptor().await.expect("bind");
        Self { tcp, tls: tokio_rustls::TlsAcceptor::from(Arc::new(config)) }
    }
}

impl Acceptor for TlsAcceptor {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.tcp.local_addr()
    }

    async fn accept(&mut self) -> std::io::Result<(Self::Io, LocalAddr, RemoteAddr, Scheme)> {
        loop {
            let (stream, local, remote, _) = self.tcp.accept().await?;
            // One handshake at a time is plenty for one sender; a failed one is skipped.
            if let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(5), self.tls.accept(stream)).await {
                return Ok((tls, local, remote, Scheme::HTTPS));
            }
        }
    }
}

impl Services {
    async fn start() -> Self {
        let keys = keys();
        let dir = tempdir::Dir::new();
        std::fs::write(dir.0.join("AuthKey.p8"), &keys.apns_private).expect("write");
        std::fs::write(dir.0.join("ca.crt"), &keys.ca_certificate).expect("write");

        let pushed: Arc<Mutex<Vec<Pushed>>> = Arc::default();
        let issued: Arc<Mutex<Vec<String>>> = Arc::default();
        let attempts: Arc<Mutex<HashMap<String, usize>>> = Arc::default();

        let expo = {
            let (pushed, attempts) = (pushed.clone(), attempts.clone());
            poem::endpoint::make(move |request: Request| {
                let (pushed, attempts) = (pushed.clone(), attempts.clone());
                async move { expo(request, &pushed, &attempts).await }
            })
        };
        let expo_base = spawn_http(Route::new().at("/--/api/v2/push/send", expo)).await;

        let fcm_public = keys.fcm_public.clone();
        let fcm_base_cell: Arc<Mutex<String>> = Arc::default();
        let token_endpoint = {
            let (issued, public, base) = (issued.clone(), fcm_public.clone(), fcm_base_cell.clone());
            poem::endpoint::make(move |request: Request| {
                let (issued, public, base) = (issued.clone(), public.clone(), base.clone());
                async move { oauth_token(request, &issued, &public, &base).await }
            })
        };
        let send_endpoint = {
            let (pushed, attempts, issued) = (pushed.clone(), attempts.clone(), issued.clone());
            poem::endpoint::make(move |request: Request| {
                let (pushed, attempts, issued) = (pushed.clone(), attempts.clone(), issued.clone());
                async move { fcm(request, &pushed, &attempts, &issued).await }
            })
        };
        let fcm_base = spawn_http(
            Route::new()
                .at("/token", token_endpoint)
                .at(format!("/v1/projects/{PROJECT}/messages:send"), send_endpoint),
        )
        .await;
        *fcm_base_cell.lock().expect("lock") = fcm_base.clone();

        let apns_public = keys.apns_public.clone();
        let apns_endpoint = {
            let (pushed, attempts) = (pushed.clone(), attempts.clone());
            poem::endpoint::make(move |request: Request| {
                let (pushed, attempts, public) = (pushed.clone(), attempts.clone(), apns_public.clone());
                async move { apns(request, &pushed, &attempts, &public).await }
            })
        };
        let acceptor = TlsAcceptor::bind(keys).await;
        let address = acceptor.local_addr()[0].as_socket_addr().copied().expect("an address");
        tokio::spawn(Server::new_with_acceptor(acceptor).run(Route::new().at("/3/device/:token", apns_endpoint)));

        let service_account = json!({
            "type": "service_account",
            "project_id": PROJECT,
            "private_key_id": "key-1",
            "private_key": keys.fcm_private,
            "client_email": CLIENT_EMAIL,
            "token_uri": format!("{fcm_base}/token"),
        });
        Self {
            dir: Arc::new(dir),
            expo_url: format!("{expo_base}/--/api/v2/push/send"),
            fcm_url: fcm_base,
            apns_url: format!("https://{address}"),
            service_account,
            pushed,
            issued,
        }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.0.join(file)
    }

    /// Settings that turn on all three services, pointed at the stand-ins.
    fn configure(&self) -> impl Fn(&mut ringline_server::Settings) + Clone + use<> {
        let (expo, fcm, apns) = (self.expo_url.clone(), self.fcm_url.clone(), self.apns_url.clone());
        let account = self.service_account.to_string();
        let (key, ca) = (self.path("AuthKey.p8"), self.path("ca.crt"));
        move |settings| {
            let push = &mut settings.mobile_push;
            push.expo_push = true;
            push.expo_push_url = expo.clone();
            push.expo_access_token = Some("expo-access-token".to_owned().into());
            push.fcm_credentials = Some(account.clone().into());
            push.fcm_url = fcm.clone();
            push.apns_key_file = Some(key.display().to_string());
            push.apns_key_id = Some(KEY_ID.into());
            push.apns_team_id = Some(TEAM_ID.into());
            push.apns_topic = Some(BUNDLE.into());
            push.apns_url = Some(apns.clone());
            push.push_ca_file = Some(ca.display().to_string());
        }
    }

    fn all(&self) -> Vec<Pushed> {
        self.pushed.lock().expect("lock").clone()
    }

    /// The pushes answered 2xx.
    fn delivered(&self) -> Vec<Pushed> {
        self.all().into_iter().filter(|push| push.answered == 200 && push.kind() != "").collect()
    }

    /// Waits until `done` holds of what was delivered.
    async fn wait_for(&self, what: &str, done: impl Fn(&[Pushed]) -> bool) -> Vec<Pushed> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let delivered = self.delivered();
            if done(&delivered) {
                return delivered;
            }
            assert!(Instant::now() < deadline, "never {what}: {:#?}", self.all());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until a stand-in was asked anything, whatever it answered.
    async fn wait_for_an_attempt(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.all().is_empty() {
            assert!(Instant::now() < deadline, "no push was ever tried");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What was delivered for `call` to `token`.
    fn to(&self, token: &str, call: i64) -> Vec<Pushed> {
        self.delivered().into_iter().filter(|push| push.token == token && push.call_id() == call.to_string()).collect()
    }
}

/// The answer a stand-in gives, and the record of it.
fn record(pushed: &Mutex<Vec<Pushed>>, push: Pushed) {
    pushed.lock().expect("lock").push(push);
}

fn attempt(attempts: &Mutex<HashMap<String, usize>>, token: &str) -> usize {
    let mut attempts = attempts.lock().expect("lock");
    let count = attempts.entry(token.to_owned()).or_default();
    *count += 1;
    *count - 1
}

fn json_response(status: u16, body: &Value) -> Response {
    Response::builder()
        .status(StatusCode::from_u16(status).expect("a status"))
        .content_type("application/json")
        .body(body.to_string())
}

/// Expo: checks the request as Expo's API takes it, answers a ticket per the token.
async fn expo(mut request: Request, pushed: &Mutex<Vec<Pushed>>, attempts: &Mutex<HashMap<String, usize>>) -> Response {
    assert_eq!(request.method(), poem::http::Method::POST);
    let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert!(header("content-type").is_some_and(|kind| kind.starts_with("application/json")));
    assert_eq!(header("authorization").as_deref(), Some("Bearer expo-access-token"));
    let body: Value = serde_json::from_slice(&request.take_body().into_bytes().await.expect("a body")).expect("JSON");
    let messages = body.as_array().expect("an array of messages");
    assert_eq!(messages.len(), 1);
    let message = &messages[0];
    let token = message["to"].as_str().expect("to").to_owned();
    assert!(token.starts_with("ExponentPushToken[") || token.starts_with("ExpoPushToken["), "{token}");
    assert_eq!(message["priority"], "high");
    assert!(message["ttl"].as_u64().is_some_and(|ttl| ttl >= 1), "{message}");
    assert!(message["data"].is_object(), "{message}");
    let (status, answer) = match scripted(&token, attempt(attempts, &token)) {
        "gone" => (
            200,
            json!({"data": [{"status": "error", "message": "not registered",
            "details": {"error": "DeviceNotRegistered"}}]}),
        ),
        "busy" => {
            record(
                pushed,
                Pushed { service: "expo", token, body: message.clone(), headers: HashMap::new(), answered: 429 },
            );
            return Response::builder()
                .status(StatusCode::TOO_MANY_REQUESTS)
                .header("retry-after", "1")
                .content_type("application/json")
                .body(json!({"errors": [{"code": "RATE_LIMIT_EXCEEDED", "message": "slow down"}]}).to_string());
        }
        "broken" => (500, json!({"errors": [{"code": "INTERNAL_SERVER_ERROR", "message": "oops"}]})),
        _ => (200, json!({"data": [{"status": "ok", "id": "ticket-1"}]})),
    };
    record(pushed, Pushed { service: "expo", token, body: message.clone(), headers: HashMap::new(), answered: status });
    json_response(status, &answer)
}

/// The OAuth token endpoint: verifies the service account's RS256 assertion.
async fn oauth_token(
    mut request: Request,
    issued: &Mutex<Vec<String>>,
    public: &str,
    base: &Mutex<String>,
) -> Response {
    let form = request.take_body().into_string().await.expect("a body");
    let fields: HashMap<String, String> = form_fields(&form);
    assert_eq!(fields.get("grant_type").map(String::as_str), Some("urn:ietf:params:oauth:grant-type:jwt-bearer"));
    let assertion = fields.get("assertion").expect("an assertion");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    let audience = format!("{}/token", base.lock().expect("lock"));
    validation.set_audience(&[audience]);
    validation.set_issuer(&[CLIENT_EMAIL]);
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(public.as_bytes()).expect("the public key");
    let decoded = jsonwebtoken::decode::<Value>(assertion, &key, &validation);
    let Ok(decoded) = decoded else {
        return json_response(400, &json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}));
    };
    assert_eq!(decoded.header.kid.as_deref(), Some("key-1"));
    assert_eq!(decoded.claims["scope"], "https://www.googleapis.com/auth/firebase.messaging");
    let token = format!("ya29.test-access-{}", issued.lock().expect("lock").len());
    issued.lock().expect("lock").push(token.clone());
    json_response(200, &json!({"access_token": token, "expires_in": 3599, "token_type": "Bearer"}))
}

fn form_fields(form: &str) -> HashMap<String, String> {
    form_urlencoded::parse(form.as_bytes()).map(|(key, value)| (key.into_owned(), value.into_owned())).collect()
}

/// FCM HTTP v1: takes only a token the OAuth endpoint issued, and a v1 message.
async fn fcm(
    mut request: Request,
    pushed: &Mutex<Vec<Pushed>>,
    attempts: &Mutex<HashMap<String, usize>>,
    issued: &Mutex<Vec<String>>,
) -> Response {
    let bearer = request.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let known = issued.lock().expect("lock").iter().any(|token| bearer == format!("Bearer {token}"));
    if !known {
        return json_response(401, &json!({"error": {"code": 401, "status": "UNAUTHENTICATED"}}));
    }
    let body: Value = serde_json::from_slice(&request.take_body().into_bytes().await.expect("a body")).expect("JSON");
    let message = &body["message"];
    let token = message["token"].as_str().expect("a token").to_owned();
    let data = message["data"].as_object().expect("data");
    assert!(data.values().all(Value::is_string), "FCM data values are strings: {message}");
    assert_eq!(message["android"]["priority"], "HIGH");
    assert!(message["android"]["ttl"].as_str().is_some_and(|ttl| ttl.ends_with('s')), "{message}");
    assert_eq!(message["webpush"]["headers"]["Urgency"], "high");
    let (status, answer) = match scripted(&token, attempt(attempts, &token)) {
        "gone" => (
            404,
            json!({"error": {"code": 404, "status": "NOT_FOUND", "details": [
            {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}]}}),
        ),
        "broken" => (503, json!({"error": {"code": 503, "status": "UNAVAILABLE"}})),
        _ => (200, json!({"name": format!("projects/{PROJECT}/messages/1")})),
    };
    record(pushed, Pushed { service: "fcm", token, body, headers: HashMap::new(), answered: status });
    json_response(status, &answer)
}

/// APNs: HTTP/2 only, a provider token verified against the team's key, the VoIP headers.
async fn apns(
    mut request: Request,
    pushed: &Mutex<Vec<Pushed>>,
    attempts: &Mutex<HashMap<String, usize>>,
    public: &str,
) -> Response {
    assert_eq!(request.version(), Version::HTTP_2, "APNs speaks HTTP/2 only");
    let token = request.uri().path().trim_start_matches("/3/device/").to_owned();
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()), "{token}");
    let mut headers = HashMap::new();
    for name in ["apns-push-type", "apns-topic", "apns-priority", "apns-expiration", "apns-collapse-id"] {
        let value = request.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default();
        headers.insert(name.to_owned(), value.to_owned());
    }
    let authorization = request.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let jwt = authorization.strip_prefix("bearer ").expect("a bearer provider token");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.validate_exp = false;
    validation.required_spec_claims.clear();
    let key = jsonwebtoken::DecodingKey::from_ec_pem(public.as_bytes()).expect("the public key");
    let Ok(decoded) = jsonwebtoken::decode::<Value>(jwt, &key, &validation) else {
        return json_response(403, &json!({"reason": "InvalidProviderToken"}));
    };
    assert_eq!(decoded.header.kid.as_deref(), Some(KEY_ID));
    assert_eq!(decoded.claims["iss"], TEAM_ID);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let issued = decoded.claims["iat"].as_u64().expect("iat");
    assert!(issued <= now + 5 && now - issued < 3600, "a fresh provider token");
    let body: Value = serde_json::from_slice(&request.take_body().into_bytes().await.expect("a body")).expect("JSON");
    let (status, answer) = match scripted(&token, attempt(attempts, &token)) {
        "gone" => (410, json!({"reason": "Unregistered", "timestamp": now * 1000})),
        "bad" => (400, json!({"reason": "BadDeviceToken"})),
        _ => (200, Value::Null),
    };
    record(pushed, Pushed { service: "apns", token, body, headers, answered: status });
    if status == 200 {
        Response::builder().header("apns-id", "5E8F3A70-0000-0000-0000-000000000000").finish()
    } else {
        json_response(status, &answer)
    }
}

async fn register(app: &TestApp, user_token: &str, token: &str, platform: &str) -> Value {
    app.post("/api/device-tokens/", user_token, json!({"token": token, "platform": platform})).await.expect(201)
}

async fn ring(app: &TestApp, caller: &str, receiver: &str, call_type: &str) -> i64 {
    let body = json!({"receiver_id": receiver, "call_type": call_type});
    app.post("/api/calls/initiate/", caller, body).await.expect(201)["id"].as_i64().expect("an id")
}

async fn a_ring_reaches_every_service_and_each_ending_dismisses_it(backend: DatabaseBackend) {
    let services = Services::start().await;
    let configure = services.configure();
    let app = TestApp::spawn_with(backend, move |settings| {
        configure(settings);
        settings.calls.ring_timeout_secs = 4;
        settings.metrics.metrics_bind = Some("127.0.0.1:0".parse().expect("an address"));
    })
    .await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let apns = apns_token("");
    for (token, platform) in
        [(EXPO_ANDROID, "android"), (EXPO_IOS, "ios"), (FCM_WEB, "web"), (FCM_ANDROID, "android"), (&apns, "ios")]
    {
        register(&app, &bob, token, platform).await;
    }
    let fcm_android = app
        .post("/api/device-tokens/", &bob, json!({"token": FCM_ANDROID, "platform": "android", "provider": "fcm"}))
        .await
        .expect(201);
    assert_eq!(fcm_android["provider"], "fcm");

    // A video call rings all five devices.
    let call = ring(&app, &alice, "bob", "video").await;
    let all = [EXPO_ANDROID, EXPO_IOS, FCM_WEB, FCM_ANDROID, apns.as_str()];
    services.wait_for("a ring on every device", |d| all.iter().all(|t| d.iter().any(|p| &p.token == t))).await;
    let expo = &services.to(EXPO_ANDROID, call)[0];
    assert_eq!(expo.kind(), "call.ringing");
    assert_eq!(expo.body["title"], "📹 Incoming Video Call");
    assert_eq!(expo.body["body"], "alice first alice last is calling you", "the full name, as the original app");
    assert_eq!(expo.body["sound"], "default");
    assert_eq!(expo.body["channelId"], "default", "Android's notification channel");
    let data = &expo.body["data"];
    assert_eq!(data["call_id"], call.to_string());
    assert_eq!(data["call_type"], "video");
    assert_eq!(data["caller"]["id"], "alice");
    assert!(data["conversation_id"].is_null());
    // The original app's own notification payload, with the stored notification's id.
    let notifications = app.get("/api/notifications/", &bob).await.expect(200);
    assert_eq!(data["notification"]["id"], notifications["results"][0]["id"]);
    assert_eq!(data["notification"]["verb"], "incoming_video_call");
    assert_eq!(data["target_url"], format!("/app/messages?call={call}"));
    assert!(services.to(EXPO_IOS, call)[0].body.get("channelId").is_none(), "iOS has no channels");

    let fcm = &services.to(FCM_ANDROID, call)[0];
    let message = &fcm.body["message"];
    assert!(message.get("notification").is_none(), "a ring is a data message");
    assert_eq!(message["data"]["type"], "call.ringing");
    assert_eq!(message["data"]["call_type"], "video");
    assert_eq!(message["data"]["title"], "📹 Incoming Video Call");
    let caller: Value = serde_json::from_str(message["data"]["caller"].as_str().expect("JSON text")).expect("JSON");
    assert_eq!(caller["username"], "alice");
    let ttl: u64 = message["android"]["ttl"].as_str().expect("ttl").trim_end_matches('s').parse().expect("seconds");
    assert!((1..=4).contains(&ttl), "the ring's time left: {ttl}");

    let voip = &services.to(&apns, call)[0];
    assert_eq!(voip.headers["apns-push-type"], "voip");
    assert_eq!(voip.headers["apns-topic"], format!("{BUNDLE}.voip"));
    assert_eq!(voip.headers["apns-priority"], "10");
    let expiration: i64 = voip.headers["apns-expiration"].parse().expect("unix seconds");
    let now = chrono::Utc::now().timestamp();
    assert!(expiration > now && expiration <= now + 5, "expires at the ring deadline: {expiration} vs {now}");
    assert_eq!(voip.body["aps"], json!({}));
    assert_eq!(voip.body["call_id"], call.to_string());
    assert_eq!(voip.body["caller"]["id"], "alice");

    // Declined: Expo and FCM phones are told to stop; no VoIP push, nothing to the browser.
    app.post(&format!("/api/calls/{call}/reject/"), &bob, json!({})).await.expect(200);
    let stops = |call: i64, kind: &'static str| {
        move |d: &[Pushed]| {
            [EXPO_ANDROID, EXPO_IOS, FCM_ANDROID]
                .iter()
                .all(|t| d.iter().any(|p| &p.token == t && p.call_id() == call.to_string() && p.kind() == kind))
        }
    };
    services.wait_for("the end of a declined ring", stops(call, "call.rejected")).await;
    let stop = services.to(EXPO_IOS, call).into_iter().find(|p| p.kind() == "call.rejected").expect("a stop");
    assert!(stop.body.get("title").is_none(), "the end of a ring is a data message: {}", stop.body);
    assert_eq!(stop.body["_contentAvailable"], true);
    assert_eq!(stop.body["data"]["end_reason"], "declined");

    // Cancelled by the caller, answered by the callee, and missed.
    let rung = |call: i64| {
        move |d: &[Pushed]| all.iter().all(|t| d.iter().any(|p| &p.token == t && p.call_id() == call.to_string()))
    };
    let cancelled = ring(&app, &alice, "bob", "voice").await;
    services.wait_for("a second ring", rung(cancelled)).await;
    app.post(&format!("/api/calls/{cancelled}/end/"), &alice, json!({})).await.expect(200);
    services.wait_for("the end of a cancelled ring", stops(cancelled, "call.cancelled")).await;
    assert_eq!(services.to(EXPO_ANDROID, cancelled)[0].body["title"], "📞 Incoming Call");

    let answered = ring(&app, &alice, "bob", "voice").await;
    services.wait_for("a third ring", rung(answered)).await;
    app.post(&format!("/api/calls/{answered}/accept/"), &bob, json!({})).await.expect(200);
    services.wait_for("the end of an answered ring", stops(answered, "call.accepted")).await;
    app.post(&format!("/api/calls/{answered}/end/"), &bob, json!({})).await.expect(200);

    let missed = ring(&app, &alice, "bob", "voice").await;
    services.wait_for("a fourth ring", rung(missed)).await;
    services.wait_for("the end of a missed ring", stops(missed, "call.missed")).await;
    let missed_push = services.to(EXPO_ANDROID, missed).into_iter().find(|p| p.kind() == "call.missed").expect("one");
    assert_eq!(missed_push.body["title"], "📞 Missed Call", "a missed call is seen");
    assert_eq!(missed_push.body["data"]["notification"]["verb"], "missed_voice_call");
    // With "Call back": the app's notification category, and the action in the data.
    assert_eq!(missed_push.body["categoryId"], "missed_call");
    assert_eq!(missed_push.body["data"]["category"], "missed_call");
    assert_eq!(missed_push.body["data"]["actions"], json!([{"id": "call_back", "title": "Call back"}]));
    assert_eq!(missed_push.body["data"]["caller"]["id"], "alice", "who to call back");
    let fcm_missed = services.to(FCM_ANDROID, missed).into_iter().find(|p| p.kind() == "call.missed").expect("one");
    assert_eq!(fcm_missed.body["message"]["android"]["notification"]["click_action"], "CALL_BACK");
    assert_eq!(fcm_missed.body["message"]["data"]["category"], "missed_call");
    let ring_push = services.to(EXPO_ANDROID, missed).into_iter().find(|p| p.kind() == "call.ringing").expect("one");
    assert!(ring_push.body.get("categoryId").is_none() && ring_push.body["data"].get("actions").is_none());
    // The browser gets the missed call (its service worker shows it), never the other endings.
    let web = services.wait_for("the missed call in the browser", |d| {
        d.iter().any(|p| p.token == FCM_WEB && p.call_id() == missed.to_string())
    });
    let web = web.await.into_iter().filter(|p| p.token == FCM_WEB).collect::<Vec<_>>();
    assert_eq!(web.iter().filter(|p| p.kind() == "call.ringing").count(), 4);
    assert_eq!(
        web.iter().filter(|p| p.kind() != "call.ringing").map(Pushed::kind).collect::<Vec<_>>(),
        ["call.missed"]
    );
    let missed_web = web.iter().find(|p| p.kind() == "call.missed").expect("one");
    assert_eq!(missed_web.body["message"]["notification"]["title"], "📞 Missed Call");
    // No VoIP push but the four rings.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let voip: Vec<Pushed> = services.all().into_iter().filter(|p| p.service == "apns").collect();
    assert_eq!(voip.len(), 4, "{voip:#?}");
    assert!(voip.iter().all(|p| p.body["type"] == "call.ringing"));

    // One OAuth token served every FCM message: it is kept until it nearly expires.
    assert_eq!(services.issued.lock().expect("lock").len(), 1);

    let scrape = app.scrape().await;
    assert!(scrape.value("ringline_mobile_pushes_total", &[("provider", "apns_voip"), ("result", "sent")]) >= 4.0);
    assert!(scrape.value("ringline_mobile_pushes_total", &[("provider", "fcm"), ("result", "dropped")]) >= 3.0);
    app.stop().await;
}

async fn tokens_the_services_reject_are_removed(backend: DatabaseBackend) {
    let services = Services::start().await;
    let app = TestApp::spawn_with(backend, services.configure()).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let (dead, bad, good) = (apns_token("dead"), apns_token("bad0"), apns_token(""));
    for (token, platform) in [
        ("ExponentPushToken[gone-phone]", "android"),
        (EXPO_ANDROID, "android"),
        ("fcm-gone:APA91b", "web"),
        (FCM_WEB, "web"),
        (&dead, "ios"),
        (&bad, "ios"),
        (&good, "ios"),
    ] {
        register(&app, &bob, token, platform).await;
    }
    let call = ring(&app, &alice, "bob", "voice").await;
    let wait = Instant::now() + Duration::from_secs(15);
    loop {
        let left: Vec<String> = app.get("/api/device-tokens/", &bob).await.expect(200)["results"]
            .as_array()
            .expect("results")
            .iter()
            .map(|token| token["token"].as_str().unwrap_or_default().to_owned())
            .collect();
        if left.len() == 3 {
            let mut left = left;
            left.sort();
            let mut expected = vec![EXPO_ANDROID.to_owned(), FCM_WEB.to_owned(), good.clone()];
            expected.sort();
            assert_eq!(left, expected);
            break;
        }
        assert!(Instant::now() < wait, "the rejected tokens were never removed: {left:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The good ones rang; each rejected token was tried once.
    assert_eq!(services.to(EXPO_ANDROID, call).len(), 1);
    let tried = |token: &str| services.all().iter().filter(|p| p.token == token).count();
    for token in ["ExponentPushToken[gone-phone]", "fcm-gone:APA91b", &dead, &bad] {
        assert_eq!(tried(token), 1, "{token}");
    }
    // The end of the ring goes to the tokens that are left only.
    app.post(&format!("/api/calls/{call}/end/"), &alice, json!({})).await.expect(200);
    services.wait_for("the end of the ring", |d| d.iter().any(|p| p.kind() == "call.cancelled")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(tried("ExponentPushToken[gone-phone]"), 1);
    app.stop().await;
}

async fn busy_and_failing_services_are_tried_again(backend: DatabaseBackend) {
    let services = Services::start().await;
    let app = TestApp::spawn_with(backend, services.configure()).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    register(&app, &bob, "ExponentPushToken[busy-phone]", "android").await;
    register(&app, &bob, "fcm-broken:APA91b", "android").await;
    let call = ring(&app, &alice, "bob", "voice").await;
    let delivered = services
        .wait_for("both rings after a retry", |d| {
            d.iter().any(|p| p.token.contains("busy")) && d.iter().any(|p| p.token.contains("broken"))
        })
        .await;
    assert!(delivered.iter().all(|p| p.call_id() == call.to_string()));
    let all = services.all();
    let busy: Vec<&Pushed> = all.iter().filter(|p| p.token.contains("busy")).collect();
    assert_eq!(busy.iter().map(|p| p.answered).collect::<Vec<_>>(), [429, 200]);
    let broken: Vec<&Pushed> = all.iter().filter(|p| p.token.contains("broken")).collect();
    assert_eq!(broken.iter().map(|p| p.answered).collect::<Vec<_>>(), [503, 200]);
    app.stop().await;
}

async fn a_ring_is_not_retried_once_its_call_stopped_ringing(backend: DatabaseBackend) {
    let services = Services::start().await;
    let app = TestApp::spawn_with(backend, services.configure()).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    // Answered 429 with `Retry-After: 1` first: the retry comes after the caller gave up.
    register(&app, &bob, "ExponentPushToken[busy-phone]", "android").await;
    let call = ring(&app, &alice, "bob", "voice").await;
    services.wait_for_an_attempt().await;
    app.post(&format!("/api/calls/{call}/end/"), &alice, json!({})).await.expect(200);
    let delivered = services.wait_for("the end of the ring", |d| !d.is_empty()).await;
    assert_eq!(delivered[0].kind(), "call.cancelled");
    // Past the retry's moment: the ring was dropped, never sent late.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let kinds: Vec<(String, u16)> = services.all().iter().map(|p| (p.kind(), p.answered)).collect();
    assert_eq!(kinds, [("call.ringing".to_owned(), 429), ("call.cancelled".to_owned(), 200)]);
    app.stop().await;
}

async fn a_restart_while_ringing_loses_no_push(backend: DatabaseBackend) {
    let services = Services::start().await;
    let configure = services.configure();
    let app = TestApp::spawn_with(backend, configure.clone()).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    // Its first attempt is answered 429 with `Retry-After: 1`: when the server stops, the ring
    // is stored and still to be sent.
    register(&app, &bob, "ExponentPushToken[busy-phone]", "ios").await;
    let call = ring(&app, &alice, "bob", "voice").await;
    services.wait_for_an_attempt().await;
    // Long enough for the attempt to be recorded (its lease released), not for the retry.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let database = app.stop_keeping_database().await;
    assert!(services.delivered().is_empty());
    let app = TestApp::spawn_on(database, configure).await;
    let delivered = services.wait_for("the ring, sent by the restarted server", |d| !d.is_empty()).await;
    assert_eq!(delivered[0].call_id(), call.to_string());
    assert_eq!(delivered[0].kind(), "call.ringing");
    app.stop().await;
}

async fn blocked_and_do_not_disturb_calls_push_nothing(backend: DatabaseBackend) {
    let services = Services::start().await;
    let app = TestApp::spawn_with(backend, services.configure()).await;
    let (alice, bob, carol) = (app.user("alice").await, app.user("bob").await, app.user("carol").await);
    register(&app, &bob, EXPO_ANDROID, "android").await;
    register(&app, &bob, &apns_token(""), "ios").await;

    app.send(Method::PATCH, "/api/call-settings/", Some(&bob), Some(json!({"do_not_disturb": true}))).await.expect(200);
    let silenced = ring(&app, &alice, "bob", "voice").await;
    app.post(&format!("/api/calls/{silenced}/end/"), &alice, json!({})).await.expect(200);
    app.send(Method::PATCH, "/api/call-settings/", Some(&bob), Some(json!({"do_not_disturb": false})))
        .await
        .expect(200);

    app.post("/api/call-blocks/", &bob, json!({"user_id": "alice"})).await.expect(201);
    app.post("/api/calls/initiate/", &alice, json!({"receiver_id": "bob"})).await.expect_error(403, "call_not_allowed");

    // A call bob takes rings his phone: the stand-ins work, and nothing came before it.
    let taken = ring(&app, &carol, "bob", "voice").await;
    let delivered = services.wait_for("carol's ring", |d| d.len() >= 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(services.all().iter().all(|p| p.call_id() == taken.to_string()), "{:#?}", services.all());
    assert_eq!(delivered.len(), 2);
    app.stop().await;
}

async fn the_device_token_api_answers_the_original_clients(backend: DatabaseBackend) {
    let services = Services::start().await;
    let app = TestApp::spawn_with(backend, services.configure()).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    // The mobile app's request (hooks/usePushNotifications.ts) and the web app's.
    let phone = register(&app, &alice, EXPO_IOS, "ios").await;
    for field in ["id", "token", "platform", "created_at", "last_seen_at"] {
        assert!(phone.get(field).is_some(), "{field}: {phone}");
    }
    assert_eq!(phone["token"], EXPO_IOS);
    assert_eq!(phone["platform"], "ios");
    assert_eq!(phone["provider"], "expo", "inferred from the token");
    let browser = register(&app, &alice, FCM_WEB, "web").await;
    assert_eq!(browser["provider"], "fcm");
    assert_eq!(register(&app, &alice, &apns_token(""), "ios").await["provider"], "apns_voip");

    // The list is the original's paginated page, the last registered first.
    let list = app.get("/api/device-tokens/", &alice).await.expect(200);
    assert_eq!(list["count"], 3);
    assert!(list["next"].is_null() && list["previous"].is_null());
    assert_eq!(list["results"][2]["token"], EXPO_IOS);

    // The same phone signed in as bob: the token moves to him, seen now.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let moved = register(&app, &bob, EXPO_IOS, "ios").await;
    assert_eq!(moved["id"], phone["id"]);
    assert_eq!(moved["created_at"], phone["created_at"]);
    assert_ne!(moved["last_seen_at"], phone["last_seen_at"]);
    assert_eq!(app.get("/api/device-tokens/", &alice).await.expect(200)["count"], 2);
    assert_eq!(app.get("/api/device-tokens/", &bob).await.expect(200)["results"][0]["token"], EXPO_IOS);

    // Only your own: another's is not found, and stays.
    let theirs = moved["id"].as_i64().expect("an id");
    let delete = |id: String, token: String| {
        let app = &app;
        async move { app.send(Method::DELETE, &format!("/api/device-tokens/{id}/"), Some(&token), None).await }
    };
    delete(theirs.to_string(), alice.clone()).await.expect_error(404, "device_token_not_found");
    delete("not-a-number".into(), alice.clone()).await.expect_error(404, "device_token_not_found");
    assert_eq!(delete(theirs.to_string(), bob.clone()).await.status, StatusCode::NO_CONTENT);
    assert_eq!(app.get("/api/device-tokens/", &bob).await.expect(200)["count"], 0);

    // Bad tokens: a clear 400 with a stable code. What the schema says (length, characters)
    // is checked as the body is read; what only the service decides, after.
    for body in [
        json!({"token": "", "platform": "web"}),
        json!({"token": "x".repeat(513), "platform": "web"}),
        json!({"token": "has space", "platform": "web"}),
        json!({"token": "abc", "platform": "windows"}),
    ] {
        app.post("/api/device-tokens/", &alice, body).await.expect_error(400, "parse_error");
    }
    for body in [
        json!({"token": "../../x", "platform": "ios"}),
        json!({"token": "abc", "platform": "android", "provider": "expo"}),
        json!({"token": "abcd", "platform": "android", "provider": "apns_voip"}),
    ] {
        app.post("/api/device-tokens/", &alice, body).await.expect_error(400, "invalid_device_token");
    }
    let anonymous = app.send(Method::GET, "/api/device-tokens/", None, None).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);

    // Ten at most per user: the ones seen longest ago go.
    for n in 0..12 {
        register(&app, &bob, &format!("fcm-device-{n:02}"), "android").await;
    }
    let page = app.get("/api/device-tokens/", &bob).await.expect(200);
    assert_eq!(page["count"], 10);
    assert_eq!(page["results"][0]["token"], "fcm-device-11");
    assert_eq!(page["results"][9]["token"], "fcm-device-02");
    app.stop().await;
}

async fn an_unusable_credential_leaves_its_service_off(backend: DatabaseBackend) {
    let services = Services::start().await;
    let configure = services.configure();
    let app = TestApp::spawn_with(backend, move |settings| {
        configure(settings);
        settings.mobile_push.fcm_credentials = Some("{\"type\": \"service_account\"}".to_owned().into());
    })
    .await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    register(&app, &bob, FCM_ANDROID, "android").await;
    register(&app, &bob, EXPO_ANDROID, "android").await;
    let call = ring(&app, &alice, "bob", "voice").await;
    services.wait_for("the Expo ring", |d| d.iter().any(|p| p.token == EXPO_ANDROID)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(services.all().iter().all(|p| p.service == "expo"), "FCM is off");
    assert_eq!(services.to(EXPO_ANDROID, call).len(), 1);
    let check = ringline_server::push_services::PushServices::from_settings(
        &{
            let mut settings = ringline_server::Settings::default();
            settings.mobile_push.fcm_credentials = Some("not a key".to_owned().into());
            settings.mobile_push
        },
        &(Arc::new(ringline_domain::SystemClock) as Arc<dyn ringline_domain::Clock>),
    );
    assert_eq!(check.problems.len(), 1, "{:?}", check.problems);
    assert!(check.problems[0].contains("RINGLINE_FCM_CREDENTIALS"), "{:?}", check.problems);
    app.stop().await;
}

on_both_databases!(
    a_ring_reaches_every_service_and_each_ending_dismisses_it,
    tokens_the_services_reject_are_removed,
    busy_and_failing_services_are_tried_again,
    a_ring_is_not_retried_once_its_call_stopped_ringing,
    a_restart_while_ringing_loses_no_push,
    blocked_and_do_not_disturb_calls_push_nothing,
    the_device_token_api_answers_the_original_clients,
    an_unusable_credential_leaves_its_service_off,
);
