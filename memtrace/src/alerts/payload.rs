//! What the webhook posts for alert events, in the configured format (`alerting.webhookFormat`):
//!
//! - `origin` (the default): the alert JSON itself, as the origin monitor posted it and as
//!   `alerts.jsonl` holds it, one alert per POST; `"resolved": true` marks a resolution;
//! - `alertmanager`: the body of Alertmanager's `POST /api/v2/alerts`, an array of alerts with
//!   `labels` (their identity in Alertmanager: `alertname`, `severity`, `type`, `trigger`, `pid`,
//!   `comm`, `container` when there is one, `instance`, `job`), `annotations` (`summary`,
//!   `description`, `alert_id`, `threshold`, `library`), `startsAt`, `endsAt` and `generatorURL`.
//!   A firing alert's `endsAt` lies [`ALERTMANAGER_VALIDITY`] resend intervals ahead (the webhook
//!   posts the firing alerts again at each interval, so Alertmanager keeps them); a resolution
//!   sets it to the time of resolution.
//!
//! Formatting is separate from delivery (the webhook thread), so that other transports post the
//! same bodies.

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::{Alert, Trigger};
use crate::{config::WebhookFormat, os::clock::rfc3339_ms};

/// A firing alert sent to Alertmanager stays valid for this many resend intervals (Prometheus
/// uses four evaluation intervals).
pub const ALERTMANAGER_VALIDITY: u32 = 4;

/// What a body needs besides the alerts.
#[derive(Clone, Debug, PartialEq)]
pub struct PayloadOptions {
    pub format: WebhookFormat,
    /// Base URL of the agent (`alerting.externalUrl`); `generatorURL` links into it.
    pub external_url: Option<String>,
    /// `instance` label: the host's name.
    pub instance: String,
    /// How often firing alerts are posted again (Alertmanager format).
    pub resend_interval: Duration,
}

/// `alertname` of a trigger: `Memtrace` and the trigger in CamelCase (`MemtraceLeakDetected`).
pub fn alert_name(trigger: Trigger) -> String {
    let mut name = String::from("Memtrace");
    for word in trigger.as_str().split('_') {
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            name.extend(first.to_uppercase());
            name.push_str(chars.as_str());
        }
    }
    name
}

/// The body of one POST for `alerts` (one alert for an event; the firing alerts for an
/// Alertmanager resend), at `now_ms`.
pub fn webhook_body(
    options: &PayloadOptions,
    alerts: &[&Alert],
    now_ms: u64,
) -> Result<Vec<u8>, serde_json::Error> {
    match options.format {
        WebhookFormat::Origin => match alerts {
            [alert] => serde_json::to_vec(alert),
            _ => serde_json::to_vec(alerts),
        },
        WebhookFormat::Alertmanager => {
            let body: Vec<Value> = alerts
                .iter()
                .map(|a| alertmanager_alert(options, a, now_ms))
                .collect();
            serde_json::to_vec(&body)
        }
    }
}

/// One alert in Alertmanager's shape (`postableAlert` of its API v2).
pub fn alertmanager_alert(options: &PayloadOptions, alert: &Alert, now_ms: u64) -> Value {
    let c = &alert.context;
    let mut labels = Map::new();
    let mut label = |k: &str, v: String| {
        labels.insert(k.to_owned(), Value::String(v));
    };
    label("alertname", alert_name(c.trigger));
    label("severity", severity_str(alert));
    label("type", kind_str(alert));
    label("trigger", c.trigger.as_str().to_owned());
    label("pid", c.pid.to_string());
    label("comm", c.comm.clone());
    if !c.container.is_empty() {
        label("container", c.container.clone());
    }
    label("instance", options.instance.clone());
    label("job", "memtrace".to_owned());

    let mut annotations = Map::new();
    annotations.insert("summary".into(), Value::String(alert.message.clone()));
    if !c.recommendations.is_empty() {
        annotations.insert(
            "description".into(),
            Value::String(c.recommendations.join("; ")),
        );
    }
    annotations.insert("alert_id".into(), Value::String(alert.id.clone()));
    if let Some(threshold) = c.threshold {
        annotations.insert("threshold".into(), Value::String(threshold.to_string()));
    }
    if let Some(library) = &c.library {
        annotations.insert("library".into(), Value::String(library.clone()));
    }

    let valid_ms = u64::try_from(
        options
            .resend_interval
            .saturating_mul(ALERTMANAGER_VALIDITY)
            .as_millis(),
    )
    .unwrap_or(u64::MAX);
    let ends_at = match alert.resolved_at.filter(|_| alert.resolved) {
        Some(at) => at,
        None => now_ms.saturating_add(valid_ms),
    };
    let mut value = json!({
        "labels": labels,
        "annotations": annotations,
        "startsAt": rfc3339_ms(alert.timestamp),
        "endsAt": rfc3339_ms(ends_at),
    });
    if let Some(base) = &options.external_url {
        value["generatorURL"] =
            Value::String(format!("{}/api/memory/alerts", base.trim_end_matches('/')));
    }
    value
}

