//! Export configuration: flags that follow the OpenTelemetry exporter variables
//! (`OTEL_EXPORTER_OTLP_*`, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_SDK_DISABLED`)
//! and the original's `--jaeger-endpoint` / `TRACER_JEAGER_ENDPOINT`. Everything is checked at
//! start-up, so a bad value is a usage error (exit 64), never a failure at the first export.

use std::{path::PathBuf, time::Duration};

use axum::http::Uri;
use clap::Args;

/// OTLP export flags.
#[derive(Debug, Clone, Default, Args)]
pub struct ExportArgs {
    /// OTLP endpoint for every signal: `http[s]://HOST:PORT` (gRPC) or the base URL to which
    /// `v1/traces` and `v1/logs` are appended (HTTP/protobuf). No endpoint: no export.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// OTLP endpoint for spans only, used as is (overrides `--otlp-endpoint` for spans).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")]
    pub otlp_traces_endpoint: Option<String>,

    /// OTLP endpoint for log records only, used as is (overrides `--otlp-endpoint` for logs).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT")]
    pub otlp_logs_endpoint: Option<String>,

    /// `grpc` or `http/protobuf`. Unset: `grpc` when the endpoint's port is 4317, else
    /// `http/protobuf` (the OpenTelemetry default).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_PROTOCOL")]
    pub otlp_protocol: Option<String>,

    /// Extra request headers (gRPC metadata), `key=value,key2=value2`, values URL-encoded.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_HEADERS")]
    pub otlp_headers: Option<String>,

    /// Time limit of each export request, in milliseconds.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TIMEOUT", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub otlp_timeout: u64,

    /// `none` or `gzip`.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_COMPRESSION")]
    pub otlp_compression: Option<String>,

    /// PEM file of the certificate authorities trusted for an `https` endpoint, in addition to
    /// the system's.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_CERTIFICATE")]
    pub otlp_certificate: Option<PathBuf>,

    /// The original's Jaeger collector address (e.g. `http://jaeger-collector:14268/api/traces`):
    /// mapped to the OTLP receiver of the same host (gRPC, port 4317), with kernel events as span
    /// events since Jaeger stores no logs. `--otlp-endpoint` wins when both are set.
    #[arg(long, env = "TRACER_JEAGER_ENDPOINT")]
    pub jaeger_endpoint: Option<String>,

    /// How kernel events are exported: `logs` (OTel log records tied to the container's span) or
    /// `span-events` (events of chunk spans under the container's span, for trace-only backends
    /// such as Jaeger). Default: `logs`, `span-events` with `--jaeger-endpoint`.
    #[arg(long, env = "TRACER_OTLP_EVENTS")]
    pub otlp_events: Option<String>,

    /// Events a session may hold waiting for export; beyond it new events are dropped (and
    /// counted) instead of slowing the kernel reader or growing memory.
    #[arg(long, env = "TRACER_OTLP_QUEUE_EVENTS", default_value_t = 262_144,
          value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub otlp_queue_events: u64,

    /// Most events in one export request (a request is also kept under 3 MiB).
    #[arg(long, env = "TRACER_OTLP_BATCH_EVENTS", default_value_t = 8192,
          value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub otlp_batch_events: u64,

    /// `service.name` of the node's own resource (the session spans).
    #[arg(long, env = "OTEL_SERVICE_NAME", default_value = "container-tracer")]
    pub otel_service_name: String,

    /// Extra resource attributes, `key=value,...` (values URL-encoded), on every resource.
    #[arg(long, env = "OTEL_RESOURCE_ATTRIBUTES")]
    pub otel_resource_attributes: Option<String>,

    /// `true` turns export off whatever the endpoints say.
    #[arg(long, env = "OTEL_SDK_DISABLED", default_value_t = false, action = clap::ArgAction::Set)]
    pub otel_sdk_disabled: bool,
}

