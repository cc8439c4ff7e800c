//! Delivery of alert events to the configured channels.
//!
//! - console: one log line per event (`warn` for warning and critical creations, `info` otherwise);
//! - file: one JSON line per event appended to `<dataDir>/alerts.jsonl` through an [`AlertSink`]
//!   (the data directory's `Store`);
//! - webhook: an HTTP POST (`Content-Type: application/json`) from a dedicated thread, so that a
//!   slow or dead endpoint never blocks [`Dispatcher::send`]. The body is the alert JSON, or
//!   Alertmanager's alert list with `alerting.webhookFormat = "alertmanager"` ([`super::payload`]).
//!   Events wait in a bounded queue; when it is full the oldest waiting event is dropped (counted).
//!   Each POST has a time limit; failed POSTs are retried with exponential backoff; an event whose
//!   every attempt failed is counted as a failure. In the Alertmanager format the firing alerts are
//!   posted again every `alerting.webhookResendInterval` (counted apart:
//!   [`Webhook::resent_total`]). `https://` goes through rustls (ureq's `rustls` feature): the
//!   server's certificate is checked against Mozilla's public roots (compiled in), or only against
//!   the CAs of `alerting.webhookCaFile`; `webhookClientCert`/`webhookClientKey` present a client
//!   certificate (mutual TLS). The files are read when the channel starts: a missing or malformed
//!   one stops the start with an error that names it.
//!
//! Both creations and resolutions are delivered; the body tells them apart (`"resolved": true`,
//! or Alertmanager's `endsAt`).

use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Condvar, Mutex, MutexGuard, PoisonError,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{
    payload::{webhook_body, PayloadOptions},
    Alert, AlertEvent, AlertSink, Severity,
};
use crate::{
    config::{AlertingConfig, Channel, WebhookFormat},
    os::clock::now_ms,
};

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("cannot start the webhook thread")]
    SpawnWebhook(#[source] std::io::Error),
    #[error("webhook TLS: reading {}", path.display())]
    TlsFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("webhook TLS: {} is not valid PEM", path.display())]
    Pem {
        path: PathBuf,
        #[source]
        source: ureq::Error,
    },
    #[error("webhook TLS: {} holds no PEM certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error("webhook TLS: {} holds no PEM private key", path.display())]
    NoPrivateKey { path: PathBuf },
    #[error("webhook TLS: a client certificate needs both webhookClientCert and webhookClientKey")]
    ClientCertPair,
}

/// Counters of the webhook channel (all zero when it is inactive).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WebhookStats {
    /// Events delivered (a 2xx answer).
    pub sent_total: u64,
    /// Events given up on after every attempt failed (error, timeout, non-2xx answer).
    pub failures_total: u64,
    /// Events dropped because the queue was full, or still queued at shutdown.
    pub dropped_total: u64,
    /// Events waiting now.
    pub queued: u64,
    /// Posts of the firing alerts again (Alertmanager format), delivered.
    pub resent_total: u64,
}

/// Delivers alert events to every configured channel.
pub struct Dispatcher {
    console: bool,
    file: Option<Arc<dyn AlertSink>>,
    webhook: Option<Webhook>,
    file_failures_total: AtomicU64,
}

impl Dispatcher {
    /// Channels from `alerting.channels`: the file channel needs a sink (the data directory), the
    /// webhook channel a URL.
    pub fn new(
        config: &AlertingConfig,
        sink: Option<Arc<dyn AlertSink>>,
    ) -> Result<Self, ChannelError> {
        Self::with_external_url(config, config.external_url.clone(), sink)
    }

    /// Like [`Dispatcher::new`], with the agent's URL for the `generatorURL` of Alertmanager
    /// alerts (`Config::external_url`: `alerting.externalUrl`, else `http://` + `monitor.listen`).
    pub fn with_external_url(
        config: &AlertingConfig,
        external_url: Option<String>,
        sink: Option<Arc<dyn AlertSink>>,
    ) -> Result<Self, ChannelError> {
        let file = sink.filter(|_| config.has_channel(Channel::File));
        let webhook = WebhookOptions::from_config(config)
            .map(|mut options| {
                options.payload.external_url = external_url;
                Webhook::start(options)
            })
            .transpose()?;
        Ok(Self {
            console: config.has_channel(Channel::Console),
            file,
            webhook,
            file_failures_total: AtomicU64::new(0),
        })
    }

    /// Delivers one event. Never waits for the webhook; the file channel is one small append.
    pub fn send(&self, event: &AlertEvent) {
        if self.console {
            log_event(event);
        }
        if let Some(store) = &self.file {
            if let Err(e) = store.append_alert(event.alert()) {
                self.file_failures_total.fetch_add(1, Ordering::Relaxed);
                log::error!(
                    "alert {} not written: {}",
                    event.alert().id,
                    crate::error_chain(e.as_ref())
                );
            }
        }
        if let Some(webhook) = &self.webhook {
            webhook.send(event.alert());
        }
    }

