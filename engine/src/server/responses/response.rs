//! The `response` object and its output items, assembled from a generation's events. One
//! [`Assembler`] serves both ways of answering: it returns the stream's events as it goes
//! (`stream.rs` frames them; a whole answer drops them) and the finished response at the end.

use serde_json::{json, Value};

use super::super::generation::random_id;
use super::request::Echo;
use crate::core::{ChatMessage, FinishReason, Role, ToolCall, Usage};

/// What every rendering of one response shares.
#[derive(Debug, Clone)]
pub struct Head {
    pub id: String,
    pub created_at: u64,
    pub model: String,
    pub echo: Echo,
}

/// The output item being written.
enum Open {
    None,
    Message {
        id: String,
        text: String,
    },
    Reasoning {
        id: String,
        text: String,
    },
    Call {
        id: String,
        call_id: String,
        name: String,
        arguments: String,
    },
}

/// How a response ended, as its `status` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Completed,
    /// `max_output_tokens` or the context ran out.
    Incomplete,
}

pub struct Assembler {
    head: Head,
    /// Finished output items.
    output: Vec<Value>,
    open: Open,
    sequence: u64,
    /// The answer as one assistant message (what a later `previous_response_id` sees).
    text: String,
    reasoning: String,
    calls: Vec<ToolCall>,
}

pub fn usage_json(usage: &Usage) -> Value {
    json!({
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens},
        "output_tokens": usage.completion_tokens,
        // The engine counts output tokens, not which of them were reasoning.
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    })
}

impl Assembler {
    pub fn new(head: Head) -> Self {
        Self {
            head,
            output: Vec::new(),
            open: Open::None,
            sequence: 0,
            text: String::new(),
            reasoning: String::new(),
            calls: Vec::new(),
        }
    }

    /// The namespace of tool `name`, when it was offered from one.
    fn namespace(&self, name: &str) -> Option<String> {
        self.head
            .echo
            .namespaces
            .iter()
            .find(|(tool, _)| tool == name)
            .map(|(_, namespace)| namespace.clone())
    }

    pub fn head(&self) -> &Head {
        &self.head
    }

    /// The `response` object with `status` and the output so far.
    pub fn response(
        &self,
        status: &str,
        usage: Option<&Usage>,
        extra: Option<(&str, Value)>,
    ) -> Value {
        let e = &self.head.echo;
        let mut r = json!({
            "id": self.head.id,
            "object": "response",
            "created_at": self.head.created_at,
            "status": status,
            "background": false,
            "error": Value::Null,
            "incomplete_details": Value::Null,
            "instructions": e.instructions,
            "max_output_tokens": e.max_output_tokens,
            "model": self.head.model,
            "output": self.output,
            "parallel_tool_calls": e.parallel_tool_calls,
            "previous_response_id": e.previous_response_id,
            "reasoning": e.reasoning,
            "store": e.store,
            "temperature": e.temperature,
            "text": e.text,
            "tool_choice": e.tool_choice,
            "tools": e.tools,
            "top_p": e.top_p,
            "truncation": "disabled",
            "usage": usage.map_or(Value::Null, usage_json),
            "metadata": e.metadata,
        });
        if let Some((field, value)) = extra {
            r[field] = value;
        }
        r
    }

    fn event(&mut self, kind: &str, mut body: Value) -> Value {
        body["type"] = Value::String(kind.to_string());
        body["sequence_number"] = Value::from(self.sequence);
        self.sequence += 1;
        body
    }

    fn index(&self) -> usize {
        self.output.len()
    }

    /// `response.created` and `response.in_progress`.
    pub fn opening(&mut self) -> Vec<Value> {
        let r = self.response("in_progress", None, None);
        vec![
            self.event("response.created", json!({"response": r})),
            self.event("response.in_progress", json!({"response": r})),
        ]
    }

