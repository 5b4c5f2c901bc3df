//! The replay window every instance shares: a capped Redis stream per user.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use redis::Value;
use ringline_domain::UserId;

use super::{RedisBus, SHARED_WINDOW_AGE, window_key};
use crate::router::IdentifiedEvent;

impl RedisBus {
    /// The events of `user`'s shared window after `resume`, oldest first, with their ids; `None`
    /// when `resume` is not in it (too old, or never kept) or Redis cannot be read.
    pub(super) async fn window_after(&self, user: &UserId, resume: &str) -> Option<Vec<IdentifiedEvent>> {
        let since = SystemTime::now().checked_sub(SHARED_WINDOW_AGE)?.duration_since(UNIX_EPOCH).ok()?.as_millis();
        let mut reader = self.reader.clone();
        let reply: Value = redis::cmd("XRANGE")
            .arg(window_key(&self.prefix, user))
            .arg(since.to_string())
            .arg("+")
            .query_async(&mut reader)
            .await
            .map_err(|error| tracing::warn!(%error, "cannot read a shared replay window"))
            .ok()?;
        let Value::Array(entries) = reply else { return None };
        let mut events = Vec::with_capacity(entries.len());
        for entry in entries {
            // [entry id, [field, value, field, value]]
            let Value::Array(parts) = entry else { continue };
            let Some(Value::Array(fields)) = parts.get(1) else { continue };
            let (mut id, mut event) = (None, None);
            for pair in fields.chunks(2) {
                if let [Value::BulkString(field), Value::BulkString(value)] = pair {
                    match field.as_slice() {
                        b"i" => id = String::from_utf8(value.clone()).ok(),
                        b"e" => event = std::str::from_utf8(value).ok().map(Arc::<str>::from),
                        _ => {}
                    }
                }
            }
            if let (Some(id), Some(event)) = (id, event) {
                events.push((id, event));
            }
        }
        let from = events.iter().position(|(id, _)| id == resume)?;
        Some(events.split_off(from + 1))
    }
}
