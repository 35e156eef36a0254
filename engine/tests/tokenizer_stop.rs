//! StopMatcher behaviour on streamed text.

use wuwei::text::stop::{StopMatcher, StopOutcome};

fn matcher(stops: &[&str]) -> StopMatcher {
    StopMatcher::new(&stops.iter().map(|s| s.to_string()).collect::<Vec<_>>())
}

/// Feeds pieces; returns everything emitted and the stop that matched, if any.
fn run(stops: &[&str], pieces: &[&str]) -> (String, Option<String>) {
    let mut m = matcher(stops);
    let mut out = String::new();
    for piece in pieces {
        match m.push(piece) {
            StopOutcome::Continue { emit } => out.push_str(&emit),
            StopOutcome::Stopped { emit, stop } => {
                out.push_str(&emit);
                return (out, Some(stop));
            }
        }
    }
    out.push_str(&m.flush());
    (out, None)
}

#[test]
fn no_stops_passes_everything_through() {
    let mut m = matcher(&[]);
    assert_eq!(m.push("abc"), StopOutcome::Continue { emit: "abc".into() });
    assert_eq!(m.flush(), "");
}

#[test]
fn stop_inside_one_piece() {
    assert_eq!(
        run(&["END"], &["hello END world"]),
        ("hello ".into(), Some("END".into()))
    );
}

#[test]
fn stop_spanning_pieces_is_held_then_dropped() {
    let mut m = matcher(&["</answer>"]);
    assert_eq!(
        m.push("42 </"),
        StopOutcome::Continue { emit: "42 ".into() }
    );
    assert_eq!(m.push("ans"), StopOutcome::Continue { emit: "".into() });
    assert_eq!(
        m.push("wer> trailing"),
        StopOutcome::Stopped {
            emit: "".into(),
            stop: "</answer>".into()
        }
    );
    assert!(m.is_stopped());
    assert_eq!(m.push("more"), StopOutcome::Continue { emit: "".into() });
}

#[test]
fn false_start_is_released() {
    let mut m = matcher(&["STOP"]);
    assert_eq!(m.push("ST"), StopOutcome::Continue { emit: "".into() });
    assert_eq!(m.push("O"), StopOutcome::Continue { emit: "".into() });
    assert_eq!(
        m.push("X"),
        StopOutcome::Continue {
            emit: "STOX".into()
        }
    );
    assert_eq!(m.flush(), "");
}

#[test]
fn held_text_comes_out_on_flush() {
    assert_eq!(
        run(&["\n\nUser:"], &["Answer.", "\n", "\nUs"]),
        ("Answer.\n\nUs".into(), None)
    );
}

#[test]
fn overlapping_prefixes() {
    // "aab" must still be found after a false start on the first "a".
    assert_eq!(
        run(&["aab"], &["xa", "a", "a", "b", "z"]),
        ("xa".into(), Some("aab".into()))
    );
    // Self-overlapping stop: "abab" inside "ababab".
    assert_eq!(
        run(&["abab"], &["ab", "a", "bab"]),
        ("".into(), Some("abab".into()))
    );
}

#[test]
fn earliest_ending_stop_wins() {
    // Char by char, "bc" completes before "abcd" does.
    assert_eq!(
        run(&["abcd", "bc"], &["xabcd"]),
        ("xa".into(), Some("bc".into()))
    );
    // Same end: the one that starts first (longer) wins.
    assert_eq!(
        run(&["c", "abc"], &["zabc"]),
        ("z".into(), Some("abc".into()))
    );
    // A prefix stop of another: the shorter one completes first.
    assert_eq!(
        run(&["ab", "abc"], &["-a", "bc"]),
        ("-".into(), Some("ab".into()))
    );
}

#[test]
fn result_does_not_depend_on_chunking() {
    let text = "The answer is 7.\n###\nUser: next";
    let stops = ["###", "User:"];
    let whole = run(&stops, &[text]);
    for size in 1..6 {
        let chars: Vec<char> = text.chars().collect();
        let pieces: Vec<String> = chars.chunks(size).map(|c| c.iter().collect()).collect();
        let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
        assert_eq!(run(&stops, &refs), whole, "chunk size {size}");
    }
    assert_eq!(whole, ("The answer is 7.\n".into(), Some("###".into())));
}

#[test]
fn multibyte_stops_and_text() {
    assert_eq!(
        run(&["🦀!"], &["crab ", "🦀", "?"]),
        ("crab 🦀?".into(), None)
    );
    assert_eq!(
        run(&["🦀!"], &["crab ", "🦀", "!"]),
        ("crab ".into(), Some("🦀!".into()))
    );
    assert_eq!(
        run(&["。终"], &["你好。", "终止"]),
        ("你好".into(), Some("。终".into()))
    );
    assert_eq!(run(&["é!"], &["caf", "é", "?"]), ("café?".into(), None));
}

#[test]
fn empty_stop_strings_are_ignored() {
    assert_eq!(run(&["", "x"], &["abc"]), ("abc".into(), None));
}
