//! Reads the YAML into [`Config`] and reports every type error, not just the first
//! one serde stops at: after each error the offending field is cut out of the
//! document (so its default applies) and the rest is read again. Sequence items are
//! never removed, only emptied, so every later path still names the right item.

use serde_yaml::Value;

use super::{Config, Problem, TOP_LEVEL_KEYS};
use crate::yaml_lines::{self, Index};

/// More type errors than this in one file are not worth listing one by one.
const MAX_TYPE_ERRORS: usize = 100;

/// What reading the document found.
pub(super) struct Collected {
    /// None when the document is not YAML at all, or nothing could be salvaged.
    pub config: Option<Config>,
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
    /// Fields cut out after a type error: later checks of these are noise.
    pub cut: Vec<String>,
}

pub(super) fn deserialize_all(text: &str, index: &Index) -> Collected {
    let mut collected = Collected {
        config: None,
        errors: Vec::new(),
        warnings: Vec::new(),
        cut: Vec::new(),
    };
    let mut doc: Option<Value> = None;
    let mut current = text.to_owned();
    let mut emptied: Vec<String> = Vec::new();
    let mut unknown: Vec<String> = Vec::new();
    while collected.errors.len() < MAX_TYPE_ERRORS {
        let deserializer = serde_yaml::Deserializer::from_str(&current);
        let result: Result<Config, _> = serde_ignored::deserialize(deserializer, |path| {
            let path = field_path(&path);
            if !unknown.contains(&path) {
                unknown.push(path);
            }
        });
        let error = match result {
            Ok(config) => {
                collected.config = Some(config);
                break;
            }
            Err(e) => e,
        };
        let value = match &mut doc {
            Some(value) => value,
            None => match serde_yaml::from_str::<Value>(text) {
                Ok(value) => doc.insert(value),
                // Not YAML: the parser's one error is all there is to say.
                Err(_) => {
                    collected.errors.push(syntax_problem(&error));
                    break;
                }
            },
        };
        let (field, reason) = split_message(&error);
        let line = yaml_lines::line_of(&index.lines, &field).or_else(|| {
            error
                .location()
                .map(|l| l.line())
                .filter(|_| current == text)
        });
        // "tenants[0]: missing field `name`" is about the field, not its parent.
        let problem = match reason.strip_prefix("missing field `") {
            Some(rest) => Problem {
                field: format!("{field}.{}", rest.trim_end_matches('`')),
                line,
                reason: "required".into(),
            },
            None => Problem {
                field: field.clone(),
                line,
                reason,
            },
        };
        collected.errors.push(problem);
        match cut(value, &field, &mut emptied) {
            Some(cut_path) => collected.cut.push(cut_path),
            None => break,
        }
        current = match serde_yaml::to_string(value) {
            Ok(text) => text,
            Err(_) => break,
        };
    }
    for path in unknown {
        let line = yaml_lines::line_of(&index.lines, &path);
        let top_level = !path.contains(['.', '[']);
        if path.is_empty() {
            // A bare `?` (or `: value`): a key with no name to show or to match.
            collected.errors.push(Problem {
                field: "(key with no name)".to_owned(),
                line,
                reason: format!(
                    "a top-level key with no name; known: {}",
                    TOP_LEVEL_KEYS.join(", ")
                ),
            });
        } else if top_level {
            let hint = TOP_LEVEL_KEYS
                .iter()
                .find(|known| known.starts_with(path.as_str()) || path.starts_with(*known))
                .map(|known| format!(" (did you mean {known}?)"))
                .unwrap_or_default();
            collected.errors.push(Problem {
                field: path,
                line,
                reason: format!(
                    "unknown top-level key{hint}; known: {}",
                    TOP_LEVEL_KEYS.join(", ")
                ),
            });
        } else {
            let reason = super::seed::unknown_field_reason(&path);
            collected.warnings.push(Problem {
                field: path,
                line,
                reason,
            });
        }
    }
    collected
}

/// serde_yaml's messages start with the field path ("tenants[0].weight: invalid type …").
fn split_message(e: &serde_yaml::Error) -> (String, String) {
    let message = e.to_string();
    let message = message
        .split(" at line ")
        .next()
        .unwrap_or(&message)
        .to_owned();
    match message.split_once(": ") {
        Some((field, reason)) if !field.contains(' ') => (field.to_owned(), reason.to_owned()),
        _ => ("(document)".to_owned(), message),
    }
}

pub(super) fn syntax_problem(e: &serde_yaml::Error) -> Problem {
    let (field, reason) = split_message(e);
    Problem {
        field,
        line: e.location().map(|l| l.line()),
        reason,
    }
}

/// `tenants.0.colour` (serde_ignored's form) as `tenants[0].colour`.
fn field_path(path: &serde_ignored::Path) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        Path::Map { parent, key } => {
            let parent = field_path(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => field_path(parent),
    }
}

enum Segment {
    Key(String),
    Item(usize),
}

fn segments(path: &str) -> Vec<Segment> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut items) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Segment::Key(key.to_owned()));
        }
        while let Some(rest) = items.strip_prefix('[') {
            let Some((n, after)) = rest.split_once(']') else {
                break;
            };
            if let Ok(n) = n.parse() {
                out.push(Segment::Item(n));
            }
            items = after;
        }
    }
    out
}

/// Cuts what made `path` fail: a sequence item is emptied the first time (`{}`, so its
/// siblings keep their indices), otherwise the nearest mapping key at or above `path`
/// is removed. Returns the path cut, or None when nothing could be.
fn cut(doc: &mut Value, path: &str, emptied: &mut Vec<String>) -> Option<String> {
    let segments = segments(path);
    for depth in (1..=segments.len()).rev() {
        let (parent, last) = (&segments[..depth - 1], &segments[depth - 1]);
        let here = render(&segments[..depth]);
        let Some(container) = lookup(doc, parent) else {
            continue;
        };
        match (container, last) {
            (Value::Mapping(map), Segment::Key(key)) if map.contains_key(key.as_str()) => {
                map.remove(key.as_str());
                return Some(here);
            }
            (Value::Sequence(items), Segment::Item(i))
                if *i < items.len() && !emptied.contains(&here) =>
            {
                items[*i] = Value::Mapping(Default::default());
                emptied.push(here.clone());
                return Some(here);
            }
            _ => {}
        }
    }
    None
}

fn lookup<'a>(doc: &'a mut Value, path: &[Segment]) -> Option<&'a mut Value> {
    let mut node = doc;
    for segment in path {
        node = match (node, segment) {
            (Value::Mapping(map), Segment::Key(key)) => map.get_mut(key.as_str())?,
            (Value::Sequence(items), Segment::Item(i)) => items.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(node)
}

fn render(path: &[Segment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Key(key) if out.is_empty() => out.push_str(key),
            Segment::Key(key) => {
                out.push('.');
                out.push_str(key);
            }
            Segment::Item(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}
