//! A real tracer-svc process in front of real tracer-nodes (a static `--nodes` list, or
//! discovery through a kubeconfig), and calls to it that keep the missing-nodes header.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{agent, binary, free_port, wait_until};

/// A running tracer-svc, killed on drop.
pub struct Svc {
    /// Its base URL.
    pub url: String,
    /// Its log.
    pub log: tempfile::NamedTempFile,
    child: Child,
}

/// One answer: status, `X-Tracer-Missing-Nodes`, JSON body (null if none), time taken.
#[derive(Debug)]
pub struct Answer {
    /// The status.
    pub status: u16,
    /// The missing nodes, as the header names them.
    pub missing: Vec<String>,
    /// The body.
    pub body: Value,
    /// How long the answer took.
    pub took: Duration,
}

impl Svc {
    /// Starts tracer-svc over the nodes at `urls` with `extra` flags.
    pub fn start(urls: &[&str], extra: &[&str]) -> Result<Self> {
        let mut args: Vec<String> = vec!["--nodes".into(), urls.join(",")];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        Self::spawn(&args, &[])
    }

    /// Starts tracer-svc with `args` and `env` as they are (discovery: no `--nodes`).
    pub fn spawn(args: &[String], env: &[(&str, &str)]) -> Result<Self> {
        let port = free_port()?;
        let log = tempfile::Builder::new().prefix("ct-svc-").suffix(".log").tempfile()?;
        let child = Command::new(binary("tracer-svc"))
            .args(["--address", &format!("127.0.0.1:{port}")])
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info,tracer_svc=debug")
            .env_remove("TRACER_SVC_NODES")
            .stdout(Stdio::null())
            .stderr(log.reopen()?)
            .spawn()
            .context("spawn tracer-svc")?;
        let mut svc = Svc { url: format!("http://127.0.0.1:{port}"), log, child };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(resp) = agent().get(&format!("{}/readyz", svc.url)).call() {
                if resp.status() == 200 {
                    return Ok(svc);
                }
            }
            if let Some(status) = svc.child.try_wait().ok().flatten() {
                bail!("tracer-svc exited with {status}:\n{}", svc.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("tracer-svc not ready within 20 s:\n{}", svc.log_text())
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// `method path` with an optional JSON body.
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> Answer {
        self.call_as(None, method, path, body)
    }

    /// `method path` with a bearer token (when given) and an optional JSON body.
    pub fn call_as(&self, token: Option<&str>, method: &str, path: &str, body: Option<&str>) -> Answer {
        let url = format!("{}{path}", self.url);
        let agent = agent();
        let auth = token.map(|t| format!("Bearer {t}"));
        let with = |r: ureq::RequestBuilder<ureq::typestate::WithoutBody>| match &auth {
            Some(a) => r.header("Authorization", a),
            None => r,
        };
        let with_body = |r: ureq::RequestBuilder<ureq::typestate::WithBody>| match &auth {
            Some(a) => r.header("Authorization", a),
            None => r,
        };
        let started = Instant::now();
        let resp = match (method, body) {
            ("GET", _) => with(agent.get(&url)).call(),
            ("DELETE", _) => with(agent.delete(&url)).call(),
            ("POST", b) => with_body(agent.post(&url)).content_type("application/json").send(b.unwrap_or("")),
            (_, b) => with_body(agent.put(&url)).content_type("application/json").send(b.unwrap_or("")),
        };
        let mut resp = resp.unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.log_text()));
        let status = resp.status().as_u16();
        let missing = missing_of(resp.headers());
        let text = resp.body_mut().with_config().limit(256 * 1024 * 1024).read_to_string().unwrap_or_default();
        Answer { status, missing, body: serde_json::from_str(&text).unwrap_or(Value::Null), took: started.elapsed() }
    }

    /// Creates a session through tracer-svc; answers its id and the answer.
    pub fn create(&self, body: &Value) -> Result<(String, Value)> {
        let a = self.call("POST", "/v1/trace-session", Some(&body.to_string()));
        if a.status != 200 {
            bail!("POST through tracer-svc: {} {}", a.status, a.body);
        }
        let id = a.body.as_object().and_then(|o| o.keys().next().cloned()).context("no id")?;
        let info = a.body[&id].clone();
        Ok((id, info))
    }

    /// Opens `path` (an NDJSON stream) and hands each line to `each` until it answers false or
    /// the stream ends; answers whether the stream ended by itself, the missing nodes and the
    /// time to the answer's headers.
    pub fn stream(
        &self,
        path: &str,
        timeout: Duration,
        mut each: impl FnMut(Value) -> bool,
    ) -> (bool, Vec<String>, Duration) {
        let agent: ureq::Agent =
            ureq::Agent::config_builder().timeout_global(Some(timeout)).http_status_as_error(false).build().into();
        let started = Instant::now();
        let resp = agent.get(&format!("{}{path}", self.url)).call().expect("events");
        let took = started.elapsed();
        assert_eq!(resp.status().as_u16(), 200, "{path}");
        let missing = missing_of(resp.headers());
        let reader = BufReader::new(resp.into_body().into_reader());
        for line in reader.lines() {
            let Ok(line) = line else { return (false, missing, took) };
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not an event line ({e}): {line}"));
            if !each(v) {
                return (false, missing, took);
            }
        }
        (true, missing, took)
    }

    /// Waits until `f` holds for an answer to `GET path` (e.g. a node joined).
    pub fn wait_for(&self, path: &str, timeout: Duration, mut f: impl FnMut(&Answer) -> bool) -> bool {
        wait_until(timeout, || f(&self.call("GET", path, None)))
    }
}

fn missing_of(headers: &ureq::http::HeaderMap) -> Vec<String> {
    headers
        .get("x-tracer-missing-nodes")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(',').map(str::to_owned).collect())
        .unwrap_or_default()
}

impl Drop for Svc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
