//! A blocking client of the admin API. The app calls it from its own threads; the daemon is
//! on loopback, so plain HTTP through `ureq` without a TLS stack is all it needs.

use std::io::{BufRead, BufReader, Read};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::sse::SseParser;
use crate::types::{
    ChangedAnswer, Event, ModelAnswer, ModelList, ModelStatus, ServingAnswer, Settings, SsdCache,
    Status,
};

/// What can go wrong talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing answers at the address (not running, still starting, or gone).
    #[error("daemon not reachable at {url}: {detail}")]
    Unreachable { url: String, detail: String },
    /// The daemon answered with an error (`{"error": {"message", "code", ...}}`).
    #[error("{message} (HTTP {status})")]
    Api {
        status: u16,
        message: String,
        code: Option<String>,
    },
    /// The answer was not what the API documents.
    #[error("unexpected answer from {path}: {detail}")]
    Decode { path: String, detail: String },
    /// The connection broke while reading.
    #[error("connection to the daemon failed: {0}")]
    Transport(String),
}

impl Error {
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Error::Unreachable { .. })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Timeouts of ordinary calls. Loads wait for the model (`POST /models/load`, `/pin`), which
/// can take minutes for a large model, so the per-call limit is generous; connecting to a
/// loopback port either works at once or not at all.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const CALL_TIMEOUT: Duration = Duration::from_secs(600);
/// The event stream sends a keep-alive comment every 15 s: a read that waits much longer
/// means the connection is dead even if the socket has not said so.
const STREAM_READ_TIMEOUT: Duration = Duration::from_secs(45);

#[derive(Clone)]
pub struct Client {
    base: String,
    api_key: Option<String>,
    agent: ureq::Agent,
    stream_agent: ureq::Agent,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("api_key", &self.api_key.as_ref().map(|_| "…"))
            .finish()
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    message: String,
    #[serde(default)]
    code: Option<String>,
}

