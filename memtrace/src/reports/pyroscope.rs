//! Pushing a heap profile to Pyroscope's ingest API: `POST <url>/ingest?name=APP{LABELS}&from=S&
//! until=S&format=pprof&spyName=memtrace`, with a `multipart/form-data` body holding the gzipped
//! profile (`profile`) and a `sample_type_config` that names the sample types to keep:
//! `inuse_objects` and `inuse_space`, as instant values (`aggregation: average`). The cumulative
//! `alloc_*` types are left out: Pyroscope turns cumulative types into deltas only against a
//! previous profile sent with the same request, which a single push does not have.

use std::time::Duration;

/// Where and as what to push.
#[derive(Clone, Debug)]
pub struct PyroscopeTarget {
    /// The server, `http(s)://host:port` (with a path prefix if behind one); `/ingest` is added.
    pub url: String,
    /// The application name (Pyroscope's `service_name`): letters, digits, `.`, `_`, `-`.
    pub app_name: String,
    /// Labels of the series, e.g. `pid`, `comm`, `host`. Names as Prometheus label names; values
    /// have `{`, `}`, `,`, `=` and control characters replaced by `_`.
    pub labels: Vec<(String, String)>,
    /// Tenant for a multi-tenant Pyroscope (`X-Scope-OrgID`).
    pub tenant: Option<String>,
    /// Time limit of the whole request.
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("application name {0:?}: use letters, digits, '.', '_' and '-'")]
    AppName(String),
    #[error("label name {0:?}: use letters, digits and '_', not starting with a digit")]
    LabelName(String),
    #[error("the profile is empty")]
    Empty,
    #[error("pushing to {url}")]
    Http {
        url: String,
        #[source]
        source: ureq::Error,
    },
}

/// The spy name sent with each push (Pyroscope's `spyName`).
pub const SPY_NAME: &str = "memtrace";

/// The sample types Pyroscope keeps from a pushed heap profile, as its `sample_type_config`.
pub const SAMPLE_TYPE_CONFIG: &str = r#"{"inuse_objects":{"units":"objects","aggregation":"average"},"inuse_space":{"units":"bytes","aggregation":"average"}}"#;

impl PyroscopeTarget {
    /// `APP{name=value,...}` as the `name` query parameter carries it.
    pub fn series_name(&self) -> Result<String, PushError> {
        let app_ok = !self.app_name.is_empty()
            && self
                .app_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !app_ok {
            return Err(PushError::AppName(self.app_name.clone()));
        }
        let mut labels = Vec::with_capacity(self.labels.len());
        for (name, value) in &self.labels {
            let name_ok = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !name_ok {
                return Err(PushError::LabelName(name.clone()));
            }
            let value: String = value
                .chars()
                .map(|c| {
                    if matches!(c, '{' | '}' | ',' | '=') || c.is_control() {
                        '_'
                    } else {
                        c
                    }
                })
                .collect();
            labels.push(format!("{name}={value}"));
        }
        Ok(format!("{}{{{}}}", self.app_name, labels.join(",")))
    }

    /// An HTTP client for pushes: the target's time limit, errors for non-2xx answers.
    pub fn agent(&self) -> ureq::Agent {
        ureq::Agent::config_builder()
            .timeout_global(Some(self.timeout))
            .http_status_as_error(true)
            .user_agent(concat!("memtrace/", env!("CARGO_PKG_VERSION")))
            .build()
            .into()
    }

    /// Pushes one gzipped heap profile (see [`super::pprof`]) taken over `[from, until]` (Unix
    /// seconds).
    pub fn push(&self, profile: &[u8], from: u64, until: u64) -> Result<(), PushError> {
        self.push_with(&self.agent(), profile, from, until)
    }

    /// [`Self::push`] through a given client (TLS settings, proxies).
    pub fn push_with(
        &self,
        agent: &ureq::Agent,
        profile: &[u8],
        from: u64,
        until: u64,
    ) -> Result<(), PushError> {
        if profile.is_empty() {
            return Err(PushError::Empty);
        }
        let name = self.series_name()?;
        let url = format!("{}/ingest", self.url.trim_end_matches('/'));
        let (content_type, body) = multipart(profile, until);
        let mut request = agent
            .post(&url)
            .query("name", &name)
            .query("from", from.to_string())
            .query("until", until.max(from).to_string())
            .query("format", "pprof")
            .query("spyName", SPY_NAME)
            .header("Content-Type", &content_type);
        if let Some(tenant) = &self.tenant {
            request = request.header("X-Scope-OrgID", tenant);
        }
        request
            .send(&body[..])
            .map(drop)
            .map_err(|source| PushError::Http { url, source })
    }
}

