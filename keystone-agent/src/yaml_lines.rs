//! Maps each field path of a YAML document (`tenants[0].services[1].weight`) to
//! the line it is on, and each scalar to its text as written, so config problems
//! found after parsing can name their line and quote the value.

use std::collections::HashMap;

use yaml_rust2::{
    parser::{Event, MarkedEventReceiver, Parser},
    scanner::Marker,
};

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

#[derive(Default)]
struct Indexer {
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
    written: HashMap<String, String>,
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

impl Indexer {
    /// Path of the node that starts now, recording its line; advances the parent.
    fn child_path(&mut self, line: usize) -> Option<String> {
        let path = match self.stack.last_mut()? {
            Frame::Map { path, key } => join(path, &key.take()?),
            Frame::Seq { path, index } => {
                *index += 1;
                format!("{path}[{}]", *index - 1)
            }
        };
        self.lines.entry(path.clone()).or_insert(line);
        Some(path)
    }
}

impl MarkedEventReceiver for Indexer {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(value, ..) => {
                if let Some(Frame::Map { path, key }) = self.stack.last_mut()
                    && key.is_none()
                {
                    self.lines.insert(join(path, &value), mark.line());
                    *key = Some(value);
                } else if let Some(path) = self.child_path(mark.line()) {
                    self.written.insert(path, value);
                }
            }
            Event::Alias(_) => {
                self.child_path(mark.line());
            }
            Event::MappingStart(..) => {
                let path = self.child_path(mark.line()).unwrap_or_default();
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.child_path(mark.line()).unwrap_or_default();
                self.stack.push(Frame::Seq { path, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

/// Line numbers (1-based) by field path. Empty if the text is not valid YAML
/// (the YAML parser's own error names the line then).
pub fn index(text: &str) -> HashMap<String, usize> {
    index_all(text).lines
}

/// Lines and scalar texts by field path.
#[derive(Debug, Default)]
pub struct Index {
    pub lines: HashMap<String, usize>,
    /// Each scalar exactly as the file writes it (`0.950`, not `0.95`).
    pub written: HashMap<String, String>,
}

pub fn index_all(text: &str) -> Index {
    let mut indexer = Indexer::default();
    let _ = Parser::new_from_str(text).load(&mut indexer, false);
    Index {
        lines: indexer.lines,
        written: indexer.written,
    }
}

/// The line of `path`, or of its nearest ancestor that has one.
pub fn line_of(lines: &HashMap<String, usize>, path: &str) -> Option<usize> {
    let mut p = path;
    loop {
        if let Some(&line) = lines.get(p) {
            return Some(line);
        }
        let cut = p.rfind(['.', '['])?;
        p = &p[..cut];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_fields() {
        let text = "admin:\n  listen: 127.0.0.1:1\ntenants:\n  - name: a\n    services:\n      - name: x\n        weight: 5\n      - {name: y, weight: 7}\n";
        let lines = index(text);
        assert_eq!(lines["admin.listen"], 2);
        assert_eq!(lines["tenants[0].name"], 4);
        assert_eq!(lines["tenants[0].services[0].weight"], 7);
        assert_eq!(lines["tenants[0].services[1].weight"], 8);
        assert_eq!(line_of(&lines, "tenants[0].services[0].url"), Some(6));
        let written = index_all("a: {rate: 0.950}\nb: [x, 1.0]\n").written;
        assert_eq!(written["a.rate"], "0.950");
        assert_eq!(written["b[1]"], "1.0");
    }
}