impl Client {
    /// `base_url`: the daemon's root, e.g. `http://127.0.0.1:8686`.
    pub fn new(base_url: &str, api_key: Option<String>) -> Self {
        let config = |per_call: Option<Duration>, per_read: Option<Duration>| {
            ureq::Agent::config_builder()
                // Error answers carry a JSON body worth reading.
                .http_status_as_error(false)
                .timeout_connect(Some(CONNECT_TIMEOUT))
                .timeout_per_call(per_call)
                .timeout_per_read(per_read)
                .build()
                .new_agent()
        };
        Client {
            base: base_url.trim_end_matches('/').to_string(),
            api_key: api_key.filter(|k| !k.is_empty()),
            agent: config(Some(CALL_TIMEOUT), None),
            stream_agent: config(None, Some(STREAM_READ_TIMEOUT)),
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn authorize<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.api_key {
            Some(key) => req.header("authorization", format!("Bearer {key}")),
            None => req,
        }
    }

    fn transport_error(&self, e: ureq::Error) -> Error {
        match e {
            ureq::Error::Io(_)
            | ureq::Error::ConnectionFailed
            | ureq::Error::HostNotFound
            | ureq::Error::Timeout(_) => Error::Unreachable {
                url: self.base.clone(),
                detail: e.to_string(),
            },
            other => Error::Transport(other.to_string()),
        }
    }

    fn answer<T: DeserializeOwned>(
        &self,
        path: &str,
        res: std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T> {
        let mut res = res.map_err(|e| self.transport_error(e))?;
        let status = res.status().as_u16();
        let text = res
            .body_mut()
            .read_to_string()
            .map_err(|e| Error::Transport(e.to_string()))?;
        if status >= 400 {
            return Err(match serde_json::from_str::<ErrorBody>(&text) {
                Ok(body) => Error::Api {
                    status,
                    message: body.error.message,
                    code: body.error.code,
                },
                Err(_) => Error::Api {
                    status,
                    message: text.chars().take(200).collect(),
                    code: None,
                },
            });
        }
        serde_json::from_str(&text).map_err(|e| Error::Decode {
            path: path.to_string(),
            detail: e.to_string(),
        })
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let req = self.authorize(self.agent.get(self.url(path)));
        self.answer(path, req.call())
    }

    fn post<T: DeserializeOwned>(&self, path: &str, body: Value) -> Result<T> {
        let req = self.authorize(self.agent.post(self.url(path)));
        self.answer(path, req.send_json(body))
    }

    /// `GET /health`: whether the daemon answers at all (needs no API key).
    pub fn health(&self) -> Result<()> {
        let res = self.agent.get(self.url("/health")).call();
        let res = res.map_err(|e| self.transport_error(e))?;
        match res.status().as_u16() {
            200 => Ok(()),
            status => Err(Error::Api {
                status,
                message: "unhealthy".into(),
                code: None,
            }),
        }
    }

    pub fn status(&self) -> Result<Status> {
        self.get("/admin/api/status")
    }

    pub fn models(&self) -> Result<Vec<ModelStatus>> {
        Ok(self.get::<ModelList>("/admin/api/models")?.models)
    }

    pub fn settings(&self) -> Result<Settings> {
        self.get("/admin/api/settings")
    }

    pub fn cache(&self) -> Result<SsdCache> {
        self.get("/admin/api/cache")
    }

    /// Turns the SSD cache on or off; answers its new state. Turning it on when the daemon
    /// has no SSD tier is an `Api` error (409, `ssd_cache_unavailable`).
    pub fn set_cache(&self, enabled: bool) -> Result<SsdCache> {
        let a: ChangedAnswer = self.post("/admin/api/cache", json!({ "enabled": enabled }))?;
        Ok(a.ssd_cache.unwrap_or_default())
    }

    /// Starts or stops serving `/v1`; answers the new state.
    pub fn set_serving(&self, serving: bool) -> Result<bool> {
        let path = if serving {
            "/admin/api/serving/start"
        } else {
            "/admin/api/serving/stop"
        };
        Ok(self.post::<ServingAnswer>(path, json!({}))?.serving)
    }

    /// Asks the daemon to end (as SIGTERM does: running streams get its grace period, then
    /// it exits 0). Answers once the daemon has accepted; it may still be draining.
    pub fn shutdown(&self) -> Result<()> {
        self.post::<serde_json::Value>("/admin/api/shutdown", json!({}))
            .map(drop)
    }

    fn model_action(&self, action: &str, model: &str) -> Result<Option<ModelStatus>> {
        let path = format!("/admin/api/models/{action}");
        Ok(self
            .post::<ModelAnswer>(&path, json!({ "model": model }))?
            .model)
    }

    pub fn set_default(&self, model: &str) -> Result<()> {
        self.post::<Value>("/admin/api/models/default", json!({ "model": model }))
            .map(drop)
    }

    /// Pins a model (which also loads it: waits for the load).
    pub fn pin(&self, model: &str) -> Result<Option<ModelStatus>> {
        self.model_action("pin", model)
    }

    pub fn unpin(&self, model: &str) -> Result<Option<ModelStatus>> {
        self.model_action("unpin", model)
    }

    pub fn load(&self, model: &str) -> Result<Option<ModelStatus>> {
        self.model_action("load", model)
    }

    pub fn unload(&self, model: &str) -> Result<Option<ModelStatus>> {
        self.model_action("unload", model)
    }

    /// Opens the event stream; `since`: replay remembered events after that `seq` first.
    pub fn events(&self, since: Option<u64>) -> Result<EventStream> {
        let path = match since {
            Some(seq) => format!("/admin/api/events?since={seq}"),
            None => "/admin/api/events".to_string(),
        };
        let req = self.authorize(self.stream_agent.get(self.url(&path)));
        let res = req.call().map_err(|e| self.transport_error(e))?;
        if res.status().as_u16() >= 400 {
            // Reuse the error-body handling of ordinary calls.
            return Err(self.answer::<Value>(&path, Ok(res)).unwrap_err());
        }
        Ok(EventStream {
            reader: BufReader::new(Box::new(res.into_body().into_reader())),
            parser: SseParser::new(),
            line: String::new(),
        })
    }
}

/// The live events, one at a time; ends (`None`) when the daemon closes the stream.
/// A frame whose data is not an event is an `Err` item; the stream goes on after it.
pub struct EventStream {
    reader: BufReader<Box<dyn Read + Send>>,
    parser: SseParser,
    line: String,
}

impl Iterator for EventStream {
    type Item = Result<Event>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.line.clear();
            match self.reader.read_line(&mut self.line) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => return Some(Err(Error::Transport(e.to_string()))),
            }
            if let Some(frame) = self.parser.push_line(&self.line) {
                // A frame that is not an event is reported, and the stream goes on.
                return Some(serde_json::from_str::<Event>(&frame.data).map_err(|e| {
                    Error::Decode {
                        path: "/admin/api/events".into(),
                        detail: format!("{e}: {}", frame.data),
                    }
                }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_refused_is_unreachable() {
        // A port nothing listens on: bind one, then drop it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = Client::new(&format!("http://127.0.0.1:{port}/"), None);
        assert_eq!(c.base_url(), format!("http://127.0.0.1:{port}"));
        let e = c.status().unwrap_err();
        assert!(e.is_unreachable(), "{e:?}");
        assert!(c.events(None).is_err());
    }

    #[test]
    fn debug_output_hides_the_key() {
        let c = Client::new("http://127.0.0.1:1", Some("sekrit".into()));
        assert!(!format!("{c:?}").contains("sekrit"));
    }
}
