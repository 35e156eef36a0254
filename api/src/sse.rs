//! A small server-sent-events parser (the subset of the WHATWG rules the daemon's stream
//! needs: `event`, `data`, `id`, comments, multi-line data, CRLF or LF line ends).

/// One dispatched SSE message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseFrame {
    pub event: Option<String>,
    pub id: Option<String>,
    pub data: String,
}

/// Collects lines into frames; a blank line dispatches the frame being built.
#[derive(Debug, Default)]
pub struct SseParser {
    frame: SseFrame,
    has_data: bool,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one line (without or with its line end). Returns a frame when the line ends one.
    pub fn push_line(&mut self, line: &str) -> Option<SseFrame> {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            // Frames without data are not dispatched (keep-alives, a lone `id:`).
            let frame = std::mem::take(&mut self.frame);
            return std::mem::take(&mut self.has_data).then_some(frame);
        }
        if line.starts_with(':') {
            return None; // comment (the daemon's keep-alive)
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.frame.event = Some(value.to_string()),
            "id" => self.frame.id = Some(value.to_string()),
            "data" => {
                if self.has_data {
                    self.frame.data.push('\n');
                }
                self.frame.data.push_str(value);
                self.has_data = true;
            }
            _ => {} // `retry` and unknown fields: ignored
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Vec<SseFrame> {
        let mut p = SseParser::new();
        text.split_inclusive('\n')
            .filter_map(|l| p.push_line(l))
            .collect()
    }

    #[test]
    fn frames_comments_and_multiline_data() {
        let frames = parse(
            ": keep-alive\n\nid: 3\nevent: serving_changed\ndata: {\"serving\":false}\n\n\
             data: a\r\ndata:b\r\n\r\n: tail\n",
        );
        assert_eq!(
            frames,
            [
                SseFrame {
                    event: Some("serving_changed".into()),
                    id: Some("3".into()),
                    data: "{\"serving\":false}".into()
                },
                SseFrame {
                    event: None,
                    id: None,
                    data: "a\nb".into()
                }
            ]
        );
    }

    #[test]
    fn an_unfinished_frame_is_not_dispatched() {
        assert!(parse("event: x\ndata: y\n").is_empty());
    }
}