    /// Closes the open item: its `.done` events, and the item joins the output.
    fn close(&mut self) -> Vec<Value> {
        let index = self.index();
        let mut events = Vec::new();
        let item = match std::mem::replace(&mut self.open, Open::None) {
            Open::None => return events,
            Open::Message { id, text } => {
                let part =
                    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
                events.push(self.event(
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "text": text, "logprobs": []}),
                ));
                events.push(self.event(
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "part": part}),
                ));
                json!({"id": id, "type": "message", "status": "completed", "role": "assistant", "content": [part]})
            }
            Open::Reasoning { id, text } => {
                let part = json!({"type": "reasoning_text", "text": text});
                events.push(self.event(
                    "response.reasoning_text.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "text": text}),
                ));
                events.push(self.event(
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "part": part}),
                ));
                json!({"id": id, "type": "reasoning", "status": "completed", "summary": [], "content": [part]})
            }
            Open::Call {
                id,
                call_id,
                name,
                arguments,
            } => {
                events.push(self.event(
                    "response.function_call_arguments.done",
                    json!({"item_id": id, "output_index": index, "name": name, "arguments": arguments}),
                ));
                self.calls.push(ToolCall {
                    id: call_id.clone(),
                    name: name.clone(),
                    arguments: arguments.clone(),
                });
                let mut item = json!({"id": id, "type": "function_call", "status": "completed", "call_id": call_id, "name": name, "arguments": arguments});
                if let Some(namespace) = self.namespace(&name) {
                    item["namespace"] = Value::String(namespace);
                }
                item
            }
        };
        events.push(self.event(
            "response.output_item.done",
            json!({"output_index": index, "item": item}),
        ));
        self.output.push(item);
        events
    }

    pub fn on_text(&mut self, delta: &str) -> Vec<Value> {
        let mut events = Vec::new();
        if !matches!(self.open, Open::Message { .. }) {
            events.extend(self.close());
            let id = random_id("msg_");
            let index = self.index();
            events.push(self.event(
                "response.output_item.added",
                json!({"output_index": index, "item": {"id": id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}}),
            ));
            events.push(self.event(
                "response.content_part.added",
                json!({"item_id": id, "output_index": index, "content_index": 0,
                       "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}),
            ));
            self.open = Open::Message {
                id,
                text: String::new(),
            };
        }
        self.text.push_str(delta);
        let index = self.index();
        let Open::Message { id, text } = &mut self.open else {
            unreachable!("a message is open")
        };
        text.push_str(delta);
        let id = id.clone();
        events.push(self.event(
            "response.output_text.delta",
            json!({"item_id": id, "output_index": index, "content_index": 0, "delta": delta, "logprobs": []}),
        ));
        events
    }

    pub fn on_reasoning(&mut self, delta: &str) -> Vec<Value> {
        let mut events = Vec::new();
        if !matches!(self.open, Open::Reasoning { .. }) {
            events.extend(self.close());
            let id = random_id("rs_");
            let index = self.index();
            events.push(self.event(
                "response.output_item.added",
                json!({"output_index": index, "item": {"id": id, "type": "reasoning", "status": "in_progress", "summary": [], "content": []}}),
            ));
            events.push(self.event(
                "response.content_part.added",
                json!({"item_id": id, "output_index": index, "content_index": 0,
                       "part": {"type": "reasoning_text", "text": ""}}),
            ));
            self.open = Open::Reasoning {
                id,
                text: String::new(),
            };
        }
        self.reasoning.push_str(delta);
        let index = self.index();
        let Open::Reasoning { id, text } = &mut self.open else {
            unreachable!("a reasoning item is open")
        };
        text.push_str(delta);
        let id = id.clone();
        events.push(self.event(
            "response.reasoning_text.delta",
            json!({"item_id": id, "output_index": index, "content_index": 0, "delta": delta}),
        ));
        events
    }

    pub fn on_call_start(&mut self, call_id: &str, name: &str) -> Vec<Value> {
        let mut events = self.close();
        let id = random_id("fc_");
        let index = self.index();
        let mut item = json!({"id": id, "type": "function_call", "status": "in_progress",
                              "call_id": call_id, "name": name, "arguments": ""});
        if let Some(namespace) = self.namespace(name) {
            item["namespace"] = Value::String(namespace);
        }
        events.push(self.event(
            "response.output_item.added",
            json!({"output_index": index, "item": item}),
        ));
        self.open = Open::Call {
            id,
            call_id: call_id.to_string(),
            name: name.to_string(),
            arguments: String::new(),
        };
        events
    }

    pub fn on_call_arguments(&mut self, fragment: &str) -> Vec<Value> {
        let index = self.index();
        let Open::Call { id, arguments, .. } = &mut self.open else {
            // Arguments of a call that is not open (the parser never sends them): dropped.
            return Vec::new();
        };
        arguments.push_str(fragment);
        let id = id.clone();
        vec![self.event(
            "response.function_call_arguments.delta",
            json!({"item_id": id, "output_index": index, "delta": fragment}),
        )]
    }

    /// Closes the last item; the final event (`response.completed` or
    /// `response.incomplete`) and the finished response.
    pub fn finish(&mut self, reason: &FinishReason, usage: &Usage) -> (Vec<Value>, Value, Status) {
        let mut events = self.close();
        let (status, extra) = match reason {
            FinishReason::MaxTokens | FinishReason::ContextWindow => (
                Status::Incomplete,
                Some(("incomplete_details", json!({"reason": "max_output_tokens"}))),
            ),
            _ => (Status::Completed, None),
        };
        let (name, event) = match status {
            Status::Completed => ("completed", "response.completed"),
            Status::Incomplete => ("incomplete", "response.incomplete"),
        };
        let mut response = self.response(name, Some(usage), extra);
        if status == Status::Completed {
            response["completed_at"] = Value::from(super::super::generation::unix_now());
        }
        events.push(self.event(event, json!({"response": response})));
        (events, response, status)
    }

    /// `response.failed` with the output so far.
    pub fn fail(&mut self, message: &str) -> Vec<Value> {
        let mut events = self.close();
        let response = self.response(
            "failed",
            None,
            Some(("error", json!({"code": "server_error", "message": message}))),
        );
        events.push(self.event("response.failed", json!({"response": response})));
        events
    }

    /// The answer as the assistant message a continuing response reads.
    pub fn assistant_message(&self) -> ChatMessage {
        ChatMessage {
            role: Some(Role::Assistant),
            content: self.text.clone(),
            reasoning: (!self.reasoning.is_empty()).then(|| self.reasoning.clone()),
            tool_calls: self.calls.clone(),
            ..ChatMessage::default()
        }
    }

    /// Whether the answer has function calls (for the log line).
    pub fn called_tools(&self) -> bool {
        !self.calls.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head() -> Head {
        Head {
            id: "resp_1".into(),
            created_at: 0,
            model: "m".into(),
            echo: Echo {
                instructions: None,
                tools: Vec::new(),
                namespaces: Vec::new(),
                tool_choice: json!("auto"),
                temperature: None,
                top_p: None,
                max_output_tokens: None,
                previous_response_id: None,
                store: true,
                stream: true,
                parallel_tool_calls: true,
                reasoning: Value::Null,
                text: Value::Null,
                metadata: json!({}),
            },
        }
    }

    #[test]
    fn events_follow_the_official_sequence() {
        let mut a = Assembler::new(head());
        let mut events = a.opening();
        events.extend(a.on_reasoning("hmm"));
        events.extend(a.on_text("Hel"));
        events.extend(a.on_text("lo"));
        events.extend(a.on_call_start("call_1", "f"));
        events.extend(a.on_call_arguments("{}"));
        let (last, response, status) = a.finish(&FinishReason::ToolCalls, &Usage::default());
        events.extend(last);
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.reasoning_text.delta",
                "response.reasoning_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        let numbers: Vec<u64> = events
            .iter()
            .map(|e| e["sequence_number"].as_u64().unwrap())
            .collect();
        assert_eq!(numbers, (0..events.len() as u64).collect::<Vec<_>>());
        assert_eq!(status, Status::Completed);
        assert_eq!(response["output"][1]["content"][0]["text"], "Hello");
        assert_eq!(response["output"][2]["call_id"], "call_1");
        let m = a.assistant_message();
        assert_eq!((m.content.as_str(), m.tool_calls.len()), ("Hello", 1));
    }
}