fn severity_str(alert: &Alert) -> String {
    serde_json::to_value(alert.severity)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn kind_str(alert: &Alert) -> String {
    serde_json::to_value(alert.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::{AlertContext, AlertType, ResolvedBy, Severity};

    const T: u64 = 1_705_320_000_000; // 2024-01-15T12:00:00Z

    fn alert(resolved: bool) -> Alert {
        Alert {
            id: "alert_1705320000000_abcdefghi".into(),
            timestamp: T,
            kind: AlertType::Leak,
            severity: Severity::Critical,
            message: "pid 42 (leaker): leak memory growth".into(),
            metrics: json!({"pid": 42}),
            context: AlertContext {
                trigger: Trigger::LeakDetected,
                threshold: None,
                recommendations: vec!["Find it".into(), "Fix it".into()],
                pid: 42,
                comm: "leaker".into(),
                container: "0123456789ab".into(),
                library: Some("libleak.so".into()),
                top_consumers: None,
                pattern: None,
            },
            resolved,
            resolved_at: resolved.then_some(T + 90_000),
            resolved_by: resolved.then_some(ResolvedBy::Auto),
        }
    }

    fn options(format: WebhookFormat) -> PayloadOptions {
        PayloadOptions {
            format,
            external_url: Some("http://memtrace.example:10000/".into()),
            instance: "host1".into(),
            resend_interval: Duration::from_secs(60),
        }
    }

    #[test]
    fn origin_body_is_the_alert_json() {
        let a = alert(false);
        let body = webhook_body(&options(WebhookFormat::Origin), &[&a], T).unwrap();
        let back: Alert = serde_json::from_slice(&body).unwrap();
        assert_eq!(back, a);
    }

    #[test]
    fn alertmanager_body_firing_and_resolved() {
        let a = alert(false);
        let body = webhook_body(&options(WebhookFormat::Alertmanager), &[&a], T + 5000).unwrap();
        let json: Value = serde_json::from_slice(&body).unwrap();
        let one = &json[0];
        assert_eq!(json.as_array().map(Vec::len), Some(1));
        assert_eq!(
            one["labels"],
            json!({
                "alertname": "MemtraceLeakDetected", "severity": "critical", "type": "leak",
                "trigger": "leak_detected", "pid": "42", "comm": "leaker",
                "container": "0123456789ab", "instance": "host1", "job": "memtrace"
            })
        );
        assert_eq!(
            one["annotations"]["summary"],
            "pid 42 (leaker): leak memory growth"
        );
        assert_eq!(one["annotations"]["description"], "Find it; Fix it");
        assert_eq!(one["annotations"]["alert_id"], a.id.as_str());
        assert_eq!(one["annotations"]["library"], "libleak.so");
        assert_eq!(one["startsAt"], "2024-01-15T12:00:00.000Z");
        // Firing: valid for four resend intervals from now.
        assert_eq!(one["endsAt"], "2024-01-15T12:04:05.000Z");
        assert_eq!(
            one["generatorURL"],
            "http://memtrace.example:10000/api/memory/alerts"
        );
        let r = alert(true);
        let body = webhook_body(&options(WebhookFormat::Alertmanager), &[&r], T + 99_000).unwrap();
        let json: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json[0]["endsAt"], "2024-01-15T12:01:30.000Z");
        // The same labels: Alertmanager matches the resolution to the alert.
        assert_eq!(json[0]["labels"], one["labels"]);
    }

    #[test]
    fn alert_names() {
        assert_eq!(alert_name(Trigger::RssThreshold), "MemtraceRssThreshold");
        assert_eq!(
            alert_name(Trigger::ExternalMemoryThreshold),
            "MemtraceExternalMemoryThreshold"
        );
        assert_eq!(alert_name(Trigger::SpikeDetected), "MemtraceSpikeDetected");
    }
}
