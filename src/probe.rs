//! One pass over a JSON body that picks out the few values a task needs.
//!
//! A task compiles every JSON pointer it reads from a response (confidence, reported model
//! version, token usage, refusal markers) into one [`Probe`]: a small tree of path steps.
//! [`Probe::run`] walks the body once with serde, descending only where the tree has a
//! branch and skipping everything else with `IgnoredAny`, so a 50 KB completion never becomes
//! a `serde_json::Value`. Pure: no I/O, no shared state.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// One step of a compiled path.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// A JSON pointer reference token: an object key, or an array index when it is numeric.
    Token { key: Box<str>, index: Option<usize> },
    /// Every element of an array (internal: used for "all logprobs", "the whole array").
    Each,
}

impl Step {
    pub fn token(key: &str) -> Self {
        // RFC 6901: array indices are "0" or digits without a leading zero.
        // (`str::parse` would also take "+1"; an index is digits only.)
        let digits = !key.is_empty() && key.bytes().all(|b| b.is_ascii_digit());
        let index = if key == "0" || (digits && !key.starts_with('0')) {
            key.parse().ok()
        } else {
            None
        };
        Step::Token {
            key: key.into(),
            index,
        }
    }
}

/// Parse an RFC 6901 JSON pointer into steps. `""` is the whole document.
pub fn parse_pointer(pointer: &str) -> Result<Vec<Step>, String> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(format!("JSON pointer {pointer:?} must start with '/'"));
    };
    rest.split('/')
        .map(|raw| {
            if !raw.contains('~') {
                return Ok(Step::token(raw));
            }
            let valid = raw
                .match_indices('~')
                .all(|(i, _)| matches!(raw.as_bytes().get(i + 1), Some(b'0' | b'1')));
            if !valid {
                return Err(format!(
                    "JSON pointer {pointer:?} has an invalid '~' escape"
                ));
            }
            Ok(Step::token(&raw.replace("~1", "/").replace("~0", "~")))
        })
        .collect()
}

/// How a slot collects what it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The value at the path.
    One,
    /// Every number found at the path (the path goes through [`Step::Each`]).
    Many,
}

/// What a probe found for one slot.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Found {
    #[default]
    Absent,
    Number(f64),
    Str(Box<str>),
    Null,
    /// A bool, object or array where a scalar was expected.
    Other,
    /// `Kind::Many`: the numbers, in document order.
    Numbers(Vec<f64>),
    /// `Kind::Many`: at least one element was not a number.
    NotNumbers,
}

impl Found {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Found::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Found::Number(n) => Some(*n),
            _ => None,
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Node {
    children: Vec<(Step, Node)>,
    slot: Option<(usize, Kind)>,
}

/// A compiled set of paths. Build with [`Probe::add`], run with [`Probe::run`].
#[derive(Debug, Default, Clone)]
pub struct Probe {
    root: Node,
    slots: usize,
}

/// The body was not JSON (or nested deeper than serde_json's recursion limit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotJson;

impl Probe {
    /// Add a path; returns the slot index its value will be found at.
    pub fn add(&mut self, steps: &[Step], kind: Kind) -> usize {
        let mut node = &mut self.root;
        for step in steps {
            let pos = match node.children.iter().position(|(s, _)| s == step) {
                Some(pos) => pos,
                None => {
                    node.children.push((step.clone(), Node::default()));
                    node.children.len() - 1
                }
            };
            node = &mut node.children[pos].1;
        }
        if let Some((slot, existing)) = node.slot
            && existing == kind
        {
            return slot;
        }
        let slot = self.slots;
        self.slots += 1;
        node.slot = Some((slot, kind));
        slot
    }

    pub fn is_empty(&self) -> bool {
        self.slots == 0
    }

    /// Walk every `data:` event of a server-sent-events body (a streamed completion) and
    /// merge what the chunks say: `Many` slots collect across chunks in order, `One` slots
    /// keep the last value that is neither absent nor null. Events that are not JSON
    /// (`[DONE]`, comments) are skipped; no JSON event at all is `NotJson`.
    pub fn run_events(&self, body: &[u8]) -> Result<Vec<Found>, NotJson> {
        let mut merged = vec![Found::Absent; self.slots];
        let mut any = false;
        for line in body.split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(data) = line.strip_prefix(b"data:") else {
                continue;
            };
            let data = data.strip_prefix(b" ").unwrap_or(data);
            let Ok(found) = self.run(data) else { continue };
            any = true;
            for (cell, new) in merged.iter_mut().zip(found) {
                match (&mut *cell, new) {
                    (_, Found::Absent | Found::Null) => {}
                    (Found::Numbers(acc), Found::Numbers(more)) => acc.extend(more),
                    (Found::NotNumbers, _) => {}
                    (cell, new) => *cell = new,
                }
            }
        }
        if any { Ok(merged) } else { Err(NotJson) }
    }

