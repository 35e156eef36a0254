//! Responses kept in memory for `previous_response_id` and `GET /v1/responses/{id}`: the
//! last [`KEPT_RESPONSES`] stored responses, least recently used first out. Nothing is
//! written to disk; a restart forgets them all.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::core::ChatMessage;

/// How many responses are kept (each with its whole conversation).
pub const KEPT_RESPONSES: usize = 256;

/// One kept response.
#[derive(Debug)]
pub struct Stored {
    /// The response object as it was answered.
    pub response: Value,
    /// Its conversation without instructions: the earlier turns, its input and its answer.
    pub conversation: Vec<ChatMessage>,
}

#[derive(Default)]
struct Inner {
    map: HashMap<String, Arc<Stored>>,
    /// Ids, least recently used first.
    order: VecDeque<String>,
}

pub struct ResponseStore {
    capacity: usize,
    inner: Mutex<Inner>,
}

impl Default for ResponseStore {
    fn default() -> Self {
        Self::with_capacity(KEPT_RESPONSES)
    }
}

impl ResponseStore {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn touch(inner: &mut Inner, id: &str) {
        if let Some(pos) = inner.order.iter().position(|k| k == id) {
            inner.order.remove(pos);
        }
        inner.order.push_back(id.to_string());
    }

    pub fn keep(&self, id: &str, response: Value, conversation: Vec<ChatMessage>) {
        let mut inner = self.inner.lock().unwrap();
        inner.map.insert(
            id.to_string(),
            Arc::new(Stored {
                response,
                conversation,
            }),
        );
        Self::touch(&mut inner, id);
        while inner.order.len() > self.capacity {
            if let Some(old) = inner.order.pop_front() {
                inner.map.remove(&old);
            }
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<Stored>> {
        let mut inner = self.inner.lock().unwrap();
        let found = inner.map.get(id).cloned();
        if found.is_some() {
            Self::touch(&mut inner, id);
        }
        found
    }

    pub fn remove(&self, id: &str) -> bool {
        let mut inner = self.inner.lock().unwrap();
        if inner.map.remove(id).is_none() {
            return false;
        }
        if let Some(pos) = inner.order.iter().position(|k| k == id) {
            inner.order.remove(pos);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_goes_first() {
        let store = ResponseStore::with_capacity(2);
        store.keep("a", Value::Null, Vec::new());
        store.keep("b", Value::Null, Vec::new());
        assert!(store.get("a").is_some());
        store.keep("c", Value::Null, Vec::new());
        assert!(store.get("b").is_none());
        assert!(store.get("a").is_some() && store.get("c").is_some());
        assert!(store.remove("a") && !store.remove("a"));
    }
}
