//! The call funnel: calls started, finished (by status and end reason), open now, how long
//! callees take to answer and how long answered calls last, and the refusals by code.
//!
//! Counted by [`CallFunnel`], an observer of the call service: it is told of every stored
//! change exactly once, on the instance that stored it, so the counters of several instances
//! sum to the whole.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use ringline_domain::{
    Call, CallEvent, CallMoment, CallObserver, CallStatus, CallType, ChangeOrigin, EndReason, ErrorCode, PolicyRefusal,
    QualityTag, Transition, UserProfile,
};

use crate::Metrics;

/// Seconds from the ring to the answer: most answers come within a ring timeout (45 s).
const ANSWER_BUCKETS: [f64; 12] = [0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0, 45.0, 60.0, 90.0];

/// Seconds an answered call lasts, from a mistaken tap to a long evening.
const DURATION_BUCKETS: [f64; 12] =
    [5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallTypeLabels {
    call_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FinishedLabels {
    call_type: &'static str,
    status: &'static str,
    end_reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MomentLabels {
    moment: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: &'static str,
}

/// The call funnel's families.
#[derive(Debug)]
pub struct CallMetrics {
    started: Family<CallTypeLabels, Counter>,
    finished: Family<FinishedLabels, Counter>,
    open: Family<StatusLabels, Gauge>,
    answer_seconds: Histogram,
    duration_seconds: Histogram,
    refusals: Family<CodeLabels, Counter>,
    policy_refusals: Family<ReasonLabels, Counter>,
    silenced: Counter,
    waiting: Counter,
    moments: Family<MomentLabels, Counter>,
}

impl CallMetrics {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            started: Family::default(),
            finished: Family::default(),
            open: Family::default(),
            answer_seconds: Histogram::new(ANSWER_BUCKETS),
            duration_seconds: Histogram::new(DURATION_BUCKETS),
            refusals: Family::default(),
            policy_refusals: Family::default(),
            silenced: Counter::default(),
            waiting: Counter::default(),
            moments: Family::default(),
        };
        registry.register("calls_started", "Calls placed (rung), by call type", metrics.started.clone());
        registry.register(
            "calls_finished",
            "Calls that reached a final status, by call type, status (ended, rejected, missed, cancelled) and end reason",
            metrics.finished.clone(),
        );
        registry.register(
            "calls_open",
            "Calls ringing or active now, in the whole deployment (read from the database at scrape time)",
            metrics.open.clone(),
        );
        registry.register_with_unit(
            "call_answer",
            "Time from the ring to the answer of answered calls",
            Unit::Seconds,
            metrics.answer_seconds.clone(),
        );
        registry.register_with_unit(
            "call_duration",
            "Server-measured length of answered calls, counted when they end",
            Unit::Seconds,
            metrics.duration_seconds.clone(),
        );
        registry.register(
            "call_refusals",
            "Call actions (initiate, accept, reject, end) refused, by error code (busy, glare, not found, ...)",
            metrics.refusals.clone(),
        );
        registry.register(
            "call_policy_refusals",
            "Call attempts the call policy refused before anything was stored, by reason (blocked, privacy, hook, \
             hook_unavailable, calls_per_minute, unanswered_per_callee)",
            metrics.policy_refusals.clone(),
        );
        registry.register(
            "calls_silenced",
            "Calls placed while the callee was in do-not-disturb: none of the callee's devices rang",
            metrics.silenced.clone(),
        );
        registry.register(
            "calls_waiting",
            "Calls that rang a callee who was in an active call and had call waiting on (answering one ends the first \
             call with end_reason switched_call, counted in calls_finished)",
            metrics.waiting.clone(),
        );
        registry.register(
            "call_moments",
            "Moments recorded once per call, by moment: rang (a callee's device said it shows the call), video (a \
             party first turned its camera on)",
            metrics.moments.clone(),
        );
        for moment in [CallMoment::Rang, CallMoment::VideoStarted] {
            let _ = metrics.moments.get_or_create_owned(&MomentLabels { moment: moment_name(moment) });
        }
        // Zero rather than absent before the first call: alerts on rates need the series.
        for call_type in CallType::ALL {
            let _ = metrics.started.get_or_create_owned(&CallTypeLabels { call_type: call_type.as_str() });
        }
        for status in [CallStatus::Ringing, CallStatus::Active] {
            let _ = metrics.open.get_or_create_owned(&StatusLabels { status: status.as_str() });
        }
        metrics
    }

    pub fn started(&self, call_type: CallType) {
        self.started.get_or_create(&CallTypeLabels { call_type: call_type.as_str() }).inc();
    }

    /// `call` reached its final status.
    pub fn finished(&self, call: &Call) {
        let labels = FinishedLabels {
            call_type: call.call_type().as_str(),
            status: call.status().as_str(),
            end_reason: call.end_reason().map_or("none", |reason| reason.as_str()),
        };
        self.finished.get_or_create(&labels).inc();
    }

    /// `call` was answered (its `answered_at` is set).
    pub fn answered(&self, call: &Call) {
        if let Some(answered) = call.answered_at() {
            let waited = answered.unix_micros().saturating_sub(call.created_at().unix_micros());
            #[allow(clippy::cast_precision_loss)] // microseconds of a ring fit an f64 exactly
            self.answer_seconds.observe(waited.max(0) as f64 / 1e6);
        }
    }

    pub fn lasted(&self, seconds: u32) {
        self.duration_seconds.observe(f64::from(seconds));
    }

    /// The call policy refused an attempt for `reason` (a [`PolicyRefusal::reason`]).
    pub fn policy_refused(&self, refusal: PolicyRefusal) {
        self.policy_refusals.get_or_create(&ReasonLabels { reason: refusal.reason() }).inc();
    }

    /// A call was placed while its callee was in do-not-disturb.
    pub fn rang_silently(&self) {
        self.silenced.inc();
    }

    /// A call rang as a waiting call.
    pub fn rang_waiting(&self) {
        self.waiting.inc();
    }

    /// `moment` was recorded on a call (once per call).
    pub fn moment(&self, moment: CallMoment) {
        self.moments.get_or_create(&MomentLabels { moment: moment_name(moment) }).inc();
    }

    /// A call action was refused with `code`.
    pub fn refused(&self, code: ErrorCode) {
        self.refusals.get_or_create(&CodeLabels { code: code.as_str() }).inc();
    }

    /// The deployment's open calls now, as the database counts them.
    pub fn set_open(&self, ringing: i64, active: i64) {
        self.open.get_or_create(&StatusLabels { status: CallStatus::Ringing.as_str() }).set(ringing);
        self.open.get_or_create(&StatusLabels { status: CallStatus::Active.as_str() }).set(active);
    }
}

/// The `moment` label of [`CallMoment`]s.
fn moment_name(moment: CallMoment) -> &'static str {
    match moment {
        CallMoment::Rang => "rang",
        CallMoment::VideoStarted => "video",
    }
}

