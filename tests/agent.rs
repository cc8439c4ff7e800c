//! The running agent (`memtrace agent`) with real processes: pattern alerts delivered to a
//! webhook, alerts restored after a restart, and a webhook that never answers delaying nothing.
//!
//! The agent watches every process on the host, and other programs running meanwhile may raise
//! alerts of their own: every check here is about the pids the test started.

use std::{
    cell::RefCell,
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    sync::{
        mpsc::{self, Receiver},
        Arc, Mutex,
    },
    time::Duration,
};

use memtrace_integration::{wait_for, Agent, AgentSpec, Leaker, TempDir};
use serde_json::Value;

/// Reads one HTTP request (head and `Content-Length` body); `None` at the end of the connection.
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<(String, Vec<u8>)> {
    let mut head = String::new();
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            }
        }
        let end = line == "\r\n";
        head.push_str(&line);
        if end {
            break;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some((head, body))
}

/// A webhook endpoint on 127.0.0.1: answers every request `200 OK` (keep-alive) and hands the
/// requests it received (head, JSON body) to the test.
struct WebhookReceiver {
    url: String,
    bodies: Receiver<(String, Value)>,
    /// Everything received so far.
    seen: RefCell<Vec<Value>>,
}

impl WebhookReceiver {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the webhook receiver");
        let url = format!("http://{}/hook", listener.local_addr().expect("address"));
        let (tx, bodies) = mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let mut writer = stream.try_clone().expect("clone the stream");
                    let mut reader = BufReader::new(stream);
                    while let Some((head, body)) = read_request(&mut reader) {
                        if writer
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                            .is_err()
                        {
                            return;
                        }
                        let json = serde_json::from_slice(&body).unwrap_or_else(|err| {
                            Value::String(format!(
                                "not JSON ({err}): {}",
                                String::from_utf8_lossy(&body)
                            ))
                        });
                        if tx.send((head, json)).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self {
            url,
            bodies,
            seen: RefCell::new(Vec::new()),
        }
    }

    /// Everything received so far.
    fn received(&self) -> Vec<Value> {
        let mut seen = self.seen.borrow_mut();
        for (head, body) in self.bodies.try_iter() {
            assert!(
                head.starts_with("POST /hook HTTP/1.1\r\n"),
                "unexpected request: {head}"
            );
            assert!(
                head.to_ascii_lowercase()
                    .contains("\r\ncontent-type: application/json\r\n"),
                "{head}"
            );
            seen.push(body);
        }
        seen.clone()
    }
}

fn is_growth_alert(alert: &Value) -> bool {
    matches!(alert["type"].as_str(), Some("leak" | "pattern"))
}

fn alert_config(webhook_url: &str) -> String {
    format!(
        r#"
[monitor]
snapshotInterval = 1
analysisInterval = 1

[patternDetection]
windowSize = 10
minDataPoints = 5
confidenceThreshold = 70

# Huge thresholds: only growth patterns raise alerts.
[thresholds]
externalMB = 1000000
rssMB = 1000000
growthRateMB = 1000000
externalRatio = 1000000

[alerting]
channels = ["file", "webhook"]
webhookUrl = "{webhook_url}"
maxAlertsPerHour = 1000
maxAlertsPerProcessPerHour = 1000
maxAlertsPerTypePerHour = 1000
# The leaker grows for 38 s from its start: no start-up grace, and growth alerts after 3 s.
patternFor = 3
gracePeriod = 0
"#
    )
}

fn ids(alerts: &Value) -> Vec<&str> {
    alerts
        .as_array()
        .map(|a| a.iter().filter_map(|x| x["id"].as_str()).collect())
        .unwrap_or_default()
}