    /// Walk `body` once and return one [`Found`] per slot.
    pub fn run(&self, body: &[u8]) -> Result<Vec<Found>, NotJson> {
        let mut out = vec![Found::Absent; self.slots];
        let mut de = serde_json::Deserializer::from_slice(body);
        Walk {
            node: &self.root,
            out: &mut out,
        }
        .deserialize(&mut de)
        .map_err(|_| NotJson)?;
        de.end().map_err(|_| NotJson)?;
        Ok(out)
    }
}

struct Walk<'p, 'o> {
    node: &'p Node,
    out: &'o mut [Found],
}

enum Scalar<'a> {
    Num(f64),
    Str(&'a str),
    Null,
    Other,
}

impl Walk<'_, '_> {
    fn put(&mut self, value: Scalar<'_>) {
        let Some((slot, kind)) = self.node.slot else {
            return;
        };
        let Some(cell) = self.out.get_mut(slot) else {
            return;
        };
        match kind {
            Kind::One => {
                *cell = match value {
                    Scalar::Num(n) => Found::Number(n),
                    Scalar::Str(s) => Found::Str(s.into()),
                    Scalar::Null => Found::Null,
                    Scalar::Other => Found::Other,
                }
            }
            Kind::Many => match (value, &mut *cell) {
                (Scalar::Num(n), Found::Numbers(numbers)) => numbers.push(n),
                (Scalar::Num(n), Found::Absent) => *cell = Found::Numbers(vec![n]),
                (_, _) => *cell = Found::NotNumbers,
            },
        }
    }
}

impl<'de> DeserializeSeed<'de> for Walk<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(mut self, _: bool) -> Result<(), E> {
        self.put(Scalar::Other);
        Ok(())
    }

    fn visit_i64<E>(mut self, v: i64) -> Result<(), E> {
        self.put(Scalar::Num(v as f64));
        Ok(())
    }

    fn visit_u64<E>(mut self, v: u64) -> Result<(), E> {
        self.put(Scalar::Num(v as f64));
        Ok(())
    }

    fn visit_f64<E>(mut self, v: f64) -> Result<(), E> {
        self.put(Scalar::Num(v));
        Ok(())
    }

    fn visit_str<E>(mut self, v: &str) -> Result<(), E> {
        self.put(Scalar::Str(v));
        Ok(())
    }

    fn visit_unit<E>(mut self) -> Result<(), E> {
        self.put(Scalar::Null);
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        self.put(Scalar::Other);
        let children = &self.node.children;
        while let Some(hit) = map.next_key_seed(KeyMatch(children))? {
            match hit.and_then(|i| children.get(i)) {
                Some((_, child)) => map.next_value_seed(Walk {
                    node: child,
                    out: &mut *self.out,
                })?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        self.put(Scalar::Other);
        let children = &self.node.children;
        let mut i = 0usize;
        loop {
            // An element can match one branch: `Each` or its own index, whichever comes first.
            let child = children.iter().find_map(|(step, child)| match step {
                Step::Each => Some(child),
                Step::Token { index, .. } if *index == Some(i) => Some(child),
                Step::Token { .. } => None,
            });
            let more = match child {
                Some(node) => seq
                    .next_element_seed(Walk {
                        node,
                        out: &mut *self.out,
                    })?
                    .is_some(),
                None => seq.next_element::<IgnoredAny>()?.is_some(),
            };
            if !more {
                return Ok(());
            }
            i += 1;
        }
    }
}

/// Matches an object key against a node's children without allocating.
struct KeyMatch<'p>(&'p [(Step, Node)]);