    pub fn send_all<'a>(&self, events: impl IntoIterator<Item = &'a AlertEvent>) {
        for event in events {
            self.send(event);
        }
    }

    pub fn webhook(&self) -> Option<&Webhook> {
        self.webhook.as_ref()
    }

    pub fn webhook_stats(&self) -> WebhookStats {
        self.webhook
            .as_ref()
            .map(Webhook::stats)
            .unwrap_or_default()
    }

    /// Events the file channel failed to append.
    pub fn file_failures_total(&self) -> u64 {
        self.file_failures_total.load(Ordering::Relaxed)
    }

    /// Gives the webhook up to `grace` to deliver what is queued, then stops it.
    pub fn shutdown(self, grace: Duration) {
        if let Some(webhook) = self.webhook {
            webhook.shutdown(grace);
        }
    }
}

fn log_event(event: &AlertEvent) {
    match event {
        AlertEvent::Created(a) if a.severity >= Severity::Warning => {
            log::warn!("alert {} [{:?}] {}", a.id, a.severity, a.message);
        }
        AlertEvent::Created(a) => log::info!("alert {} [{:?}] {}", a.id, a.severity, a.message),
        AlertEvent::Resolved(a) => log::info!(
            "alert {} resolved ({}): {}",
            a.id,
            match a.resolved_by {
                Some(super::ResolvedBy::Manual) => "manual",
                _ => "auto",
            },
            a.message
        ),
    }
}

/// Settings of the webhook channel.
#[derive(Clone, Debug, PartialEq)]
pub struct WebhookOptions {
    pub url: String,
    /// Time limit of one POST, connection included.
    pub timeout: Duration,
    /// Further attempts after a failure.
    pub retries: u32,
    pub queue_capacity: usize,
    /// Wait before the first retry; doubled for each further one, at most `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Honour `HTTP_PROXY`/`ALL_PROXY`/`NO_PROXY` from the environment.
    pub proxy_from_env: bool,
    /// What the bodies look like.
    pub payload: PayloadOptions,
    /// Certificates for `https://` URLs.
    pub tls: WebhookTls,
}

/// TLS files of the webhook channel (PEM). Without a CA file the server's certificate is checked
/// against Mozilla's public roots.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WebhookTls {
    /// CA certificates that sign the server's certificate, trusted instead of the public roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (with its chain) presented to the server.
    pub client_cert: Option<PathBuf>,
    /// Private key of the client certificate (PKCS#8, PKCS#1 or SEC1).
    pub client_key: Option<PathBuf>,
}

impl WebhookTls {
    /// ureq's TLS configuration from the files.
    pub fn load(&self) -> Result<ureq::tls::TlsConfig, ChannelError> {
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(path) = &self.ca_file {
            let certs = read_certs(path)?;
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
        }
        match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => {
                let chain = read_certs(cert)?;
                let key = read_key(key)?;
                tls = tls.client_cert(Some(ureq::tls::ClientCert::new_with_certs(&chain, key)));
            }
            (None, None) => {}
            _ => return Err(ChannelError::ClientCertPair),
        }
        Ok(tls.build())
    }
}

fn read_pem(path: &Path) -> Result<Vec<ureq::tls::PemItem<'static>>, ChannelError> {
    let text = std::fs::read(path).map_err(|source| ChannelError::TlsFile {
        path: path.to_path_buf(),
        source,
    })?;
    ureq::tls::parse_pem(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| ChannelError::Pem {
            path: path.to_path_buf(),
            source,
        })
}