/// An unusable export setting.
#[derive(Debug, thiserror::Error)]
pub enum ExportConfigError {
    /// An endpoint is not an http(s) URL with a host.
    #[error("{flag} {value:?} is not an http:// or https:// URL with a host")]
    Endpoint {
        /// The flag.
        flag: &'static str,
        /// Its value.
        value: String,
    },
    /// Unknown protocol.
    #[error("--otlp-protocol {0:?} is not supported (grpc or http/protobuf)")]
    Protocol(String),
    /// Unknown compression.
    #[error("--otlp-compression {0:?} is not supported (none or gzip)")]
    Compression(String),
    /// Unknown event mode.
    #[error("--otlp-events {0:?} is not supported (logs or span-events)")]
    Events(String),
    /// A `key=value` list is malformed.
    #[error("{flag}: {reason}")]
    KeyValues {
        /// The flag.
        flag: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The CA file is unreadable or holds no certificate.
    #[error("--otlp-certificate {path:?}: {reason}")]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP with protobuf bodies.
    HttpProtobuf,
}

/// How kernel events travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventsAs {
    /// OTel log records.
    Logs,
    /// Events of chunk spans.
    SpanEvents,
}

/// A checked export configuration.
#[derive(Debug, Clone)]
pub struct ExportConfig {
    /// Protocol.
    pub protocol: Protocol,
    /// Where spans go (gRPC: the server; HTTP: the full URL).
    pub traces_endpoint: Uri,
    /// Where log records go.
    pub logs_endpoint: Uri,
    /// Extra headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// Per-request time limit.
    pub timeout: Duration,
    /// gzip the requests.
    pub gzip: bool,
    /// Extra trusted CAs, PEM.
    pub ca_pem: Option<Vec<u8>>,
    /// Event mode.
    pub events_as: EventsAs,
    /// Queue bound per session, in events.
    pub queue_events: u64,
    /// Events per request.
    pub batch_events: usize,
    /// `service.name` of the node resource.
    pub service_name: String,
    /// Extra resource attributes.
    pub resource: Vec<(String, String)>,
}

fn parse_url(flag: &'static str, value: &str) -> Result<Uri, ExportConfigError> {
    let bad = || ExportConfigError::Endpoint { flag, value: value.chars().take(256).collect() };
    let uri: Uri = value.trim().parse().map_err(|_| bad())?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(h)) if !h.is_empty() => Ok(uri),
        _ => Err(bad()),
    }
}

/// Joins the base endpoint and a signal path the way the OTLP spec says (one `/` between).
fn signal_url(base: &Uri, path: &str) -> Uri {
    let s = base.to_string();
    let joined = format!("{}/{path}", s.trim_end_matches('/'));
    joined.parse().unwrap_or_else(|_| base.clone())
}

/// Percent-decodes a header or attribute value.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Parses the W3C-baggage-like `key=value,...` lists of the OTel variables.
pub fn parse_key_values(flag: &'static str, s: &str) -> Result<Vec<(String, String)>, ExportConfigError> {
    let bad = |reason: String| ExportConfigError::KeyValues { flag, reason };
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (k, v) = item.split_once('=').ok_or_else(|| bad(format!("{item:?} is not key=value")))?;
        let k = k.trim();
        if k.is_empty() || !k.bytes().all(|c| c.is_ascii_graphic()) {
            return Err(bad(format!("key {k:?} must be printable ASCII")));
        }
        let v = percent_decode(v.trim()).ok_or_else(|| bad(format!("value of {k:?} is badly URL-encoded")))?;
        out.push((k.to_owned(), v));
    }
    Ok(out)
}

/// The OTLP receiver behind an old Jaeger collector address: same scheme and host, gRPC on
/// 4317, unless the address already names an OTLP port.
fn jaeger_to_otlp(value: &str) -> Result<(Uri, Protocol), ExportConfigError> {
    let flag = "--jaeger-endpoint";
    // The original took bare `host:port` as well as URLs.
    let with_scheme = if value.contains("://") { value.to_owned() } else { format!("http://{value}") };
    let uri = parse_url(flag, &with_scheme)?;
    let host = uri.host().unwrap_or_default();
    let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_owned() };
    let scheme = uri.scheme_str().unwrap_or("http");
    let (port, protocol) = match uri.port_u16() {
        Some(4318) => (4318, Protocol::HttpProtobuf),
        _ => (4317, Protocol::Grpc),
    };
    let uri = format!("{scheme}://{host}:{port}")
        .parse()
        .map_err(|_| ExportConfigError::Endpoint { flag, value: value.chars().take(256).collect() })?;
    Ok((uri, protocol))
}

