//! The admin events: published to live subscribers and kept for late ones (`?since=`).

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use serde_json::{json, Value};
use tokio::sync::broadcast;

use super::{unix_ms, Registry};

/// Recent admin events kept for clients that connect late (`?since=`).
const EVENT_HISTORY: usize = 512;

impl Registry {
    /// Publishes an admin event `{"type", "seq", "time", ...fields}`.
    pub fn emit(&self, kind: &str, fields: Value) {
        let seq = self.event_seq.fetch_add(1, Ordering::Relaxed) + 1;
        let mut event = json!({"type": kind, "seq": seq, "time": unix_ms(SystemTime::now())});
        if let (Some(obj), Value::Object(extra)) = (event.as_object_mut(), fields) {
            obj.extend(extra);
        }
        tracing::info!(event = %event, "admin event");
        {
            let mut history = self.history.lock().unwrap();
            if history.len() == EVENT_HISTORY {
                history.pop_front();
            }
            history.push_back(event.clone());
        }
        let _ = self.events.send(event);
    }

    /// Publishes an event to live subscribers only, not to the replay history: frequent
    /// numbers (cache statistics) would push the events that matter out of it.
    pub fn emit_live(&self, kind: &str, fields: Value) {
        let seq = self.event_seq.fetch_add(1, Ordering::Relaxed) + 1;
        let mut event = json!({"type": kind, "seq": seq, "time": unix_ms(SystemTime::now())});
        if let (Some(obj), Value::Object(extra)) = (event.as_object_mut(), fields) {
            obj.extend(extra);
        }
        let _ = self.events.send(event);
    }

    /// Live events, and the recent ones with `seq > since` (oldest first).
    pub fn subscribe(&self, since: Option<u64>) -> (Vec<Value>, broadcast::Receiver<Value>) {
        let history = self.history.lock().unwrap();
        let rx = self.events.subscribe();
        let past = match since {
            Some(since) => history
                .iter()
                .filter(|e| e["seq"].as_u64().unwrap_or(0) > since)
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        (past, rx)
    }
}
