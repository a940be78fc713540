//! Maps a config path such as `listeners[0].routes[1].upstream` to the line and column where
//! that value was written, so that errors found after deserialisation (cross-checks) point at
//! the user's text just like parse errors do.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Line and column, both counted from 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub col: usize,
}

#[derive(Default)]
pub struct Locator {
    positions: HashMap<String, Position>,
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

#[derive(Default)]
struct Collector {
    stack: Vec<Frame>,
    positions: HashMap<String, Position>,
}

fn child(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl Collector {
    /// The path of the node that starts now, if it is a value (not a mapping key).
    fn value_path(&mut self) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Map { key: None, .. }) => None,
            Some(Frame::Map { path, key }) => key.take().map(|k| child(path, &k)),
            Some(Frame::Seq { path, index }) => {
                let p = format!("{path}[{index}]");
                *index += 1;
                Some(p)
            }
        }
    }
}

impl MarkedEventReceiver for Collector {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = Position {
            line: mark.line(),
            col: mark.col() + 1,
        };
        match ev {
            Event::Scalar(value, ..) => match self.value_path() {
                Some(p) => {
                    self.positions.insert(p, pos);
                }
                None => {
                    if let Some(Frame::Map { path, key }) = self.stack.last_mut() {
                        // Until the value arrives, the key's own position stands for the field.
                        self.positions.entry(child(path, &value)).or_insert(pos);
                        *key = Some(value);
                    }
                }
            },
            Event::MappingStart(..) => {
                let path = self.value_path().unwrap_or_default();
                self.positions.entry(path.clone()).or_insert(pos);
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.value_path().unwrap_or_default();
                self.positions.entry(path.clone()).or_insert(pos);
                self.stack.push(Frame::Seq { path, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::Alias(_) => {
                self.value_path();
            }
            _ => {}
        }
    }
}

/// A `Locator` built on first use: a valid config needs no positions, and building them parses
/// the text a second time (yaml-rust2's parser, paged in and run for nothing at every start).
pub struct Lazy<'a> {
    src: &'a str,
    built: std::cell::OnceCell<Locator>,
}

impl<'a> Lazy<'a> {
    pub fn new(src: &'a str) -> Self {
        Self {
            src,
            built: std::cell::OnceCell::new(),
        }
    }

    pub fn find(&self, path: &str) -> Option<Position> {
        self.built.get_or_init(|| Locator::new(self.src)).find(path)
    }
}

impl Locator {
    /// Builds the index; YAML that does not parse yields an empty locator (the parse error is
    /// reported by the deserialiser instead).
    pub fn new(src: &str) -> Self {
        let mut c = Collector::default();
        let mut parser = Parser::new_from_str(src);
        if parser.load(&mut c, false).is_err() {
            return Self::default();
        }
        Self {
            positions: c.positions,
        }
    }

    /// The position of `path`, or of its nearest written ancestor (a missing field is reported
    /// where its parent was written).
    pub fn find(&self, path: &str) -> Option<Position> {
        let mut p = path;
        loop {
            if let Some(pos) = self.positions.get(p) {
                return Some(*pos);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_values() {
        let src = "listeners:\n  - name: app\n    routes:\n      - name: a\n        upstream: nope\nupstreams: []\n";
        let loc = Locator::new(src);
        assert_eq!(
            loc.find("listeners[0].routes[0].upstream"),
            Some(Position { line: 5, col: 19 })
        );
        assert_eq!(
            loc.find("listeners[0].name"),
            Some(Position { line: 2, col: 11 })
        );
        // A missing field falls back to its parent.
        assert_eq!(
            loc.find("listeners[0].routes[0].timeout").map(|p| p.line),
            Some(4)
        );
    }

    #[test]
    fn flow_style_is_indexed_too() {
        let loc = Locator::new("admin: { listen: 127.0.0.1:9901 }\n");
        assert_eq!(
            loc.find("admin.listen"),
            Some(Position { line: 1, col: 18 })
        );
    }
}