impl ExportArgs {
    /// The export configuration, `None` when export is off.
    pub fn resolve(&self) -> Result<Option<ExportConfig>, ExportConfigError> {
        let set = |o: &Option<String>| o.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned);
        let (otlp, traces, logs, jaeger) = (
            set(&self.otlp_endpoint),
            set(&self.otlp_traces_endpoint),
            set(&self.otlp_logs_endpoint),
            set(&self.jaeger_endpoint),
        );
        let protocol = match set(&self.otlp_protocol).as_deref() {
            None => None,
            Some("grpc") => Some(Protocol::Grpc),
            Some("http/protobuf") => Some(Protocol::HttpProtobuf),
            Some(other) => return Err(ExportConfigError::Protocol(other.to_owned())),
        };
        let gzip = match set(&self.otlp_compression).as_deref() {
            None | Some("none") => false,
            Some("gzip") => true,
            Some(other) => return Err(ExportConfigError::Compression(other.to_owned())),
        };
        let events = match set(&self.otlp_events).as_deref() {
            None => None,
            Some("logs") => Some(EventsAs::Logs),
            Some("span-events") => Some(EventsAs::SpanEvents),
            Some(other) => return Err(ExportConfigError::Events(other.to_owned())),
        };
        let headers: Vec<(String, String)> =
            parse_key_values("--otlp-headers", self.otlp_headers.as_deref().unwrap_or(""))?
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect();
        for (k, v) in &headers {
            if axum::http::HeaderName::from_bytes(k.as_bytes()).is_err()
                || axum::http::HeaderValue::from_str(v).is_err()
            {
                return Err(ExportConfigError::KeyValues {
                    flag: "--otlp-headers",
                    reason: format!("{k:?} is not a valid header"),
                });
            }
        }
        let resource =
            parse_key_values("OTEL_RESOURCE_ATTRIBUTES", self.otel_resource_attributes.as_deref().unwrap_or(""))?;
        let ca_pem = match &self.otlp_certificate {
            None => None,
            Some(path) => {
                let bad = |reason: String| ExportConfigError::Certificate { path: path.clone(), reason };
                let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
                let n = tracer_tls::pem_certificates(&pem).len();
                if n == 0 {
                    return Err(bad("no PEM certificate in the file".into()));
                }
                Some(pem)
            }
        };
        if self.otel_sdk_disabled || (otlp.is_none() && traces.is_none() && logs.is_none() && jaeger.is_none()) {
            return Ok(None);
        }