/// The form: `profile` (the gzipped profile) and `sample_type_config` (JSON). Returns the
/// `Content-Type` (with its boundary) and the body.
fn multipart(profile: &[u8], salt: u64) -> (String, Vec<u8>) {
    // A boundary that cannot occur in the parts: the gzip stream is binary, so check.
    let mut n = salt ^ u64::from(std::process::id());
    let boundary = loop {
        let candidate = format!("memtrace-{n:016x}");
        let needle = candidate.as_bytes();
        let in_profile = profile.windows(needle.len()).any(|w| w == needle);
        if !in_profile {
            break candidate;
        }
        n = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    };
    let mut body = Vec::with_capacity(profile.len() + SAMPLE_TYPE_CONFIG.len() + 512);
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"profile\"; \
             filename=\"profile.pprof\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(profile);
    body.extend_from_slice(
        format!(
            "\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"sample_type_config\"; \
             filename=\"sample_type_config.json\"\r\nContent-Type: application/json\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(SAMPLE_TYPE_CONFIG.as_bytes());
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead, BufReader, Read, Write},
        net::TcpListener,
        sync::mpsc,
    };

    use super::*;
    use crate::{
        accounting::SiteClass,
        attribution::{symbols::Frame, ConsumerReport, SiteLive},
        reports::{pprof, proto},
    };

    fn target(url: String) -> PyroscopeTarget {
        PyroscopeTarget {
            url,
            app_name: "memtrace.heap".into(),
            labels: vec![
                ("pid".into(), "42".into()),
                ("comm".into(), "my,app{x}".into()),
            ],
            tenant: Some("team-a".into()),
            timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn series_names_are_checked_and_values_made_safe() {
        let t = target(String::new());
        assert_eq!(
            t.series_name().expect("valid"),
            "memtrace.heap{pid=42,comm=my_app_x_}"
        );
        let bad = PyroscopeTarget {
            app_name: "my app".into(),
            ..t.clone()
        };
        assert!(matches!(bad.series_name(), Err(PushError::AppName(_))));
        let bad = PyroscopeTarget {
            labels: vec![("1pid".into(), "x".into())],
            ..t
        };
        assert!(matches!(bad.series_name(), Err(PushError::LabelName(_))));
    }

    /// A request as the receiver saw it.
    struct Received {
        request_line: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    /// A one-request HTTP receiver answering `status`.
    fn receiver(status: &'static str) -> (String, mpsc::Receiver<Received>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut request_line = String::new();
            reader.read_line(&mut request_line).expect("request line");
            let mut headers = Vec::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).expect("header");
                if line.trim().is_empty() {
                    break;
                }
                let (name, value) = line.split_once(':').expect("a header");
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
            }
            let length: usize = headers
                .iter()
                .find(|(n, _)| n == "content-length")
                .map(|(_, v)| v.parse().expect("length"))
                .expect("content-length");
            let mut body = vec![0; length];
            reader.read_exact(&mut body).expect("body");
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = tx.send(Received {
                request_line,
                headers,
                body,
            });
        });
        (url, rx)
    }

    /// Splits a multipart body into (headers, content) parts.
    fn parts(body: &[u8], boundary: &str) -> Vec<(String, Vec<u8>)> {
        let delimiter = format!("--{boundary}");
        let mut out = Vec::new();
        let mut rest = body;
        let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
        rest =
            &rest[find(rest, delimiter.as_bytes()).expect("first delimiter") + delimiter.len()..];
        while !rest.starts_with(b"--") {
            rest = rest
                .strip_prefix(b"\r\n")
                .expect("CRLF after the delimiter");
            let head_end = find(rest, b"\r\n\r\n").expect("part headers");
            let head = String::from_utf8_lossy(&rest[..head_end]).into_owned();
            rest = &rest[head_end + 4..];
            let end = find(rest, format!("\r\n{delimiter}").as_bytes()).expect("part end");
            out.push((head, rest[..end].to_vec()));
            rest = &rest[end + 2 + delimiter.len()..];
        }
        out
    }

    fn percent_decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'%' => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("hex");
                    out.push(u8::from_str_radix(hex, 16).expect("hex"));
                    i += 3;
                }
                b'+' => {
                    out.push(b' ');
                    i += 1;
                }
                b => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        String::from_utf8(out).expect("utf-8")
    }

    fn report() -> ConsumerReport {
        ConsumerReport {
            pid: 42,
            comm: "app".into(),
            sites: vec![SiteLive {
                kind: SiteClass::Malloc,
                frames: vec![Frame {
                    function: Some("leak_one".into()),
                    module: "app".into(),
                    ..Frame::default()
                }],
                live_bytes: 4096,
                live_count: 2,
                attributed: 0,
                consumer: "leak_one".into(),
                total_calls: 3,
                total_bytes: 5000,
                allocator_internal: false,
            }],
            ..ConsumerReport::default()
        }
    }

    #[test]
    fn push_sends_the_ingest_request_pyroscope_reads() {
        let (url, rx) = receiver("200 OK");
        let profile = pprof(&report(), 1_700_000_000_000_000_000).expect("profile");
        target(url)
            .push(&profile, 1_700_000_000, 1_700_000_010)
            .expect("pushed");
        let got = rx.recv_timeout(Duration::from_secs(10)).expect("a request");

        let (method, rest) = got.request_line.split_once(' ').expect("method");
        assert_eq!(method, "POST");
        let target_path = rest.split_once(' ').expect("path").0;
        let (path, query) = target_path.split_once('?').expect("a query");
        assert_eq!(path, "/ingest");
        let query: Vec<(String, String)> = query
            .split('&')
            .map(|pair| {
                let (k, v) = pair.split_once('=').expect("k=v");
                (percent_decode(k), percent_decode(v))
            })
            .collect();
        let get = |key: &str| {
            query
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
                .unwrap_or_else(|| panic!("{key} missing from {query:?}"))
        };
        assert_eq!(get("name"), "memtrace.heap{pid=42,comm=my_app_x_}");
        assert_eq!(get("from"), "1700000000");
        assert_eq!(get("until"), "1700000010");
        assert_eq!(get("format"), "pprof");
        assert_eq!(get("spyName"), "memtrace");
        let header = |name: &str| {
            got.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("no {name} header"))
        };
        assert_eq!(header("x-scope-orgid"), "team-a");
        let content_type = header("content-type");
        let boundary = content_type
            .strip_prefix("multipart/form-data; boundary=")
            .expect("multipart");

        let parts = parts(&got.body, boundary);
        assert_eq!(parts.len(), 2);
        assert!(parts[0].0.contains("name=\"profile\""), "{}", parts[0].0);
        assert_eq!(parts[0].1, profile, "the profile arrives byte for byte");
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&parts[0].1[..])
            .read_to_end(&mut raw)
            .expect("gzip");
        let decoded = proto::Profile::decode(&raw[..]).expect("profile.proto");
        assert_eq!(decoded.sample.len(), 1);
        assert_eq!(decoded.sample[0].value, vec![3, 5000, 2, 4096]);
        assert!(parts[1].0.contains("name=\"sample_type_config\""));
        let config: serde_json::Value = serde_json::from_slice(&parts[1].1).expect("json");
        assert_eq!(config["inuse_space"]["units"], "bytes");
        assert_eq!(config["inuse_objects"]["units"], "objects");
        assert_eq!(config.as_object().map(|o| o.len()), Some(2));
    }

    #[test]
    fn push_reports_an_error_answer() {
        let (url, _rx) = receiver("500 Internal Server Error");
        let profile = pprof(&report(), 1).expect("profile");
        let err = target(url.clone()).push(&profile, 1, 2).expect_err("500");
        match err {
            PushError::Http { url: u, source } => {
                assert_eq!(u, format!("{url}/ingest"));
                assert!(matches!(source, ureq::Error::StatusCode(500)), "{source}");
            }
            other => panic!("{other}"),
        }
        assert!(matches!(target(url).push(&[], 1, 2), Err(PushError::Empty)));
    }
}