#[test]
fn leak_alert_reaches_the_webhook_and_survives_a_restart() {
    let hook = WebhookReceiver::start();
    let config = alert_config(&hook.url);
    let data = TempDir::new("alerts");
    let spec = AgentSpec::new(&config, data.path());
    let Some(agent) = Agent::start(&spec) else {
        return;
    };
    let leaker = Leaker::start("leak");
    let cycler = Leaker::start("cycle");
    let (leak, cyc) = (u64::from(leaker.pid()), u64::from(cycler.pid()));

    // 2 MiB every 100 ms: with 1 s snapshots and 5 points at least, the pattern shows within seconds.
    let alert = wait_for(
        Duration::from_secs(60),
        &format!("a leak or pattern alert for the leaker (pid {leak}) at the webhook"),
        || {
            format!(
                "webhook bodies so far: {:#?}\n{}",
                hook.received()
                    .iter()
                    .map(|b| b["message"].clone())
                    .collect::<Vec<_>>(),
                agent.stderr_tail(40)
            )
        },
        || {
            hook.received().into_iter().find(|a| {
                is_growth_alert(a) && a["context"]["pid"] == leak && a["resolved"] == false
            })
        },
    );
    let id = alert["id"].as_str().expect("id is a string").to_string();
    assert!(id.starts_with("alert_"), "{alert:#}");
    assert!(
        alert["timestamp"]
            .as_u64()
            .is_some_and(|t| t > 1_600_000_000_000),
        "{alert:#}"
    );
    assert!(
        matches!(
            alert["severity"].as_str(),
            Some("info" | "warning" | "critical")
        ),
        "{alert:#}"
    );
    let message = alert["message"].as_str().expect("message");
    assert!(
        message.starts_with(&format!("pid {leak} (leaker): ")),
        "{message}"
    );
    assert_eq!(
        alert["metrics"]["pid"], leak,
        "metrics is the process snapshot: {alert:#}"
    );
    assert!(
        alert["metrics"]["rssBytes"]
            .as_u64()
            .is_some_and(|r| r >= 8 << 20),
        "{alert:#}"
    );
    let context = &alert["context"];
    assert!(
        matches!(
            context["trigger"].as_str(),
            Some("leak_detected" | "pattern_linear" | "pattern_exponential")
        ),
        "{alert:#}"
    );
    assert_eq!(context["comm"], "leaker");
    assert!(
        context["recommendations"]
            .as_array()
            .is_some_and(|r| !r.is_empty() && r.iter().all(Value::is_string)),
        "{alert:#}"
    );
    let pattern = &context["pattern"];
    assert!(
        matches!(
            pattern["type"].as_str(),
            Some("leak" | "linear" | "exponential")
        ),
        "{alert:#}"
    );
    assert!(
        pattern["confidence"]
            .as_f64()
            .is_some_and(|c| (70.0..=100.0).contains(&c)),
        "{alert:#}"
    );
    // The leaker grows 20 MiB/s, about 1200 MB/min.
    assert!(
        pattern["growthRate"].as_f64().is_some_and(|g| g > 300.0),
        "{alert:#}"
    );
    assert_eq!(alert["resolved"], false);

    // The same alert is in the API's active list, and the cycler (same size of allocations, all
    // freed) never got a growth alert, although the analysis has looked at it as long.
    let alerts = agent.get_json("/api/memory/alerts");
    assert!(
        ids(&alerts["active"]).contains(&id.as_str()),
        "{alert:#}\nactive: {:#}",
        alerts["active"]
    );
    let cycler_process = agent.get_json(&format!("/api/memory/processes/{cyc}"));
    assert!(
        cycler_process["pattern"].is_object(),
        "the cycler was analysed: {cycler_process:#}"
    );
    for a in hook
        .received()
        .iter()
        .chain(alerts["active"].as_array().into_iter().flatten())
        .chain(alerts["recent"].as_array().into_iter().flatten())
    {
        assert!(
            !(is_growth_alert(a) && a["context"]["pid"] == cyc),
            "growth alert for the cycler (pid {cyc}): {a:#}"
        );
    }

    // Restart with the same data directory: the active alert comes back (the leaker is still
    // alive, and auto-resolution takes autoResolveAfter, 300 s).
    agent.stop();
    let stored = std::fs::read_to_string(data.path().join("alerts.jsonl"))
        .expect("alerts.jsonl written by the file channel");
    assert!(stored.contains(&id), "alerts.jsonl lacks {id}:\n{stored}");
    let agent = Agent::start(&spec).expect("could trace a moment ago");
    let alerts = agent.get_json("/api/memory/alerts");
    let restored = alerts["active"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["id"] == id.as_str());
    let restored = restored.unwrap_or_else(|| {
        panic!(
            "alert {id} not restored; active: {:#}\n{}",
            alerts["active"],
            agent.stderr_tail(40)
        )
    });
    assert_eq!(restored["context"]["pid"], leak);
    assert_eq!(restored["resolved"], false);
    assert!(
        agent.stderr_contains("restored"),
        "{}",
        agent.stderr_tail(40)
    );
    agent.stop();
}

/// Accepts connections and never answers them.
struct DeadEndpoint {
    url: String,
    accepted: Arc<Mutex<Vec<TcpStream>>>,
}

impl DeadEndpoint {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the dead endpoint");
        let url = format!("http://{}/hook", listener.local_addr().expect("address"));
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let held = accepted.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                held.lock().unwrap().push(stream);
            }
        });
        Self { url, accepted }
    }

    fn connections(&self) -> usize {
        self.accepted.lock().unwrap().len()
    }
}

#[test]
fn a_webhook_that_never_answers_delays_nothing() {
    let dead = DeadEndpoint::start();
    // A 1 MiB RSS threshold without a for: duration: most processes on the host raise an alert at
    // the first snapshot.
    let config = format!(
        r#"
[thresholds]
rssMB = 1
for = 0

[alerting]
channels = ["webhook"]
webhookUrl = "{}"
webhookTimeoutMs = 5000
maxAlertsPerHour = 1000
maxAlertsPerProcessPerHour = 1000
maxAlertsPerTypePerHour = 1000
"#,
        dead.url
    );
    let data = TempDir::new("dead-webhook");
    let Some(agent) = Agent::start(&AgentSpec::new(&config, data.path())) else {
        return;
    };
    // The webhook thread is now stuck in a POST that waits 5 s for an answer, then retries.
    wait_for(
        Duration::from_secs(30),
        "the webhook to connect to the dead endpoint",
        || agent.stderr_tail(30),
        || (dead.connections() > 0).then_some(()),
    );
    let history = |agent: &Agent| {
        agent
            .get_json("/api/memory/history?count=100")
            .as_array()
            .map_or(0, Vec::len)
    };
    let before = history(&agent);
    // Snapshots every second go on: 3 more within 8 s. Were the POSTs in the way, the first one
    // alone would hold them for 5 s, its retries for longer.
    let after = wait_for(
        Duration::from_secs(8),
        "3 more snapshots while the webhook is stuck",
        || agent.stderr_tail(30),
        || Some(history(&agent)).filter(|&n| n >= before + 3),
    );
    assert!(after >= before + 3);
    let status = agent.get_json("/api/memory/status");
    assert!(
        status["activeAlerts"].as_u64().is_some_and(|n| n > 0),
        "{status:#}"
    );
    // The API answers meanwhile, and the metrics say nothing was delivered.
    let metrics = agent.request("GET", "/metrics", None).text();
    assert!(
        metrics
            .lines()
            .any(|l| l == "memtrace_webhook_sent_total 0"),
        "{metrics}"
    );
    // Shutting down does not wait for the endpoint either.
    let started = std::time::Instant::now();
    agent.stop();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "stopping took {:?}",
        started.elapsed()
    );
}