        let (base, base_protocol, from_jaeger) = match (&otlp, &jaeger) {
            (Some(o), _) => (Some(parse_url("--otlp-endpoint", o)?), None, false),
            (None, Some(j)) if traces.is_none() && logs.is_none() => {
                let (uri, p) = jaeger_to_otlp(j)?;
                (Some(uri), Some(p), true)
            }
            _ => (None, None, false),
        };
        let traces = traces.map(|t| parse_url("--otlp-traces-endpoint", &t)).transpose()?;
        let logs = logs.map(|l| parse_url("--otlp-logs-endpoint", &l)).transpose()?;
        let port = base.as_ref().or(traces.as_ref()).or(logs.as_ref()).and_then(Uri::port_u16);
        let protocol = protocol.or(base_protocol).unwrap_or(if port == Some(4317) {
            Protocol::Grpc
        } else {
            Protocol::HttpProtobuf
        });
        let for_signal = |explicit: Option<Uri>, path: &str, flag: &'static str| -> Result<Uri, ExportConfigError> {
            match (explicit, &base) {
                (Some(u), _) => Ok(u),
                (None, Some(b)) if protocol == Protocol::HttpProtobuf => Ok(signal_url(b, path)),
                (None, Some(b)) => Ok(b.clone()),
                (None, None) => Err(ExportConfigError::Endpoint { flag, value: String::new() }),
            }
        };
        let traces_endpoint = for_signal(traces, "v1/traces", "--otlp-traces-endpoint")?;
        let logs_endpoint = for_signal(logs, "v1/logs", "--otlp-logs-endpoint")?;
        Ok(Some(ExportConfig {
            protocol,
            traces_endpoint,
            logs_endpoint,
            headers,
            timeout: Duration::from_millis(self.otlp_timeout),
            gzip,
            ca_pem,
            events_as: events.unwrap_or(if from_jaeger { EventsAs::SpanEvents } else { EventsAs::Logs }),
            queue_events: self.otlp_queue_events,
            batch_events: usize::try_from(self.otlp_batch_events).unwrap_or(8192),
            service_name: self.otel_service_name.clone(),
            resource,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ExportArgs {
        ExportArgs {
            otlp_timeout: 10_000,
            otlp_queue_events: 1000,
            otlp_batch_events: 100,
            otel_service_name: "container-tracer".into(),
            ..ExportArgs::default()
        }
    }

    #[test]
    fn no_endpoint_means_no_export() {
        assert!(args().resolve().expect("valid").is_none());
        let a = ExportArgs { otlp_endpoint: Some("http://c:4317".into()), otel_sdk_disabled: true, ..args() };
        assert!(a.resolve().expect("valid").is_none());
    }

    #[test]
    fn http_base_endpoint_gets_signal_paths_and_grpc_is_inferred_from_4317() {
        let a = ExportArgs { otlp_endpoint: Some("http://collector:4318/base/".into()), ..args() };
        let c = a.resolve().expect("valid").expect("on");
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
        assert_eq!(c.traces_endpoint.to_string(), "http://collector:4318/base/v1/traces");
        assert_eq!(c.logs_endpoint.to_string(), "http://collector:4318/base/v1/logs");
        let a = ExportArgs { otlp_endpoint: Some("http://collector:4317".into()), ..args() };
        let c = a.resolve().expect("valid").expect("on");
        assert_eq!(c.protocol, Protocol::Grpc);
        assert_eq!(c.logs_endpoint.to_string(), "http://collector:4317/");
        let a = ExportArgs {
            otlp_endpoint: Some("http://collector:4318".into()),
            otlp_logs_endpoint: Some("https://logs.example/x".into()),
            ..args()
        };
        let c = a.resolve().expect("valid").expect("on");
        assert_eq!(c.logs_endpoint.to_string(), "https://logs.example/x");
    }

    #[test]
    fn jaeger_endpoint_maps_to_its_otlp_grpc_receiver_with_span_events() {
        let a = ExportArgs { jaeger_endpoint: Some("http://jaeger-collector:14268/api/traces".into()), ..args() };
        let c = a.resolve().expect("valid").expect("on");
        assert_eq!((c.protocol, c.events_as), (Protocol::Grpc, EventsAs::SpanEvents));
        assert_eq!(c.traces_endpoint.to_string(), "http://jaeger-collector:4317/");
        let a = ExportArgs { jaeger_endpoint: Some("jaeger:4318".into()), ..args() };
        let c = a.resolve().expect("valid").expect("on");
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
        assert_eq!(c.traces_endpoint.to_string(), "http://jaeger:4318/v1/traces");
    }

    #[test]
    fn bad_values_are_refused_with_the_flag_named() {
        for (a, needle) in [
            (ExportArgs { otlp_endpoint: Some("collector:4317".into()), ..args() }, "--otlp-endpoint"),
            (ExportArgs { otlp_endpoint: Some("ftp://c".into()), ..args() }, "--otlp-endpoint"),
            (ExportArgs { otlp_protocol: Some("http/json".into()), ..args() }, "--otlp-protocol"),
            (ExportArgs { otlp_compression: Some("zstd".into()), ..args() }, "--otlp-compression"),
            (ExportArgs { otlp_headers: Some("novalue".into()), ..args() }, "--otlp-headers"),
            (ExportArgs { otlp_headers: Some("a=%zz".into()), ..args() }, "--otlp-headers"),
            (ExportArgs { otlp_certificate: Some("/nonexistent.pem".into()), ..args() }, "--otlp-certificate"),
        ] {
            let e = a.resolve().expect_err("refused").to_string();
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn headers_and_attributes_are_url_decoded() {
        let kv = parse_key_values("x", "Authorization=Basic%20abc, k=v=w").expect("valid");
        assert_eq!(kv, vec![("Authorization".into(), "Basic abc".into()), ("k".into(), "v=w".into())]);
    }
}