fn read_certs(path: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>, ChannelError> {
    let certs: Vec<_> = read_pem(path)?
        .into_iter()
        .filter_map(|item| match item {
            ureq::tls::PemItem::Certificate(cert) => Some(cert),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(ChannelError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<ureq::tls::PrivateKey<'static>, ChannelError> {
    read_pem(path)?
        .into_iter()
        .find_map(|item| match item {
            ureq::tls::PemItem::PrivateKey(key) => Some(key),
            _ => None,
        })
        .ok_or_else(|| ChannelError::NoPrivateKey {
            path: path.to_path_buf(),
        })
}

impl WebhookOptions {
    /// The options from `[alerting]`, or `None` when the webhook channel is not active.
    pub fn from_config(config: &AlertingConfig) -> Option<Self> {
        Some(Self {
            url: config.active_webhook_url()?.to_owned(),
            timeout: config.webhook_timeout(),
            retries: config.webhook_retries,
            queue_capacity: config.webhook_queue.max(1),
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            proxy_from_env: true,
            payload: PayloadOptions {
                format: config.webhook_format,
                external_url: config.external_url.clone(),
                instance: host_name(),
                resend_interval: Duration::from_secs(config.webhook_resend_interval.max(1)),
            },
            tls: WebhookTls {
                ca_file: config.webhook_ca_file.clone(),
                client_cert: config.webhook_client_cert.clone(),
                client_key: config.webhook_client_key.clone(),
            },
        })
    }

    /// The HTTP client: time limit, proxies, TLS. Reads the TLS files.
    pub fn agent(&self) -> Result<ureq::Agent, ChannelError> {
        let mut config = ureq::Agent::config_builder()
            .timeout_global(Some(self.timeout))
            .http_status_as_error(true)
            .user_agent(concat!("memtrace/", env!("CARGO_PKG_VERSION")))
            .tls_config(self.tls.load()?);
        if !self.proxy_from_env {
            config = config.proxy(None);
        }
        Ok(config.build().into())
    }

    fn backoff(&self, retry: u32) -> Duration {
        self.backoff_base
            .saturating_mul(1_u32.checked_shl(retry).unwrap_or(u32::MAX))
            .min(self.backoff_max)
    }
}

/// The host's name (the `instance` label of Alertmanager alerts).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

struct State {
    /// Bodies to post.
    queue: VecDeque<Vec<u8>>,
    /// Alertmanager format: the alerts firing now (posted again at each resend), by id.
    firing: std::collections::BTreeMap<String, Alert>,
    next_resend: Instant,
    capacity: usize,
    /// Set by shutdown or drop: deliver until then, then drop what is left.
    stop_at: Option<Instant>,
    done: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the worker (new event, stop).
    wake: Condvar,
    /// Signals a counter change or the end of the worker.
    changed: Condvar,
    sent: AtomicU64,
    failures: AtomicU64,
    dropped: AtomicU64,
    resent: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bump(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
        // Take the lock so that a waiter between its check and its wait does not miss this.
        drop(self.lock());
        self.changed.notify_all();
    }
}

/// The webhook channel: a bounded queue and the thread that posts from it.
pub struct Webhook {
    shared: Arc<Shared>,
    payload: PayloadOptions,
    thread: Option<JoinHandle<()>>,
}

impl Webhook {
    /// Starts the channel's thread. The TLS files are read here: an error names the file.
    pub fn start(options: WebhookOptions) -> Result<Self, ChannelError> {
        let agent = options.agent()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                firing: std::collections::BTreeMap::new(),
                next_resend: Instant::now() + options.payload.resend_interval,
                capacity: options.queue_capacity.max(1),
                stop_at: None,
                done: false,
            }),
            wake: Condvar::new(),
            changed: Condvar::new(),
            sent: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            resent: AtomicU64::new(0),
        });
        let worker = Arc::clone(&shared);
        let payload = options.payload.clone();
        let thread = std::thread::Builder::new()
            .name("memtrace-webhook".into())
            .spawn(move || run(&worker, &options, &agent))
            .map_err(ChannelError::SpawnWebhook)?;
        Ok(Self {
            shared,
            payload,
            thread: Some(thread),
        })
    }

    /// Queues the alert for posting and returns at once. When the queue is full the oldest waiting
    /// event is dropped and counted.
    pub fn send(&self, alert: &Alert) {
        let body = match webhook_body(&self.payload, &[alert], now_ms()) {
            Ok(body) => body,
            Err(e) => {
                log::error!("alert {} not sent to the webhook: {e}", alert.id);
                self.shared.bump(&self.shared.failures);
                return;
            }
        };
        let mut state = self.shared.lock();
        if state.stop_at.is_some() {
            drop(state);
            self.shared.bump(&self.shared.dropped);
            return;
        }
        if self.payload.format == WebhookFormat::Alertmanager {
            if alert.resolved {
                state.firing.remove(&alert.id);
            } else {
                state.firing.insert(alert.id.clone(), alert.clone());
            }
        }
        let mut dropped = false;
        if state.queue.len() >= state.capacity {
            state.queue.pop_front();
            dropped = true;
        }
        state.queue.push_back(body);
        drop(state);
        self.shared.wake.notify_one();
        if dropped {
            log::warn!("webhook queue full: oldest alert event dropped");
            self.shared.bump(&self.shared.dropped);
        }
    }

    /// Posts of the firing alerts again (Alertmanager format), delivered.
    pub fn resent_total(&self) -> u64 {
        self.shared.resent.load(Ordering::Relaxed)
    }

    pub fn stats(&self) -> WebhookStats {
        let queued = self.shared.lock().queue.len() as u64;
        WebhookStats {
            sent_total: self.shared.sent.load(Ordering::Relaxed),
            failures_total: self.shared.failures.load(Ordering::Relaxed),
            dropped_total: self.shared.dropped.load(Ordering::Relaxed),
            queued,
            resent_total: self.resent_total(),
        }
    }

    /// Waits until `pred` holds for the counters, at most `timeout`. Returns whether it held.
    pub fn wait_until(&self, timeout: Duration, pred: impl Fn(&WebhookStats) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            let stats = WebhookStats {
                sent_total: self.shared.sent.load(Ordering::Relaxed),
                failures_total: self.shared.failures.load(Ordering::Relaxed),
                dropped_total: self.shared.dropped.load(Ordering::Relaxed),
                queued: state.queue.len() as u64,
                resent_total: self.shared.resent.load(Ordering::Relaxed),
            };
            if pred(&stats) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Lets the worker deliver what is queued for up to `grace`, then stops it; what is still queued
    /// then is dropped (counted). Waits for the worker at most `grace` plus one request's time limit.
    pub fn shutdown(mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        self.stop(deadline);
        let mut state = self.shared.lock();
        // The worker checks the deadline between requests; one request may be in flight.
        let give_up = deadline + Duration::from_secs(1);
        while !state.done {
            let now = Instant::now();
            if now >= give_up {
                break;
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, give_up - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let done = state.done;
        drop(state);
        if let Some(thread) = self.thread.take() {
            if done {
                if thread.join().is_err() {
                    log::error!("webhook thread panicked");
                }
            } else {
                log::warn!("webhook thread still busy at shutdown; leaving it");
            }
        }
    }

    fn stop(&self, at: Instant) {
        let mut state = self.shared.lock();
        if state.stop_at.is_none_or(|t| at < t) {
            state.stop_at = Some(at);
        }
        drop(state);
        self.shared.wake.notify_all();
    }
}

impl Drop for Webhook {
    /// Stops the worker without waiting: it finishes the request in flight, if any, and drops the
    /// rest.
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop(Instant::now());
        }
    }
}

fn run(shared: &Shared, options: &WebhookOptions, agent: &ureq::Agent) {
    while let Some((body, resend)) = next_body(shared, options) {
        deliver(shared, options, agent, &body, resend);
    }
    shared.lock().done = true;
    shared.changed.notify_all();
}

/// The next body to post (and whether it is a resend of the firing alerts), or `None` once
/// stopping and the queue is empty or the deadline passed (what is left is dropped and counted).
fn next_body(shared: &Shared, options: &WebhookOptions) -> Option<(Vec<u8>, bool)> {
    let mut state = shared.lock();
    loop {
        if let Some(stop_at) = state.stop_at {
            if state.queue.is_empty() || Instant::now() >= stop_at {
                let left = state.queue.len() as u64;
                state.queue.clear();
                drop(state);
                if left > 0 {
                    log::warn!("{left} alert events not sent to the webhook at shutdown");
                    shared.dropped.fetch_add(left, Ordering::Relaxed);
                }
                return None;
            }
        }
        if let Some(body) = state.queue.pop_front() {
            drop(state);
            shared.changed.notify_all();
            return Some((body, false));
        }
        let resending = options.payload.format == WebhookFormat::Alertmanager
            && !state.firing.is_empty()
            && state.stop_at.is_none();
        if !resending {
            state = shared
                .wake
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            continue;
        }
        let now = Instant::now();
        if now >= state.next_resend {
            state.next_resend = now + options.payload.resend_interval;
            let firing: Vec<&Alert> = state.firing.values().collect();
            match webhook_body(&options.payload, &firing, now_ms()) {
                Ok(body) => return Some((body, true)),
                Err(e) => log::error!("firing alerts not sent again to the webhook: {e}"),
            }
            continue;
        }
        let wait = state.next_resend - now;
        state = shared
            .wake
            .wait_timeout(state, wait)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
}

fn deliver(
    shared: &Shared,
    options: &WebhookOptions,
    agent: &ureq::Agent,
    body: &[u8],
    resend: bool,
) {
    let mut attempt = 0;
    loop {
        let result = agent
            .post(&options.url)
            .header("Content-Type", "application/json")
            .send(body);
        let error = match result {
            Ok(_) => {
                shared.bump(if resend { &shared.resent } else { &shared.sent });
                return;
            }
            Err(e) => e,
        };
        if attempt >= options.retries {
            log::warn!(
                "webhook {}: alert event not delivered after {} attempt(s): {error}",
                options.url,
                attempt + 1
            );
            shared.bump(&shared.failures);
            return;
        }
        let backoff = options.backoff(attempt);
        attempt += 1;
        log::debug!(
            "webhook {}: {error}; retry {attempt} in {backoff:?}",
            options.url
        );
        // Sleep for the backoff unless stopping; a stop cuts the retries short.
        let until = Instant::now() + backoff;
        let mut state = shared.lock();
        loop {
            if let Some(stop_at) = state.stop_at {
                if Instant::now() >= stop_at || until > stop_at {
                    drop(state);
                    log::warn!(
                        "webhook {}: retries cut short by shutdown",
                        crate::config::redact_url(&options.url)
                    );
                    shared.bump(&shared.failures);
                    return;
                }
            }
            let now = Instant::now();
            if now >= until {
                break;
            }
            state = shared
                .wake
                .wait_timeout(state, until - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead, BufReader, Read, Write},
        net::{TcpListener, TcpStream},
        sync::mpsc,
    };

    use super::*;
    use crate::{
        alerts::{AlertEngine, AlertEvent},
        config::ThresholdsConfig,
        snapshot::ProcessSnapshot,
    };

    fn alert_event() -> AlertEvent {
        let mut engine = AlertEngine::with_seed(
            &ThresholdsConfig::default().with_for(0),
            &AlertingConfig::default().immediate(),
            3,
        );
        let p = ProcessSnapshot {
            pid: 4321,
            comm: "node".into(),
            rss_bytes: 300 * 1024 * 1024,
            ..Default::default()
        };
        engine
            .check_thresholds(&p, 1_700_000_000_000)
            .into_iter()
            .next()
            .unwrap()
    }

    fn options(url: String) -> WebhookOptions {
        WebhookOptions {
            url,
            timeout: Duration::from_millis(300),
            retries: 0,
            queue_capacity: 10,
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_millis(50),
            proxy_from_env: false,
            payload: PayloadOptions {
                format: WebhookFormat::Origin,
                external_url: None,
                instance: "test-host".into(),
                resend_interval: Duration::from_secs(60),
            },
            tls: WebhookTls::default(),
        }
    }

    /// Reads one HTTP request: (request line and headers, body).
    fn read_request(stream: &mut TcpStream) -> (String, Vec<u8>) {
        read_request_from(stream.try_clone().unwrap())
    }

    fn read_request_from(stream: impl Read) -> (String, Vec<u8>) {
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap();
                }
            }
            head.push_str(&line);
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        (head, body)
    }

    /// A server answering `status` to each request and reporting what it received.
    fn server(status: &'static str) -> (String, mpsc::Receiver<(String, Vec<u8>)>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let request = read_request(&mut stream);
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                if tx.send(request).is_err() {
                    return;
                }
            }
        });
        (url, rx)
    }

    #[test]
    fn webhook_posts_the_alert_json() {
        let (url, rx) = server("200 OK");
        let webhook = Webhook::start(options(url)).unwrap();
        let event = alert_event();
        webhook.send(event.alert());
        let (head, body) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(head.starts_with("POST /hook HTTP/1.1\r\n"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/json\r\n"),
            "{head}"
        );
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["id"], event.alert().id.as_str());
        assert_eq!(json["type"], "threshold");
        assert_eq!(json["severity"], "warning");
        assert_eq!(json["resolved"], false);
        assert_eq!(json["context"]["trigger"], "rss_threshold");
        assert_eq!(json["context"]["pid"], 4321);
        assert_eq!(json["context"]["threshold"], 200.0);
        assert_eq!(json["metrics"]["comm"], "node");
        assert!(json["message"]
            .as_str()
            .unwrap()
            .starts_with("pid 4321 (node): RSS"));
        let back: Alert = serde_json::from_value(json).unwrap();
        assert_eq!(&back, event.alert());
        assert!(webhook.wait_until(Duration::from_secs(10), |s| s.sent_total == 1));
        assert_eq!(webhook.stats().failures_total, 0);
        webhook.shutdown(Duration::from_secs(1));
    }

    /// `alertmanager` format: the creation is posted as Alertmanager's alert list, the firing alert
    /// is posted again at each resend interval (so Alertmanager keeps it), the resolution sets
    /// `endsAt` to the time of resolution, and nothing is resent after it.
    #[test]
    fn webhook_posts_alertmanager_alerts_resends_and_resolves() {
        let (url, rx) = server("200 OK");
        let mut opts = options(url);
        opts.payload.format = WebhookFormat::Alertmanager;
        opts.payload.external_url = Some("http://127.0.0.1:10000".into());
        opts.payload.resend_interval = Duration::from_millis(300);
        let webhook = Webhook::start(opts).unwrap();
        let event = alert_event();
        let alert = event.alert().clone();
        webhook.send(&alert);
        let receive = || {
            let (_, body) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            serde_json::from_slice::<serde_json::Value>(&body).unwrap()
        };
        let first = receive();
        let labels = &first[0]["labels"];
        assert_eq!(labels["alertname"], "MemtraceRssThreshold");
        assert_eq!(labels["severity"], "warning");
        assert_eq!(labels["pid"], "4321");
        assert_eq!(labels["comm"], "node");
        assert_eq!(labels["instance"], "test-host");
        assert_eq!(first[0]["annotations"]["alert_id"], alert.id.as_str());
        assert_eq!(
            first[0]["generatorURL"],
            "http://127.0.0.1:10000/api/memory/alerts"
        );
        assert_eq!(
            first[0]["startsAt"],
            crate::os::clock::rfc3339_ms(alert.timestamp)
        );
        // Posted again while firing, with the same labels.
        let again = receive();
        assert_eq!(again[0]["labels"], *labels);
        assert!(webhook.wait_until(Duration::from_secs(10), |_| webhook.resent_total() >= 1));
        // Resolved: endsAt is the time of resolution.
        let mut resolved = alert.clone();
        resolved.resolved = true;
        resolved.resolved_at = Some(alert.timestamp + 90_000);
        webhook.send(&resolved);
        let last = loop {
            let body = receive();
            if body[0]["endsAt"] == crate::os::clock::rfc3339_ms(alert.timestamp + 90_000) {
                break body;
            }
        };
        assert_eq!(last[0]["labels"], *labels);
        // Nothing firing: no more resends.
        assert!(rx.recv_timeout(Duration::from_millis(900)).is_err());
        webhook.shutdown(Duration::from_secs(1));
    }

    #[test]
    fn webhook_retries_error_answers_then_counts_failure() {
        let (url, rx) = server("500 Internal Server Error");
        let mut opts = options(url);
        opts.retries = 2;
        let webhook = Webhook::start(opts).unwrap();
        webhook.send(alert_event().alert());
        assert!(webhook.wait_until(Duration::from_secs(10), |s| s.failures_total == 1));
        // One attempt and two retries reached the server.
        for _ in 0..3 {
            rx.recv_timeout(Duration::from_secs(1)).unwrap();
        }
        assert!(rx.try_recv().is_err());
        assert_eq!(webhook.stats().sent_total, 0);
    }

    #[test]
    fn dead_webhook_never_blocks_send_and_failure_is_counted_after_timeout() {
        // Accepts connections and never answers.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let held: Vec<TcpStream> = listener.incoming().take(1).flatten().collect();
            let _ = stop_rx.recv_timeout(Duration::from_secs(20));
            drop(held);
        });

        let webhook = Webhook::start(options(url)).unwrap();
        let event = alert_event();
        let started = Instant::now();
        for _ in 0..5 {
            webhook.send(event.alert());
        }
        let send_time = started.elapsed();
        assert!(
            send_time < Duration::from_millis(100),
            "send took {send_time:?}"
        );

        assert!(webhook.wait_until(Duration::from_secs(10), |s| s.failures_total >= 1));
        let failed_after = started.elapsed();
        assert!(
            failed_after >= Duration::from_millis(300),
            "failure counted before the 300 ms timeout: {failed_after:?}"
        );
        // Shutting down drops what is still queued, counted, without waiting for all timeouts.
        let stopped = Instant::now();
        webhook.shutdown(Duration::ZERO);
        assert!(stopped.elapsed() < Duration::from_secs(2));
        let _ = stop_tx.send(());
        holder.join().unwrap();
    }

    #[test]
    fn full_queue_drops_oldest_and_counts() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let held: Vec<TcpStream> = listener.incoming().take(1).flatten().collect();
            let _ = stop_rx.recv_timeout(Duration::from_secs(20));
            drop(held);
        });
        let mut opts = options(url);
        opts.queue_capacity = 2;
        opts.timeout = Duration::from_secs(5);
        let webhook = Webhook::start(opts).unwrap();
        let event = alert_event();
        // The first is taken by the worker (in flight), two wait, the rest push out the oldest.
        webhook.send(event.alert());
        assert!(webhook.wait_until(Duration::from_secs(5), |s| s.queued == 0));
        for _ in 0..5 {
            webhook.send(event.alert());
        }
        let stats = webhook.stats();
        assert_eq!(stats.queued, 2);
        assert_eq!(stats.dropped_total, 3);
        drop(webhook);
        let _ = stop_tx.send(());
        holder.join().unwrap();
    }

    #[test]
    fn dispatcher_writes_file_and_posts() {
        let dir = std::env::temp_dir().join(format!(
            "memtrace-dispatch-{}-{}",
            std::process::id(),
            line!()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Arc::new(crate::store::Store::open(&dir, Default::default()).unwrap());
        let (url, rx) = server("204 No Content");
        let config = AlertingConfig {
            webhook_url: Some(url),
            ..Default::default()
        };
        let dispatcher =
            Dispatcher::new(&config, Some(Arc::clone(&store) as Arc<dyn AlertSink>)).unwrap();
        let event = alert_event();
        dispatcher.send(&event);
        let (_, body) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["id"], event.alert().id.as_str());
        let alerts = store.load_alerts().unwrap();
        assert_eq!(alerts, vec![event.alert().clone()]);
        assert!(dispatcher
            .webhook()
            .unwrap()
            .wait_until(Duration::from_secs(10), |s| s.sent_total == 1));
        assert_eq!(dispatcher.file_failures_total(), 0);
        dispatcher.shutdown(Duration::from_secs(1));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Certificates made for a test: a CA, a server certificate for `localhost` and 127.0.0.1,
    /// and a client certificate, all signed by the CA, written as PEM files.
    struct Pki {
        dir: PathBuf,
        ca: rustls::pki_types::CertificateDer<'static>,
        server_cert: rustls::pki_types::CertificateDer<'static>,
        server_key: rustls::pki_types::PrivateKeyDer<'static>,
        client_cert: rustls::pki_types::CertificateDer<'static>,
    }

    impl Pki {
        fn new(tag: &str) -> Self {
            use rcgen::{
                BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
            };
            let dir = std::env::temp_dir().join(format!(
                "memtrace-tls-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
            ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            ca_params
                .distinguished_name
                .push(DnType::CommonName, "memtrace test CA");
            let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
            let issue = |names: Vec<String>, cn: &str| {
                let key = KeyPair::generate().unwrap();
                let mut params = CertificateParams::new(names).unwrap();
                params.distinguished_name.push(DnType::CommonName, cn);
                (params.signed_by(&key, &ca).unwrap(), key)
            };
            let (server, server_key) = issue(
                vec!["localhost".into(), "127.0.0.1".into()],
                "memtrace test receiver",
            );
            let (client, client_key) = issue(Vec::new(), "memtrace test agent");
            std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
            std::fs::write(dir.join("client.pem"), client.pem()).unwrap();
            std::fs::write(dir.join("client.key"), client_key.serialize_pem()).unwrap();
            Self {
                dir,
                ca: ca.der().clone(),
                server_cert: server.der().clone(),
                server_key: rustls::pki_types::PrivateKeyDer::Pkcs8(
                    server_key.serialize_der().into(),
                ),
                client_cert: client.der().clone(),
            }
        }

        fn tls(&self, ca: bool, client: bool) -> WebhookTls {
            WebhookTls {
                ca_file: ca.then(|| self.dir.join("ca.pem")),
                client_cert: client.then(|| self.dir.join("client.pem")),
                client_key: client.then(|| self.dir.join("client.key")),
            }
        }
    }

    impl Drop for Pki {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// What the TLS receiver saw of one connection: the handshake's outcome, the client's
    /// certificate and the request.
    struct TlsSeen {
        handshake: Result<(), String>,
        client_cert: Option<Vec<u8>>,
        request: Option<(String, Vec<u8>)>,
    }

    /// An HTTPS receiver on 127.0.0.1 with the PKI's server certificate that requires a client
    /// certificate signed by the PKI's CA; it answers 200 to each request.
    fn tls_server(pki: &Pki) -> (u16, mpsc::Receiver<TlsSeen>) {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca.clone()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&provider),
        )
        .build()
        .unwrap();
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_client_cert_verifier(verifier)
                .with_single_cert(vec![pki.server_cert.clone()], pki.server_key.clone_key())
                .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(mut tcp) = tcp else { return };
                tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut conn = rustls::ServerConnection::new(Arc::clone(&config)).unwrap();
                let mut handshake = Ok(());
                while conn.is_handshaking() {
                    if let Err(e) = conn.complete_io(&mut tcp) {
                        handshake = Err(e.to_string());
                        break;
                    }
                }
                let client_cert = conn
                    .peer_certificates()
                    .and_then(|certs| certs.first())
                    .map(|c| c.to_vec());
                let mut request = None;
                if handshake.is_ok() {
                    let mut stream = rustls::StreamOwned::new(conn, tcp);
                    let (head, body) = read_request_from(&mut stream);
                    let _ = write!(
                        stream,
                        "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                    let _ = stream.flush();
                    stream.conn.send_close_notify();
                    let _ = stream.conn.complete_io(&mut stream.sock);
                    request = Some((head, body));
                }
                let seen = TlsSeen {
                    handshake,
                    client_cert,
                    request,
                };
                if tx.send(seen).is_err() {
                    return;
                }
            }
        });
        (port, rx)
    }

    fn tls_options(port: u16, host: &str, tls: WebhookTls) -> WebhookOptions {
        WebhookOptions {
            timeout: Duration::from_secs(10),
            tls,
            ..options(format!("https://{host}:{port}/hook"))
        }
    }

    #[test]
    fn webhook_posts_over_tls_with_a_private_ca_and_a_client_certificate() {
        let pki = Pki::new("ok");
        let (port, rx) = tls_server(&pki);
        for host in ["localhost", "127.0.0.1"] {
            let webhook = Webhook::start(tls_options(port, host, pki.tls(true, true))).unwrap();
            let event = alert_event();
            webhook.send(event.alert());
            let seen = rx.recv_timeout(Duration::from_secs(20)).unwrap();
            assert_eq!(seen.handshake, Ok(()));
            assert_eq!(
                seen.client_cert.as_deref(),
                Some(pki.client_cert.as_ref()),
                "the agent presented its client certificate"
            );
            let (head, body) = seen.request.expect("a request");
            assert!(head.starts_with("POST /hook HTTP/1.1\r\n"), "{head}");
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(json["id"], event.alert().id.as_str());
            assert!(webhook.wait_until(Duration::from_secs(10), |s| s.sent_total == 1));
            assert_eq!(webhook.stats().failures_total, 0);
            webhook.shutdown(Duration::from_secs(1));
        }
    }

    #[test]
    fn webhook_tls_fails_without_the_ca_or_the_client_certificate() {
        let pki = Pki::new("refused");
        let (port, rx) = tls_server(&pki);
        // The public roots do not know the test CA: the agent refuses the server.
        let webhook = Webhook::start(tls_options(port, "localhost", pki.tls(false, true))).unwrap();
        webhook.send(alert_event().alert());
        assert!(webhook.wait_until(Duration::from_secs(20), |s| s.failures_total == 1));
        assert_eq!(webhook.stats().sent_total, 0);
        let seen = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        assert!(seen.handshake.is_err() && seen.request.is_none());
        webhook.shutdown(Duration::ZERO);
        // The same client, directly: the reason is the unknown issuer.
        let agent = tls_options(port, "localhost", pki.tls(false, true))
            .agent()
            .unwrap();
        let err = agent
            .post(format!("https://localhost:{port}/hook"))
            .send(&b"{}"[..])
            .unwrap_err();
        assert!(err.to_string().contains("UnknownIssuer"), "{err}");
        let _ = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        // No client certificate: the server refuses the agent.
        let webhook = Webhook::start(tls_options(port, "localhost", pki.tls(true, false))).unwrap();
        webhook.send(alert_event().alert());
        assert!(webhook.wait_until(Duration::from_secs(20), |s| s.failures_total == 1));
        assert_eq!(webhook.stats().sent_total, 0);
        let seen = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        assert!(seen.request.is_none() && seen.client_cert.is_none());
        assert!(
            seen.handshake
                .as_ref()
                .is_err_and(|e| e.contains("no certificates")),
            "{:?}",
            seen.handshake
        );
        webhook.shutdown(Duration::ZERO);
    }

    #[test]
    fn tls_files_are_checked_when_the_channel_starts() {
        let pki = Pki::new("files");
        let start = |tls: WebhookTls| {
            Webhook::start(tls_options(1, "localhost", tls)).map(|w| w.shutdown(Duration::ZERO))
        };
        let missing = pki.dir.join("nope.pem");
        let err = start(WebhookTls {
            ca_file: Some(missing.clone()),
            ..WebhookTls::default()
        })
        .unwrap_err();
        assert!(matches!(&err, ChannelError::TlsFile { path, .. } if *path == missing));
        assert!(crate::error_chain(&err).contains("nope.pem"), "{err}");
        // A key where a certificate is expected, and the other way round.
        let err = start(WebhookTls {
            ca_file: Some(pki.dir.join("client.key")),
            ..WebhookTls::default()
        })
        .unwrap_err();
        assert!(matches!(err, ChannelError::NoCertificate { .. }), "{err}");
        let err = start(WebhookTls {
            client_cert: Some(pki.dir.join("client.pem")),
            client_key: Some(pki.dir.join("ca.pem")),
            ..WebhookTls::default()
        })
        .unwrap_err();
        assert!(matches!(err, ChannelError::NoPrivateKey { .. }), "{err}");
        let err = start(WebhookTls {
            client_cert: Some(pki.dir.join("client.pem")),
            ..WebhookTls::default()
        })
        .unwrap_err();
        assert!(matches!(err, ChannelError::ClientCertPair), "{err}");
        start(pki.tls(true, true)).expect("good files");
    }

    #[test]
    fn inactive_webhook_without_url() {
        let dispatcher = Dispatcher::new(&AlertingConfig::default(), None).unwrap();
        assert!(dispatcher.webhook().is_none());
        dispatcher.send(&alert_event());
        assert_eq!(dispatcher.webhook_stats(), WebhookStats::default());
    }
}
