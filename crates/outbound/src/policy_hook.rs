//! The host application's call policy hook, asked: [`HttpPolicyHook`] POSTs
//! `{"caller", "callee", "call_type", "conversation_id"}` to `RINGLINE_CALL_POLICY_URL`, signed
//! as webhooks are (`Ringline-Signature`), and reads `{"allow": bool}`.
//!
//! It is asked while a caller waits for `initiate/`, so it is bounded hard: one deadline for the
//! whole exchange (connect, request, answer), no redirects, an answer of at most
//! [`MAX_ANSWER_BYTES`]. Anything but a 2xx with that JSON is "no answer", which the policy
//! turns into a placed or a refused call by `RINGLINE_CALL_POLICY_FAIL_OPEN`. The URL is the
//! operator's (never a user's), so it may be on the internal network.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ringline_domain::{CallPolicyHook, Clock, HookUnavailable, PolicyQuestion};
use ringline_metrics::Metrics;
use ringline_metrics::dependencies::PolicyHookResult;
use secrecy::{ExposeSecret, SecretString};

use crate::webhooks::signature;

/// The largest answer read: `{"allow": false}` and some room for what a framework adds.
pub const MAX_ANSWER_BYTES: usize = 4 * 1024;

/// Where the hook is and how it is asked.
#[derive(Debug, Clone)]
pub struct PolicyHookSettings {
    pub url: String,
    /// Signs every request (the webhooks' secret: one key for everything Ringline sends the
    /// host application).
    pub secret: SecretString,
    /// The whole exchange's deadline.
    pub timeout: Duration,
}

/// The hook over HTTP.
#[derive(Debug)]
pub struct HttpPolicyHook {
    client: reqwest::Client,
    settings: PolicyHookSettings,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
}

impl HttpPolicyHook {
    /// # Errors
    /// When the HTTP client cannot be built (no TLS roots).
    pub fn new(
        settings: PolicyHookSettings,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("Ringline-Policy/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { client, settings, clock, metrics })
    }

    async fn ask(&self, question: &PolicyQuestion) -> Result<bool, String> {
        let body = serde_json::json!({
            "caller": question.caller.as_str(),
            "callee": question.callee.as_str(),
            "call_type": question.call_type.as_str(),
            "conversation_id": question.conversation.map(|id| id.get()),
        })
        .to_string();
        let timestamp = self.clock.now().unix_micros() / 1_000_000;
        let signature = signature(self.settings.secret.expose_secret().as_bytes(), timestamp, body.as_bytes());
        let exchange = async {
            let mut response = self
                .client
                .post(&self.settings.url)
                .header("content-type", "application/json")
                .header("ringline-signature", signature)
                .body(body)
                .send()
                .await
                .map_err(describe)?;
            let status = response.status();
            if !status.is_success() {
                return Err(format!("the hook answered {status}"));
            }
            let mut answer = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(describe)? {
                answer.extend_from_slice(&chunk);
                if answer.len() > MAX_ANSWER_BYTES {
                    return Err(format!("the hook's answer is over {MAX_ANSWER_BYTES} bytes"));
                }
            }
            serde_json::from_slice::<serde_json::Value>(&answer)
                .ok()
                .and_then(|answer| answer.get("allow").and_then(serde_json::Value::as_bool))
                .ok_or_else(|| "the hook's answer is not {\"allow\": bool}".to_owned())
        };
        // reqwest's timeout covers the body too, but a server that trickles its answer must not
        // hold the caller past the deadline either.
        tokio::time::timeout(self.settings.timeout, exchange).await.map_err(|_| "the hook timed out".to_owned())?
    }
}

#[async_trait]
impl CallPolicyHook for HttpPolicyHook {
    async fn allows(&self, question: &PolicyQuestion) -> Result<bool, HookUnavailable> {
        let started = Instant::now();
        let answer = self.ask(question).await;
        let result = match &answer {
            Ok(true) => PolicyHookResult::Allowed,
            Ok(false) => PolicyHookResult::Refused,
            Err(_) => PolicyHookResult::Failed,
        };
        self.metrics.dependencies.policy_hook(result, started.elapsed());
        answer.map_err(|reason| {
            // Neither the URL's query nor the parties: the reason is the client's words.
            tracing::warn!(%reason, "the call policy hook gave no answer");
            HookUnavailable(reason)
        })
    }
}

fn describe(error: reqwest::Error) -> String {
    if error.is_timeout() {
        "the hook timed out".to_owned()
    } else if error.is_connect() {
        "cannot connect to the hook".to_owned()
    } else {
        error.without_url().to_string()
    }
}