/// Counts the funnel from the call service's changes.
#[derive(Debug, Clone)]
pub struct CallFunnel(pub Arc<Metrics>);

#[async_trait::async_trait]
impl CallObserver for CallFunnel {
    async fn ringing(&self, call: &Call, _parties: &[UserProfile]) {
        self.0.calls.started(call.call_type());
        if call.is_silenced() {
            self.0.calls.rang_silently();
        }
        if call.is_waiting() {
            self.0.calls.rang_waiting();
        }
    }

    async fn moment(&self, _call: &Call, moment: CallMoment) {
        self.0.calls.moment(moment);
    }

    async fn refused(&self, refusal: PolicyRefusal) {
        self.0.calls.policy_refused(refusal);
    }

    async fn changed(&self, transition: &Transition, _origin: ChangeOrigin<'_>, _parties: Option<&[UserProfile]>) {
        let calls = &self.0.calls;
        let call = &transition.call;
        match &transition.event {
            CallEvent::Accepted { .. } => calls.answered(call),
            CallEvent::Ended { duration_seconds, .. } => {
                calls.lasted(*duration_seconds);
                calls.finished(call);
                if call.end_reason() == Some(EndReason::IceFailed) {
                    self.0.quality.tag(QualityTag::IceFailure);
                }
            }
            CallEvent::Rejected { .. } | CallEvent::Cancelled { .. } | CallEvent::Missed => calls.finished(call),
        }
    }
}
