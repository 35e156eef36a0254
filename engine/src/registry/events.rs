//! The admin events: published to live subscribers and kept for late ones (`?since=`).

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use serde_json::{Map, Value};
use tokio::sync::broadcast;
use wuwei_api::{Event, EventKind};

use super::{unix_ms, Registry};

/// Recent admin events kept for clients that connect late (`?since=`).
const EVENT_HISTORY: usize = 512;

/// An event as it goes on the wire: `{"type", "seq", "time", ...fields}` (`time` left out
/// when `None`: the stream's own `lagged` notice has none).
pub fn event_json(seq: u64, time: Option<u64>, kind: &EventKind) -> Value {
    let mut out = Map::new();
    out.insert("type".into(), kind.name().into());
    out.insert("seq".into(), seq.into());
    if let Some(time) = time {
        out.insert("time".into(), time.into());
    }
    // The kind serialises as `{"type", ...fields}`, its fields in declaration order.
    if let Ok(Value::Object(fields)) = serde_json::to_value(kind) {
        out.extend(fields.into_iter().filter(|(k, _)| k != "type"));
    }
    Value::Object(out)
}

impl Registry {
    fn stamp(&self, kind: EventKind) -> Event {
        Event {
            seq: self.event_seq.fetch_add(1, Ordering::Relaxed) + 1,
            time: unix_ms(SystemTime::now()),
            kind,
        }
    }

    /// Publishes an admin event, and keeps it for late subscribers.
    pub fn emit(&self, kind: EventKind) {
        let event = self.stamp(kind);
        tracing::info!(event = %event_json(event.seq, Some(event.time), &event.kind), "admin event");
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
    pub fn emit_live(&self, kind: EventKind) {
        let _ = self.events.send(self.stamp(kind));
    }

    /// Live events, and the recent ones with `seq > since` (oldest first).
    pub fn subscribe(&self, since: Option<u64>) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let history = self.history.lock().unwrap();
        let rx = self.events.subscribe();
        let past = match since {
            Some(since) => history.iter().filter(|e| e.seq > since).cloned().collect(),
            None => Vec::new(),
        };
        (past, rx)
    }
}