impl<'de> DeserializeSeed<'de> for KeyMatch<'_> {
    type Value = Option<usize>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeyMatch<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, v: &str) -> Result<Option<usize>, E> {
        Ok(self
            .0
            .iter()
            .position(|(step, _)| matches!(step, Step::Token { key, .. } if &**key == v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(p: &str) -> Vec<Step> {
        parse_pointer(p).unwrap()
    }

    #[test]
    fn finds_scalars_and_arrays_in_one_pass() {
        let mut probe = Probe::default();
        let model = probe.add(&steps("/model"), Kind::One);
        let mut lp = steps("/choices/0/logprobs/content");
        lp.push(Step::Each);
        lp.extend(steps("/logprob"));
        let logprobs = probe.add(&lp, Kind::Many);
        let mut arr = steps("/probabilities");
        arr.push(Step::Each);
        let probs = probe.add(&arr, Kind::Many);
        let missing = probe.add(&steps("/nope/0"), Kind::One);
        let body = br#"{"model":"m-1","ignored":{"deep":[1,2,{"x":null}]},
            "choices":[{"logprobs":{"content":[{"token":"a","logprob":-0.1},{"logprob":-0.2}]}},
                       {"logprobs":{"content":[{"logprob":-9}]}}],
            "probabilities":[0.1,0.7,0.2]}"#;
        let found = probe.run(body).unwrap();
        assert_eq!(found[model], Found::Str("m-1".into()));
        assert_eq!(found[logprobs], Found::Numbers(vec![-0.1, -0.2]));
        assert_eq!(found[probs], Found::Numbers(vec![0.1, 0.7, 0.2]));
        assert_eq!(found[missing], Found::Absent);
    }

    #[test]
    fn escaped_pointer_tokens_and_numeric_keys() {
        let mut probe = Probe::default();
        let a = probe.add(&steps("/a~1b/m~0n"), Kind::One);
        let b = probe.add(&steps("/obj/0"), Kind::One);
        let found = probe
            .run(br#"{"a/b":{"m~n":0.5},"obj":{"0":"zero"}}"#)
            .unwrap();
        assert_eq!(found[a], Found::Number(0.5));
        assert_eq!(found[b], Found::Str("zero".into()));
    }

    #[test]
    fn non_numbers_in_a_many_slot_poison_it() {
        let mut probe = Probe::default();
        let s = probe.add(&[Step::token("p"), Step::Each], Kind::Many);
        assert_eq!(
            probe.run(br#"{"p":[0.1,"x"]}"#).unwrap()[s],
            Found::NotNumbers
        );
        assert_eq!(probe.run(br#"{"p":[]}"#).unwrap()[s], Found::Absent);
    }

    #[test]
    fn rejects_non_json_and_trailing_garbage() {
        let mut probe = Probe::default();
        probe.add(&steps("/a"), Kind::One);
        assert_eq!(probe.run(b"not json"), Err(NotJson));
        assert_eq!(probe.run(br#"{"a":1} x"#), Err(NotJson));
        assert!(probe.run(br#"{"a":1}  "#).is_ok());
    }

    #[test]
    fn server_sent_events_merge_across_chunks() {
        let mut probe = Probe::default();
        let mut lp = steps("/choices/0/logprobs/content");
        lp.push(Step::Each);
        lp.extend(steps("/logprob"));
        let lp = probe.add(&lp, Kind::Many);
        let finish = probe.add(&steps("/choices/0/finish_reason"), Kind::One);
        let model = probe.add(&steps("/model"), Kind::One);
        let body = b"data: {\"model\":\"m\",\"choices\":[{\"logprobs\":{\"content\":[{\"logprob\":-0.1}]},\"finish_reason\":null}]}\n\n\
: a comment\r\n\
data: {\"model\":\"m\",\"choices\":[{\"logprobs\":{\"content\":[{\"logprob\":-0.2},{\"logprob\":-0.3}]},\"finish_reason\":\"stop\"}]}\r\n\r\n\
data: [DONE]\n\n";
        let found = probe.run_events(body).unwrap();
        assert_eq!(found[lp], Found::Numbers(vec![-0.1, -0.2, -0.3]));
        assert_eq!(found[finish], Found::Str("stop".into()));
        assert_eq!(found[model], Found::Str("m".into()));
        assert_eq!(probe.run_events(b"data: [DONE]\n\n"), Err(NotJson));
    }

    /// Found by fuzzing (fuzz/regressions/pointer_parse/plus-sign-array-index).
    #[test]
    fn only_digits_make_an_array_index() {
        for key in ["+1", "-1", " 1", "1 ", "1e0", "0x1"] {
            assert_eq!(
                Step::token(key),
                Step::Token {
                    key: key.into(),
                    index: None
                },
                "{key}"
            );
        }
        assert_eq!(
            Step::token("10"),
            Step::Token {
                key: "10".into(),
                index: Some(10)
            }
        );
    }

    #[test]
    fn pointer_syntax() {
        assert!(parse_pointer("model").is_err());
        assert!(parse_pointer("/a~2").is_err());
        assert_eq!(parse_pointer("").unwrap(), vec![]);
        assert_eq!(
            parse_pointer("/01").unwrap(),
            vec![Step::Token {
                key: "01".into(),
                index: None
            }]
        );
    }
}
