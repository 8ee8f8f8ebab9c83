//! One pass over a JSON body that picks out the few values a task needs.
//!
//! A task compiles every JSON pointer it reads from a response (confidence, reported model
//! version, token usage, refusal markers) into one [`Probe`]: a small tree of path steps.
//! [`Probe::run`] walks the body once with a validating scanner of its own, descending only
//! where the tree has a branch and stepping over everything else without decoding it: a 50 KB
//! completion never becomes a `serde_json::Value`, and its skipped strings and numbers are
//! checked but never built. Pure: no I/O, no shared state.

use std::borrow::Cow;

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

/// Where the walk goes from one value. An array element is walked by exactly one node: its
/// index's when there is one, which then holds the `each` paths as well (an element at
/// `/a/0` is also one of `/a/*`), else `each`.
#[derive(Debug, Default, Clone)]
struct Node {
    /// Object members, by key.
    keys: Vec<(Box<str>, Node)>,
    /// Array elements, by index.
    items: Vec<(usize, Node)>,
    /// Array elements without an entry in `items`.
    each: Option<Box<Node>>,
    /// The slots this value fills.
    slots: Vec<(usize, Kind)>,
    /// Every element of an array: its objects come one after another, most often with the
    /// same keys (see [`Shape`]).
    repeats: bool,
}

impl Node {
    fn insert(&mut self, steps: &[Step], slot: (usize, Kind)) {
        let Some((step, rest)) = steps.split_first() else {
            self.slots.push(slot);
            return;
        };
        match step {
            Step::Token { key, index } => {
                self.key(key).insert(rest, slot);
                if let Some(index) = *index {
                    self.item(index).insert(rest, slot);
                }
            }
            Step::Each => {
                self.each
                    .get_or_insert_with(|| {
                        Box::new(Node {
                            repeats: true,
                            ..Node::default()
                        })
                    })
                    .insert(rest, slot);
                for (_, item) in &mut self.items {
                    item.insert(rest, slot);
                }
            }
        }
    }

    fn key(&mut self, key: &str) -> &mut Node {
        let pos = match self.keys.iter().position(|(k, _)| **k == *key) {
            Some(pos) => pos,
            None => {
                self.keys.push((key.into(), Node::default()));
                self.keys.len() - 1
            }
        };
        &mut self.keys[pos].1
    }

    /// An index's node; a new one starts with the `each` paths added so far.
    fn item(&mut self, index: usize) -> &mut Node {
        let pos = match self.items.iter().position(|(i, _)| *i == index) {
            Some(pos) => pos,
            None => {
                let each = self.each.as_deref().cloned().unwrap_or_default();
                // One element: its object comes once.
                let each = Node {
                    repeats: false,
                    ..each
                };
                self.items.push((index, each));
                self.items.len() - 1
            }
        };
        &mut self.items[pos].1
    }

    fn is_leaf(&self) -> bool {
        self.slots.is_empty()
            && self.keys.is_empty()
            && self.items.is_empty()
            && self.each.is_none()
    }
}

/// A compiled set of paths. Build with [`Probe::add`], run with [`Probe::run`].
#[derive(Debug, Default, Clone)]
pub struct Probe {
    root: Node,
    /// Every path added; a path's slot is its index here.
    paths: Vec<(Vec<Step>, Kind)>,
}

/// The body was not JSON (or nested deeper than serde_json's recursion limit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotJson;

impl Probe {
    /// Add a path; returns the slot index its value will be found at.
    /// The same path added twice with the same kind shares its slot.
    pub fn add(&mut self, steps: &[Step], kind: Kind) -> usize {
        if let Some(slot) = self
            .paths
            .iter()
            .position(|(s, k)| s == steps && *k == kind)
        {
            return slot;
        }
        let slot = self.paths.len();
        self.paths.push((steps.to_vec(), kind));
        self.root.insert(steps, (slot, kind));
        slot
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Walk every `data:` event of a server-sent-events body (a streamed completion) and
    /// merge what the chunks say: `Many` slots collect across chunks in order, `One` slots
    /// keep the last value that is neither absent nor null. Events that are not JSON
    /// (`[DONE]`, comments) are skipped; no JSON event at all is `NotJson`.
    pub fn run_events(&self, body: &[u8]) -> Result<Vec<Found>, NotJson> {
        let mut merged = vec![Found::Absent; self.paths.len()];
        // One scratch row for every event: its number lists keep their capacity.
        let mut event = vec![Found::Absent; self.paths.len()];
        let mut any = false;
        for line in body.split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(data) = line.strip_prefix(b"data:") else {
                continue;
            };
            let data = data.strip_prefix(b" ").unwrap_or(data);
            for cell in &mut event {
                match cell {
                    Found::Numbers(numbers) => numbers.clear(),
                    other => *other = Found::Absent,
                }
            }
            if self.run_into(data, &mut event).is_err() {
                continue;
            }
            any = true;
            for (cell, new) in merged.iter_mut().zip(&mut event) {
                match (&mut *cell, new) {
                    (_, Found::Absent | Found::Null) => {}
                    (_, Found::Numbers(more)) if more.is_empty() => {}
                    (Found::Numbers(acc), Found::Numbers(more)) => acc.append(more),
                    (Found::NotNumbers, _) => {}
                    (cell, new) => *cell = std::mem::take(new),
                }
            }
        }
        if any { Ok(merged) } else { Err(NotJson) }
    }

    /// Walk `body` once and return one [`Found`] per slot.
    pub fn run(&self, body: &[u8]) -> Result<Vec<Found>, NotJson> {
        let mut out = vec![Found::Absent; self.paths.len()];
        self.run_into(body, &mut out)?;
        Ok(out)
    }

    /// [`Probe::run`] into a row the caller provides (absent cells, or number lists that are
    /// empty: an empty list means nothing was found there).
    fn run_into(&self, body: &[u8], out: &mut [Found]) -> Result<(), NotJson> {
        let mut scan = Scan {
            b: body,
            i: 0,
            depth: 0,
            out,
            shape: Shape::default(),
        };
        scan.ws();
        scan.value(&self.root)?;
        scan.ws();
        if scan.i != body.len() {
            return Err(NotJson);
        }
        Ok(())
    }
}

/// Whether `body` is one JSON value in valid UTF-8: what can be embedded byte for byte in
/// another JSON document. The same checks as [`Probe::run`], plus UTF-8 everywhere.
pub fn is_json(body: &[u8]) -> bool {
    Probe::default().run(body).is_ok() && std::str::from_utf8(body).is_ok()
}

/// Where some members of a JSON object sit, for an edit that leaves every other byte as it
/// came (see [`members`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Members {
    /// Just past the object's `{`: where a new member can go.
    pub open: usize,
    /// The object has no member at all.
    pub empty: bool,
    /// Per wanted key, the bytes of its value, when the object has the key.
    pub values: Vec<Option<std::ops::Range<usize>>>,
    /// A wanted key came twice, or spelled with escapes: parsers differ on which of two
    /// members counts, so an edit of one of them is not safe.
    pub ambiguous: bool,
}

/// Check `body` as [`Probe::run`] does and find the members named `keys` of its top-level
/// object. `Ok(None)`: JSON, but not an object.
pub fn members(body: &[u8], keys: &[&str]) -> Result<Option<Members>, NotJson> {
    let mut scan = Scan {
        b: body,
        i: 0,
        depth: 0,
        out: &mut [],
        shape: Shape::default(),
    };
    scan.ws();
    if scan.peek() != Some(b'{') {
        scan.skip()?;
        scan.ws();
        return if scan.i == body.len() {
            Ok(None)
        } else {
            Err(NotJson)
        };
    }
    let mut found = Members {
        open: scan.i + 1,
        empty: scan.open(b'}')?,
        values: vec![None; keys.len()],
        ambiguous: false,
    };
    if !found.empty {
        loop {
            if scan.peek() != Some(b'"') {
                return Err(NotJson);
            }
            let key = scan.string()?;
            // A key without an escape is compared raw, as [`Scan::find_child`] compares it.
            let wanted = if key.escaped {
                let name = text(body, &key)?;
                keys.iter().position(|k| *k == name)
            } else {
                let raw = body.get(key.start..key.end).ok_or(NotJson)?;
                keys.iter().position(|k| same_bytes(k.as_bytes(), raw))
            };
            scan.ws();
            scan.eat(b':')?;
            scan.ws();
            let start = scan.i;
            scan.skip()?;
            if let Some(value) = wanted.and_then(|k| found.values.get_mut(k)) {
                found.ambiguous |= key.escaped || value.is_some();
                *value = Some(start..scan.i);
            }
            if !scan.more(b'}')? {
                break;
            }
        }
    }
    scan.ws();
    if scan.i != body.len() {
        return Err(NotJson);
    }
    Ok(Some(found))
}

/// Nesting deeper than this is refused, as serde_json refuses it: a body cannot make the
/// scanner recurse without bound.
const MAX_DEPTH: u32 = 127;

/// A validating single-pass JSON scanner over a byte slice.
///
/// It accepts what serde_json's `from_slice` accepts, with one difference kept on purpose:
/// strings it skips, and keys without an escape, are checked for structure (quotes, escapes,
/// control characters) but not for UTF-8, like serde_json's own `IgnoredAny`; strings it
/// extracts and keys it decodes are checked.
/// Numbers are parsed only where a slot wants them; elsewhere their grammar is checked.
struct Scan<'b, 'o> {
    b: &'b [u8],
    i: usize,
    depth: u32,
    out: &'o mut [Found],
    shape: Shape,
}

/// The bytes before each member of one element of a list, remembered for the next element
/// (the next token of a logprobs list): only a node with [`Node::repeats`] remembers.
/// `gaps[k]` is the raw span (start, length) from the end of member k−1's value (for the
/// first member, from the first byte after `{` and its whitespace) to the start of member k's
/// value, `,"logprob":` with whatever whitespace came, and the index of its key's child in
/// the node's `keys` (`u16::MAX`: none); the first `len` are set. Bytes equal to a gap
/// already walked are the same separator, key (escapes and all) and colon, already checked
/// and looked up: one comparison steps over them. Comparing bytes is not waiting on them:
/// where the scan's next position came from the bytes it had just read, it now comes from
/// the remembered length, and the comparison only decides a branch the processor predicts.
/// An object of another list's node starts it afresh with one store.
#[derive(Default)]
struct Shape {
    /// The node the gaps came from, by address (0: none).
    node: usize,
    len: usize,
    gaps: [(u32, u16, u16); SHAPE_KEYS],
}

/// How many members of an object [`Shape`] remembers: a logprob token has four.
const SHAPE_KEYS: usize = 8;

#[derive(Clone, Copy)]
enum Scalar<'a> {
    Num(f64),
    Str(&'a str),
    Null,
    Other,
}

/// A string's raw span (between the quotes) and whether it holds escapes.
struct Span {
    start: usize,
    end: usize,
    escaped: bool,
}

impl Scan<'_, '_> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    #[inline]
    fn ws(&mut self) {
        let mut i = self.i;
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.b.get(i) {
            i += 1;
        }
        self.i = i;
    }

    #[inline]
    fn eat(&mut self, byte: u8) -> Result<(), NotJson> {
        if self.peek() == Some(byte) {
            self.i += 1;
            Ok(())
        } else {
            Err(NotJson)
        }
    }

    /// Record `value` in the node's slots. Most nodes on the way to a slot have none: that
    /// check stays in line, the loop does not.
    #[inline(always)]
    fn put(&mut self, node: &Node, value: Scalar<'_>) {
        if !node.slots.is_empty() {
            self.fill_slots(node, value);
        }
    }

    /// [`Scan::put`] for a number. A token's logprob lands in the one `Many` slot of its
    /// node, already a list: that push stays in line, the rest takes `fill_slots`.
    #[inline(always)]
    fn put_number(&mut self, node: &Node, n: f64) {
        if let [(slot, Kind::Many)] = node.slots[..]
            && let Some(Found::Numbers(numbers)) = self.out.get_mut(slot)
        {
            numbers.push(n);
            return;
        }
        self.put(node, Scalar::Num(n));
    }

    #[inline(never)]
    fn fill_slots(&mut self, node: &Node, value: Scalar<'_>) {
        for &(slot, kind) in &node.slots {
            if let Some(cell) = self.out.get_mut(slot) {
                fill(cell, kind, value);
            }
        }
    }

    /// One value where the probe has a node: descend where it branches, record its slot.
    fn value(&mut self, node: &Node) -> Result<(), NotJson> {
        if node.is_leaf() {
            return self.skip();
        }
        match self.peek().ok_or(NotJson)? {
            b'{' => {
                self.put(node, Scalar::Other);
                self.object(node)
            }
            b'[' => {
                self.put(node, Scalar::Other);
                self.array(node)
            }
            b'"' => {
                let span = self.string()?;
                if node.slots.iter().any(|&(_, kind)| kind == Kind::One) {
                    let text = text(self.b, &span)?;
                    self.put(node, Scalar::Str(&text));
                } else {
                    self.put(node, Scalar::Other);
                }
                Ok(())
            }
            b't' | b'f' => {
                self.literal()?;
                self.put(node, Scalar::Other);
                Ok(())
            }
            b'n' => {
                self.literal()?;
                self.put(node, Scalar::Null);
                Ok(())
            }
            _ => {
                if !node.slots.is_empty() {
                    let n = self.number_value()?;
                    self.put_number(node, n);
                } else {
                    self.number()?;
                }
                Ok(())
            }
        }
    }

    /// One value nothing is wanted from: checked and stepped over in one loop, without
    /// recursion. `objects` holds a bit per open container (set: an object), innermost
    /// lowest; `self.depth` counts them against [`MAX_DEPTH`] as the walk does.
    fn skip(&mut self) -> Result<(), NotJson> {
        let base = self.depth;
        let mut objects: u128 = 0;
        loop {
            // At a value.
            match self.peek().ok_or(NotJson)? {
                b'"' => {
                    self.string()?;
                }
                b'-' | b'0'..=b'9' => {
                    self.number()?;
                }
                open @ (b'{' | b'[') => {
                    let object = open == b'{';
                    let close = if object { b'}' } else { b']' };
                    if !self.open(close)? && (object || !self.int_array_rest()) {
                        objects = (objects << 1) | u128::from(object);
                        if object {
                            self.key()?;
                        }
                        continue;
                    }
                }
                _ => self.literal()?,
            }
            // After a value: a separator, or closing containers.
            loop {
                if self.depth == base {
                    return Ok(());
                }
                let object = objects & 1 == 1;
                if self.more(if object { b'}' } else { b']' })? {
                    if object {
                        self.key()?;
                    }
                    break;
                }
                objects >>= 1;
            }
        }
    }

    /// A key nothing is wanted from and its colon, up to the value.
    #[inline(always)]
    fn key(&mut self) -> Result<(), NotJson> {
        if self.peek() != Some(b'"') {
            return Err(NotJson);
        }
        self.string()?;
        self.ws();
        self.eat(b':')?;
        self.ws();
        Ok(())
    }

    /// [`Scan::skip`] with numbers, strings, empty containers and arrays (one level, see
    /// [`Scan::skip_array`]), most of what is skipped, stepped over in line; objects and
    /// literals take the call.
    #[inline(always)]
    fn skip_inline(&mut self) -> Result<(), NotJson> {
        match self.peek().ok_or(NotJson)? {
            // `[]` or `{}` (`"top_logprobs":[]` in every token of a completion): not worth a
            // call. It counts against the nesting cap as a container `skip` opens would.
            b'[' | b'{' if self.depth < MAX_DEPTH && self.empty_container() => {
                self.i += 2;
                Ok(())
            }
            b'[' => self.skip_array(),
            _ => self.skip_element(),
        }
    }

    /// A string or a number stepped over in line, anything else by [`Scan::skip`].
    #[inline(always)]
    fn skip_element(&mut self) -> Result<(), NotJson> {
        match self.peek().ok_or(NotJson)? {
            b'"' => self.string().map(drop),
            b'-' | b'0'..=b'9' => self.number().map(drop),
            _ => self.skip(),
        }
    }

    /// An array nothing is wanted from, one level without `skip`'s container stack: plain
    /// integers (`"bytes":[32,105,110]` in every token) in words by
    /// [`Scan::int_array_rest`], other numbers and strings stepped over here, other elements
    /// by [`Scan::skip`].
    #[inline(always)]
    fn skip_array(&mut self) -> Result<(), NotJson> {
        if self.open(b']')? || self.int_array_rest() {
            return Ok(());
        }
        loop {
            self.skip_element()?;
            if !self.more(b']')? {
                return Ok(());
            }
        }
    }

    fn object(&mut self, node: &Node) -> Result<(), NotJson> {
        if self.open(b'}')? {
            return Ok(());
        }
        let id = std::ptr::from_ref(node) as usize;
        let mut k = 0;
        loop {
            // At member `k`: after `{` and its whitespace, or just after member k−1's value.
            let known = if node.repeats {
                self.same_gap_as_last(id, k)
            } else {
                None
            };
            let child = match known {
                Some(child) => {
                    // A gap may have ended before more whitespace than this one has.
                    self.ws();
                    child
                }
                None => {
                    let gap = self.i;
                    if k > 0 && !self.more(b'}')? {
                        return Ok(());
                    }
                    if self.peek() != Some(b'"') {
                        return Err(NotJson);
                    }
                    let key = self.string()?;
                    let child = if node.keys.is_empty() {
                        usize::MAX
                    } else {
                        self.find_child(node, &key)?
                    };
                    self.ws();
                    self.eat(b':')?;
                    self.ws();
                    if node.repeats {
                        self.remember(id, k, gap, child);
                    }
                    child
                }
            };
            self.member(node.keys.get(child).map(|(_, child)| child))?;
            k += 1;
        }
    }

    /// At member `k` of an object of node `id`: when the bytes here are the `k`-th gap of
    /// the last object of that node, step over them and return that key's child index.
    #[inline(always)]
    fn same_gap_as_last(&mut self, id: usize, k: usize) -> Option<usize> {
        if self.shape.node != id || k >= self.shape.len {
            return None;
        }
        let &(start, len, child) = self.shape.gaps.get(k)?;
        let (start, len) = (start as usize, usize::from(len));
        let here = self.b.get(self.i..self.i + len)?;
        if !same_bytes(here, self.b.get(start..start + len)?) {
            return None;
        }
        self.i += len;
        Some(if child == u16::MAX {
            usize::MAX
        } else {
            usize::from(child)
        })
    }

    /// Remember the gap from `start` to here as the `k`-th of an object of node `id`, for
    /// [`Scan::same_gap_as_last`]. A gap past the first [`SHAPE_KEYS`], after a gap not
    /// remembered, at 4 GiB into the body, longer than 64 KiB or leading to a child past the
    /// 65,535th is not remembered.
    #[inline(always)]
    fn remember(&mut self, id: usize, k: usize, start: usize, child: usize) {
        if self.shape.node != id {
            self.shape.node = id;
            self.shape.len = 0;
        }
        let child = match child {
            usize::MAX => Some(u16::MAX),
            child => u16::try_from(child).ok().filter(|&c| c != u16::MAX),
        };
        let entry = (u32::try_from(start), u16::try_from(self.i - start), child);
        if let (Ok(start), Ok(len), Some(child)) = entry
            && k <= self.shape.len
            && let Some(slot) = self.shape.gaps.get_mut(k)
        {
            *slot = (start, len, child);
            self.shape.len = self.shape.len.max(k + 1);
        }
    }

    fn array(&mut self, node: &Node) -> Result<(), NotJson> {
        if self.open(b']')? {
            return Ok(());
        }
        let mut index = 0usize;
        loop {
            let child = match node.items.iter().find(|(i, _)| *i == index) {
                Some((_, item)) => Some(item),
                None => node.each.as_deref(),
            };
            self.member(child)?;
            if !self.more(b']')? {
                return Ok(());
            }
            index += 1;
        }
    }

    /// At an array's first element: when the array is plain integers and commas up to its
    /// `]` (`"bytes":[32,105,110,118]` in every token), step over it through the `]` and
    /// return `true`. Eight bytes at a time, and no step waits on what the one before found
    /// (stepping element by element made each wait on the last one's length).
    ///
    /// Checked as [`Scan::number`] and [`Scan::more`] would: every element starts with a
    /// digit, no `,,`, no `,]`, no leading zero (`0` then a digit). Anything else (a sign,
    /// a fraction, whitespace, an invalid element, fewer than eight bytes left before the
    /// `]`) returns `false` with nothing consumed, for the general path to take (and to
    /// refuse, where it is not JSON).
    #[inline(always)]
    fn int_array_rest(&mut self) -> bool {
        const TOP: u64 = 0x80 << 56;
        if !matches!(self.peek(), Some(b'1'..=b'9')) {
            return false;
        }
        let mut at = self.i;
        // Whether the byte before `at` is a comma, and whether it is a `0` starting an element.
        let (mut after_comma, mut after_zero) = (false, false);
        loop {
            let Some(word) = self.b.get(at..at + 8).and_then(|w| w.first_chunk::<8>()) else {
                return false;
            };
            let w = u64::from_le_bytes(*word);
            let (digit, comma, zero) = (digits_in(w), bytes_eq(w, b','), bytes_eq(w, b'0'));
            let end = !(digit | comma) & HIGH;
            // The bytes before `end` (all eight when it is zero): the run checked here.
            let run = match end.trailing_zeros() {
                64 => u64::MAX,
                bit => (1 << (bit - 7)) - 1,
            };
            let comma = comma & run;
            let starts = (comma << 8) | if after_comma { 0x80 } else { 0 };
            let zero_starts = zero & run & starts;
            if comma & starts != 0
                || zero_starts & (digit >> 8) != 0
                || (after_zero && digit & 0x80 != 0)
            {
                return false;
            }
            if end == 0 {
                (after_comma, after_zero) = (comma & TOP != 0, zero_starts & TOP != 0);
                at += 8;
                continue;
            }
            let len = (end.trailing_zeros() / 8) as usize;
            let last_comma = match len {
                0 => after_comma,
                _ => comma & (0x80 << (8 * (len - 1))) != 0,
            };
            if (w >> (8 * len)) as u8 != b']' || last_comma {
                return false;
            }
            self.i = at + len + 1;
            self.depth -= 1;
            return true;
        }
    }

    /// At `[]` or `{}`, with nothing between.
    #[inline(always)]
    fn empty_container(&self) -> bool {
        matches!(self.b.get(self.i..self.i + 2), Some(b"[]" | b"{}"))
    }

    /// Step into a container (at its opening byte); `true` when it closes at once.
    #[inline(always)]
    fn open(&mut self, close: u8) -> Result<bool, NotJson> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(NotJson);
        }
        self.i += 1;
        self.ws();
        Ok(self.close(close))
    }

    /// After a member: `true` after a `,` (another member follows), `false` after the
    /// container's closing byte.
    #[inline(always)]
    fn more(&mut self, close: u8) -> Result<bool, NotJson> {
        self.ws();
        if self.peek() == Some(b',') {
            self.i += 1;
            self.ws();
            return Ok(true);
        }
        if self.close(close) {
            Ok(false)
        } else {
            Err(NotJson)
        }
    }

    #[inline(always)]
    fn close(&mut self, close: u8) -> bool {
        if self.peek() != Some(close) {
            return false;
        }
        self.i += 1;
        self.depth -= 1;
        true
    }

    /// A member's value: walked where the probe has a node for it, else stepped over.
    #[inline(always)]
    fn member(&mut self, child: Option<&Node>) -> Result<(), NotJson> {
        match child {
            Some(child) => self.value(child),
            None => self.skip_inline(),
        }
    }

    /// The index in `node.keys` of the child a key leads to (`usize::MAX`: none). A key
    /// without an escape is compared as raw bytes and not checked for UTF-8: when it equals
    /// a wanted key it is that key's valid UTF-8, and when it equals none it is stepped over
    /// like any skipped string.
    fn find_child(&self, node: &Node, key: &Span) -> Result<usize, NotJson> {
        let raw = self.b.get(key.start..key.end).ok_or(NotJson)?;
        let decoded;
        let key: &[u8] = if key.escaped {
            decoded = text(self.b, key)?;
            decoded.as_bytes()
        } else {
            raw
        };
        Ok(node
            .keys
            .iter()
            .position(|(k, _)| same_bytes(k.as_bytes(), key))
            .unwrap_or(usize::MAX))
    }

    /// Step over a string (at its opening quote); return its raw span.
    #[inline(always)]
    fn string(&mut self) -> Result<Span, NotJson> {
        self.i += 1;
        let start = self.i;
        let mut escaped = false;
        loop {
            self.i = find_string_special(self.b, self.i);
            match self.peek().ok_or(NotJson)? {
                b'"' => {
                    let end = self.i;
                    self.i += 1;
                    return Ok(Span {
                        start,
                        end,
                        escaped,
                    });
                }
                b'\\' => {
                    escaped = true;
                    self.i += 1;
                    match self.peek().ok_or(NotJson)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 1,
                        b'u' => {
                            let hex = self.b.get(self.i + 1..self.i + 5).ok_or(NotJson)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return Err(NotJson);
                            }
                            self.i += 5;
                        }
                        _ => return Err(NotJson),
                    }
                }
                // A control character: JSON wants it escaped.
                _ => return Err(NotJson),
            }
        }
    }

    fn literal(&mut self) -> Result<(), NotJson> {
        let rest = self.b.get(self.i..).unwrap_or_default();
        let len = [&b"true"[..], b"false", b"null"]
            .into_iter()
            .find(|word| rest.starts_with(word))
            .ok_or(NotJson)?
            .len();
        self.i += len;
        Ok(())
    }

    /// Step over a number, checking RFC 8259's grammar; return its span.
    #[inline(always)]
    fn number(&mut self) -> Result<(usize, usize), NotJson> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(NotJson),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            self.digits1()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            self.digits1()?;
        }
        Ok((start, self.i))
    }

    /// Step over a number and read it, gathering the digits while checking the grammar.
    /// Clinger's fast path: digits that fit in 53 bits and a decimal exponent of at most 22
    /// either way make one exact multiplication or division of two exact doubles, so the
    /// result is correctly rounded. Most model outputs (`-0.0812345678901234`) take it; the
    /// rest go to `str::parse`.
    fn number_value(&mut self) -> Result<f64, NotJson> {
        const POW10: [f64; 23] = [
            1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
            1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
        ];
        let start = self.i;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.i += 1;
        }
        // Digits gathered (leading zeros too), eight at a time where eight are there; past 19
        // the mantissa wraps and is not used.
        let mut mantissa: u64 = 0;
        let mut count = 0u32;
        let mut gather = |scan: &mut Self| {
            let (b, mut i) = (scan.b, scan.i);
            while let Some(eight) = b.get(i..i + 8).and_then(eight_digits) {
                mantissa = mantissa.wrapping_mul(100_000_000).wrapping_add(eight);
                count += 8;
                i += 8;
            }
            while let Some(d @ b'0'..=b'9') = b.get(i).copied() {
                mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(d - b'0'));
                count += 1;
                i += 1;
            }
            scan.i = i;
        };
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => gather(self),
            _ => return Err(NotJson),
        }
        let mut scale: i64 = 0;
        if self.peek() == Some(b'.') {
            self.i += 1;
            let at = self.i;
            gather(self);
            if self.i == at {
                return Err(NotJson);
            }
            scale = -((self.i - at) as i64);
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            let sign = match self.peek() {
                Some(b'-') => -1,
                Some(b'+') => 1,
                _ => 0,
            };
            if sign != 0 {
                self.i += 1;
            }
            let at = self.i;
            let mut e: i64 = 0;
            while let Some(d @ b'0'..=b'9') = self.peek() {
                e = e.saturating_mul(10).saturating_add(i64::from(d - b'0'));
                self.i += 1;
            }
            if self.i == at {
                return Err(NotJson);
            }
            scale = scale.saturating_add(if sign < 0 { -e } else { e });
        }
        let sign = |value: f64| if negative { -value } else { value };
        if count <= 19 {
            if mantissa <= 1 << 53
                && let Some(power) = POW10.get(scale.unsigned_abs() as usize)
            {
                let m = mantissa as f64;
                return Ok(sign(if scale >= 0 { m * power } else { m / power }));
            }
            // Past Clinger's 53 bits: a logprob printed with 17 significant digits (half of
            // the mock's; a float32 widened to a double often prints so).
            if scale < 0
                && let Ok(k) = u32::try_from(scale.unsigned_abs())
                && let Some(value) = quotient(mantissa, k)
            {
                return Ok(sign(value));
            }
        }
        parse_number(self.b.get(start..self.i).ok_or(NotJson)?)
    }

    #[inline]
    fn digits(&mut self) {
        let mut i = self.i;
        while let Some(b'0'..=b'9') = self.b.get(i) {
            i += 1;
        }
        self.i = i;
    }

    fn digits1(&mut self) -> Result<(), NotJson> {
        let start = self.i;
        self.digits();
        if self.i == start {
            Err(NotJson)
        } else {
            Ok(())
        }
    }
}

/// `a == b` for the short byte strings of a JSON object (keys, the gaps between members),
/// without a call to `memcmp`: up to 32 bytes are two overlapping loads on each side.
#[inline(always)]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    match a.len() {
        4..=7 => a.first_chunk::<4>() == b.first_chunk() && a.last_chunk::<4>() == b.last_chunk(),
        8..=16 => a.first_chunk::<8>() == b.first_chunk() && a.last_chunk::<8>() == b.last_chunk(),
        17..=32 => {
            a.first_chunk::<16>() == b.first_chunk() && a.last_chunk::<16>() == b.last_chunk()
        }
        _ => a == b,
    }
}

/// Record one value in a slot's cell.
fn fill(cell: &mut Found, kind: Kind, value: Scalar<'_>) {
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
            (Scalar::Num(n), Found::Absent) => {
                // Token lists run to hundreds: skip the first few doublings.
                let mut numbers = Vec::with_capacity(64);
                numbers.push(n);
                *cell = Found::Numbers(numbers);
            }
            (_, _) => *cell = Found::NotNumbers,
        },
    }
}

/// A string's text, unescaped and checked for UTF-8.
fn text<'b>(b: &'b [u8], span: &Span) -> Result<Cow<'b, str>, NotJson> {
    let raw = b.get(span.start..span.end).ok_or(NotJson)?;
    if !span.escaped {
        return std::str::from_utf8(raw)
            .map(Cow::Borrowed)
            .map_err(|_| NotJson);
    }
    unescape(raw).map(Cow::Owned)
}

/// A number already checked against JSON's grammar. Out of `f64`'s range is refused, as
/// serde_json refuses it.
fn parse_number(raw: &[u8]) -> Result<f64, NotJson> {
    let text = std::str::from_utf8(raw).map_err(|_| NotJson)?;
    match text.parse::<f64>() {
        Ok(n) if n.is_finite() => Ok(n),
        _ => Err(NotJson),
    }
}

/// `m / 10^k`, correctly rounded, for `1 <= k <= 27` (where `5^k` fits in 64 bits), else
/// `None`. `m / 10^k` is `(m / 5^k) / 2^k`, and dividing by a power of two is exact, so only
/// `m / 5^k` needs rounding. `m` is shifted left first (see [`quotient_shift`]) so that the
/// integer quotient is 63 or 64 bits wide; a nonzero remainder is folded into its lowest bit
/// (a sticky bit), ten or more places below the last bit kept, and the conversion of that
/// integer to `f64` (round to nearest, ties to even) then rounds exactly as the true quotient
/// would. A quotient that fits in 64 bits keeps the division to one hardware `div` and the
/// conversion to one instruction: a fraction of `str::parse`.
#[inline]
fn quotient(m: u64, k: u32) -> Option<f64> {
    if m == 0 || !(1..=27).contains(&k) {
        return None;
    }
    let five = 5u64.pow(k);
    let shift = quotient_shift(m, five);
    let n = u128::from(m) << shift;
    let (q, r) = (n / u128::from(five), n % u128::from(five));
    let q = u64::try_from(q).ok()? | u64::from(r != 0);
    // 2^-(shift + k): shift + k <= 152, well inside the normal exponent range.
    let scale = f64::from_bits(u64::from(1023 - (shift + k)) << 52);
    Some(q as f64 * scale)
}

/// The shift that puts `m * 2^shift / five` between 2^62 and 2^64. With `m` of `a` bits and
/// `five` of `b`, `shift = 63 + b - a`: below, `m * 2^shift < 2^(63 + b) <= five * 2^64`;
/// above, `m * 2^shift >= 2^(62 + b) > five * 2^62`. At most 125, so the shifted `m` fits in
/// 128 bits.
#[inline]
fn quotient_shift(m: u64, five: u64) -> u32 {
    63 + (64 - five.leading_zeros()) - (64 - m.leading_zeros())
}

/// The value of eight ASCII digits (little-endian load), or `None` when one is not a digit.
/// The SWAR check and conversion of fast_float (Lemire): three multiplications for eight
/// digits instead of eight.
#[inline(always)]
fn eight_digits(chunk: &[u8]) -> Option<u64> {
    let mut word = [0u8; 8];
    word.copy_from_slice(chunk);
    let v = u64::from_le_bytes(word);
    let high = 0xF0F0_F0F0_F0F0_F0F0;
    if (v & high) | ((v.wrapping_add(0x0606_0606_0606_0606) & high) >> 4) != 0x3333_3333_3333_3333 {
        return None;
    }
    const MASK: u64 = 0x0000_00FF_0000_00FF;
    const MUL1: u64 = 0x000F_4240_0000_0064;
    const MUL2: u64 = 0x0000_2710_0000_0001;
    let v = v - 0x3030_3030_3030_3030;
    let v = v.wrapping_mul(10) + (v >> 8);
    Some(((v & MASK).wrapping_mul(MUL1) + ((v >> 16) & MASK).wrapping_mul(MUL2)) >> 32)
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// Per byte of `w`, the high bit set where the byte is `byte`, clear elsewhere. Exact in
/// every byte: the low seven bits are added apart from the high one, so nothing carries.
#[inline(always)]
fn bytes_eq(w: u64, byte: u8) -> u64 {
    let x = w ^ (ONES * u64::from(byte));
    !((((x & !HIGH) + !HIGH) | x) & HIGH) & HIGH
}

/// Per byte of `w`, the high bit set where the byte is an ASCII digit. Exact, as
/// [`bytes_eq`].
#[inline(always)]
fn digits_in(w: u64) -> u64 {
    let x = w ^ (ONES * u64::from(b'0'));
    !((((x & !HIGH) + ONES * 0x76) | x) & HIGH) & HIGH
}

/// The index of the first `"`, `\` or control character at or after `i` (or the end).
/// Eight bytes at a time: string bodies are long runs of plain bytes.
#[inline]
fn find_string_special(b: &[u8], mut i: usize) -> usize {
    while let Some(chunk) = b.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let v = u64::from_le_bytes(word);
        // The classic "has a byte below n" / "has a zero byte" tricks, per byte: below 0x20,
        // or equal to '"' (zero after xor), or equal to '\\'. `& !v` drops bytes >= 0x80;
        // the xors keep the high bit as it was ('"' and '\\' are ASCII), so one mask serves
        // all three. Borrows only carry upwards: the lowest flagged byte is a true hit.
        let quote = v ^ (ONES * u64::from(b'"'));
        let slash = v ^ (ONES * u64::from(b'\\'));
        let hit =
            (v.wrapping_sub(ONES * 0x20) | quote.wrapping_sub(ONES) | slash.wrapping_sub(ONES))
                & !v
                & HIGH;
        if hit != 0 {
            return i + (hit.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&c) = b.get(i) {
        if c == b'"' || c == b'\\' || c < 0x20 {
            return i;
        }
        i += 1;
    }
    i
}

/// Decode a string's escapes (span already checked by [`Scan::string`]). Lone surrogates
/// are refused, as serde_json refuses them in a string it returns.
fn unescape(raw: &[u8]) -> Result<String, NotJson> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&c) = raw.get(i) {
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let esc = raw.get(i + 1).copied().ok_or(NotJson)?;
        i += 2;
        let byte = match esc {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let hi = hex4(raw, i)?;
                i += 4;
                let c = if (0xD800..0xDC00).contains(&hi) {
                    if raw.get(i..i + 2) != Some(b"\\u") {
                        return Err(NotJson);
                    }
                    let lo = hex4(raw, i + 2)?;
                    if !(0xDC00..0xE000).contains(&lo) {
                        return Err(NotJson);
                    }
                    i += 6;
                    0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                } else {
                    hi
                };
                let c = char::from_u32(c).ok_or(NotJson)?;
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                continue;
            }
            _ => return Err(NotJson),
        };
        out.push(byte);
    }
    String::from_utf8(out).map_err(|_| NotJson)
}

fn hex4(raw: &[u8], i: usize) -> Result<u32, NotJson> {
    let digits = raw.get(i..i + 4).ok_or(NotJson)?;
    let text = std::str::from_utf8(digits).map_err(|_| NotJson)?;
    u32::from_str_radix(text, 16).map_err(|_| NotJson)
}

/// Shared by the property tests of the probe and of the extractors.
#[cfg(test)]
pub(crate) mod testing {
    use proptest::prelude::*;
    use serde_json::Value;

    /// Arbitrary JSON documents for property tests: numbers of every kind (many in the
    /// confidence range), strings with escapes and non-ASCII, keys biased towards the paths
    /// the extractors read so that walks go deep.
    pub fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            (-2.0f64..2.0).prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            // Escapes, quotes, control characters, non-ASCII, astral plane.
            "(\\PC|[\"\\\\/\u{0}-\u{1f}é€😀]){0,12}".prop_map(Value::String),
        ];
        let key = prop_oneof![
            Just("choices".to_string()),
            Just("0".to_string()),
            Just("logprobs".to_string()),
            Just("content".to_string()),
            Just("logprob".to_string()),
            Just("confidence".to_string()),
            Just("probabilities".to_string()),
            Just("model".to_string()),
            Just("a".to_string()),
            Just("b".to_string()),
            Just("b/c".to_string()),
            Just("é".to_string()),
            "(\\PC|[\"\\\\\n]){0,4}",
        ];
        leaf.prop_recursive(6, 128, 8, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                proptest::collection::btree_map(key.clone(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
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
    /// An element reached both by its index and by "every element" fills both slots,
    /// whichever path was added first; an object's key "0" is not an array element.
    #[test]
    fn an_element_at_an_index_is_also_one_of_every_element() {
        let mut each = steps("/a");
        each.extend([Step::Each, Step::token("b")]);
        for index_first in [true, false] {
            let mut probe = Probe::default();
            let (one, many) = if index_first {
                let one = probe.add(&steps("/a/0/b"), Kind::One);
                (one, probe.add(&each, Kind::Many))
            } else {
                let many = probe.add(&each, Kind::Many);
                (probe.add(&steps("/a/0/b"), Kind::One), many)
            };
            let found = probe.run(br#"{"a":[{"b":1},{"b":2}]}"#).unwrap();
            assert_eq!(found[one], Found::Number(1.0), "index first: {index_first}");
            assert_eq!(
                found[many],
                Found::Numbers(vec![1.0, 2.0]),
                "index first: {index_first}"
            );
            let found = probe.run(br#"{"a":{"0":{"b":1}}}"#).unwrap();
            assert_eq!(found[one], Found::Number(1.0));
            assert_eq!(found[many], Found::Absent);
        }
    }

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

    // ---- The scanner against serde_json, the reference it must agree with ----

    use super::testing::json;
    use proptest::prelude::*;
    use serde_json::Value;

    /// What the probe must find for `steps`, computed on a parsed `Value`.
    fn oracle(doc: &Value, steps: &[Step], kind: Kind) -> Found {
        fn walk<'v>(v: &'v Value, steps: &[Step], hits: &mut Vec<&'v Value>) {
            let Some((step, rest)) = steps.split_first() else {
                hits.push(v);
                return;
            };
            match (step, v) {
                (Step::Each, Value::Array(items)) => {
                    items.iter().for_each(|item| walk(item, rest, hits))
                }
                (Step::Token { key, .. }, Value::Object(map)) => {
                    if let Some(child) = map.get(&**key) {
                        walk(child, rest, hits)
                    }
                }
                (Step::Token { index: Some(i), .. }, Value::Array(items)) => {
                    if let Some(child) = items.get(*i) {
                        walk(child, rest, hits)
                    }
                }
                _ => {}
            }
        }
        let mut hits = Vec::new();
        walk(doc, steps, &mut hits);
        let scalar = |v: &Value| match v {
            Value::Number(n) => Found::Number(n.as_f64().unwrap()),
            Value::String(s) => Found::Str(s.as_str().into()),
            Value::Null => Found::Null,
            _ => Found::Other,
        };
        match kind {
            Kind::One => hits.last().map_or(Found::Absent, |v| scalar(v)),
            Kind::Many if hits.is_empty() => Found::Absent,
            Kind::Many => hits
                .iter()
                .map(|v| v.as_f64())
                .collect::<Option<Vec<f64>>>()
                .map_or(Found::NotNumbers, Found::Numbers),
        }
    }

    /// Numbers may differ in the last bit: serde_json's default float parsing is not always
    /// correctly rounded, the scanner's (`str::parse`) is.
    fn same(a: &Found, b: &Found) -> bool {
        let close = |x: f64, y: f64| x == y || (x - y).abs() <= 1e-15 * x.abs().max(y.abs());
        match (a, b) {
            (Found::Number(x), Found::Number(y)) => close(*x, *y),
            (Found::Numbers(x), Found::Numbers(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(x, y)| close(*x, *y))
            }
            _ => a == b,
        }
    }

    fn paths() -> Vec<(Vec<Step>, Kind)> {
        let each = |p: &str, tail: &[&str]| {
            let mut s = steps(p);
            s.push(Step::Each);
            s.extend(tail.iter().map(|t| Step::token(t)));
            s
        };
        vec![
            (steps("/confidence"), Kind::One),
            (steps("/model"), Kind::One),
            (steps("/a/0/b"), Kind::One),
            (steps("/a/b~1c"), Kind::One),
            (steps("/é"), Kind::One),
            (steps("/choices/0/logprobs"), Kind::One),
            (
                each("/choices/0/logprobs/content", &["logprob"]),
                Kind::Many,
            ),
            (each("/probabilities", &[]), Kind::Many),
            (each("/a", &["b"]), Kind::Many),
        ]
    }

    /// Any JSON value without a key twice in one object (deserializing fails on one).
    struct NoDuplicateKeys;

    impl<'de> serde::Deserialize<'de> for NoDuplicateKeys {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(NoDuplicateKeys)
        }
    }

    impl<'de> serde::de::Visitor<'de> for NoDuplicateKeys {
        type Value = NoDuplicateKeys;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
            Ok(self)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
            Ok(self)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
            Ok(self)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
            Ok(self)
        }
        fn visit_str<E>(self, _: &str) -> Result<Self, E> {
            Ok(self)
        }
        fn visit_unit<E>(self) -> Result<Self, E> {
            Ok(self)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
            while seq.next_element::<NoDuplicateKeys>()?.is_some() {}
            Ok(self)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
            let mut keys = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                if !keys.insert(key) {
                    return Err(serde::de::Error::custom("duplicate key"));
                }
                map.next_value::<NoDuplicateKeys>()?;
            }
            Ok(self)
        }
    }

    /// Overwrite, remove or insert a byte at each cut.
    fn damage(body: &mut Vec<u8>, cuts: &[(prop::sample::Index, u8)]) {
        for &(ref at, byte) in cuts {
            if body.is_empty() {
                break;
            }
            let i = at.index(body.len());
            match byte % 3 {
                0 => body[i] = byte,
                1 => {
                    body.remove(i);
                }
                _ => body.insert(i, b"{}[]\",:0-e.\\u"[usize::from(byte) % 13]),
            }
        }
    }

    /// The probe over [`paths`] finds what serde_json finds in `body`, and refuses what
    /// serde_json cannot even step over.
    fn agrees_on_bytes(body: &[u8]) -> Result<(), TestCaseError> {
        let paths = paths();
        let (probe, slots) = probe_for(&paths);
        let ours = probe.run(body);
        match serde_json::from_slice::<Value>(body) {
            // A key twice in one object: serde_json keeps the last value; a list slot of the
            // probe gets both.
            Ok(_) if serde_json::from_slice::<NoDuplicateKeys>(body).is_err() => {
                prop_assert!(ours.is_ok());
            }
            Ok(doc) => {
                let found = ours.unwrap();
                for ((steps, kind), slot) in paths.iter().zip(slots) {
                    let want = oracle(&doc, steps, *kind);
                    prop_assert!(
                        same(&found[slot], &want),
                        "{steps:?} in {}: {:?} vs {want:?}",
                        String::from_utf8_lossy(body),
                        found[slot]
                    );
                }
            }
            Err(_) if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_err() => {
                prop_assert_eq!(ours, Err(NotJson));
            }
            // Well-formed but not a `Value` (invalid UTF-8 in a string, a lone
            // surrogate escape): either answer is fine.
            Err(_) => {}
        }
        Ok(())
    }

    fn probe_for(paths: &[(Vec<Step>, Kind)]) -> (Probe, Vec<usize>) {
        let mut probe = Probe::default();
        let slots = paths.iter().map(|(s, k)| probe.add(s, *k)).collect();
        (probe, slots)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// On any document serde_json writes (compact or pretty), the probe finds exactly
        /// what a walk over the parsed `Value` finds.
        #[test]
        fn agrees_with_serde_json_on_documents(doc in json(), pretty in any::<bool>()) {
            let body = if pretty {
                serde_json::to_vec_pretty(&doc).unwrap()
            } else {
                serde_json::to_vec(&doc).unwrap()
            };
            let paths = paths();
            let (probe, slots) = probe_for(&paths);
            let found = probe.run(&body).unwrap();
            for ((steps, kind), slot) in paths.iter().zip(slots) {
                let want = oracle(&doc, steps, *kind);
                prop_assert!(same(&found[slot], &want), "{steps:?}: {:?} vs {want:?}", found[slot]);
            }
        }

        /// A stream's merge equals merging what `run` finds in each event on its own: the
        /// reused scratch row leaks nothing from one event into the next.
        #[test]
        fn events_merge_as_if_each_were_run_alone(
            docs in proptest::collection::vec((json(), any::<bool>()), 0..6),
        ) {
            let paths = paths();
            let (probe, _) = probe_for(&paths);
            let mut body = Vec::new();
            let mut want = vec![Found::Absent; paths.len()];
            let mut any = false;
            for (doc, broken) in &docs {
                let mut data = serde_json::to_vec(doc).unwrap();
                if *broken {
                    data.push(b'}');
                }
                body.extend_from_slice(b"data: ");
                body.extend_from_slice(&data);
                body.extend_from_slice(b"\n\n");
                let Ok(found) = probe.run(&data) else { continue };
                any = true;
                for (cell, new) in want.iter_mut().zip(found) {
                    match (&mut *cell, new) {
                        (_, Found::Absent | Found::Null) => {}
                        (Found::Numbers(acc), Found::Numbers(more)) => acc.extend(more),
                        (Found::NotNumbers, _) => {}
                        (cell, new) => *cell = new,
                    }
                }
            }
            body.extend_from_slice(b"data: [DONE]\n\n");
            let got = probe.run_events(&body);
            if any {
                prop_assert_eq!(got.unwrap(), want);
            } else {
                prop_assert_eq!(got, Err(NotJson));
            }
        }

        /// On damaged bytes: what serde_json parses, the probe parses the same; what
        /// serde_json refuses even to skip, the probe refuses.
        #[test]
        fn agrees_with_serde_json_on_damaged_bytes(
            doc in json(),
            cuts in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let mut body = serde_json::to_vec(&doc).unwrap();
            damage(&mut body, &cuts);
            agrees_on_bytes(&body)?;
        }

        /// Arrays of objects whose keys repeat from one element to the next, as a logprob
        /// list's do, with what must not pass for the key remembered from the element
        /// before: a key left out or moved up, one that extends another (`logprob`,
        /// `logprobs`), the same text escaped (`cb`, `\u0063b`), an escape inside. What the
        /// probe finds is what serde_json's `Value` holds, under `/a/*`, under a
        /// completion's logprobs, and under both in one document.
        #[test]
        fn repeated_keys_agree_with_serde_json(
            objects in proptest::collection::vec(
                (
                    any::<bool>(),
                    proptest::sample::subsequence((0..9usize).collect::<Vec<_>>(), 0..=9),
                    proptest::collection::vec(-9i32..9, 9),
                    // Per member, whitespace or none around its comma and its colon.
                    proptest::collection::vec(0u8..16, 9),
                    // Keys as in the object before (bit 0), and its whitespace (bit 1): the
                    // same gaps again, as a list's objects mostly are.
                    0u8..4,
                ),
                0..6,
            ),
            cuts in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..3),
        ) {
            // Raw and escaped spellings; within one spelling no two keys decode alike.
            const KEYS: [[&str; 2]; 9] = [
                ["b", "b"],
                ["c", "c"],
                ["bc", "bc"],
                ["cb", "\\u0063b"],
                ["b\\n", "b\\n"],
                ["logprob", "logprob"],
                ["logprobs", "logprob\\u0073"],
                ["top_logprobs", "top_logprobs"],
                ["x", "x"],
            ];
            let mut objects = objects;
            for at in 1..objects.len() {
                let (before, this) = objects.split_at_mut(at);
                let (last, this) = (&before[at - 1], &mut this[0]);
                if this.4 & 1 != 0 {
                    (this.0, this.1) = (last.0, last.1.clone());
                }
                if this.4 & 2 != 0 {
                    this.3 = last.3.clone();
                }
            }
            let items: Vec<String> = objects
                .iter()
                .map(|(escaped, picks, values, spaces, _)| {
                    let members: String = picks
                        .iter()
                        .enumerate()
                        .map(|(at, &k)| {
                            let key = KEYS[k][usize::from(*escaped)];
                            let ws = |bit: u8| if spaces[at] & (1 << bit) != 0 { " " } else { "" };
                            let comma = if at == 0 {
                                String::new()
                            } else {
                                format!("{},{}", ws(0), ws(1))
                            };
                            let (colon, value) = (format!("{}:{}", ws(2), ws(3)), values[k]);
                            match k {
                                8 => format!(r#"{comma}"{key}"{colon}{{"b":{value}}}"#),
                                _ => format!(r#"{comma}"{key}"{colon}{value}"#),
                            }
                        })
                        .collect();
                    format!("{{{members}}}")
                })
                .collect();
            let items = items.join(",");
            let paths = paths();
            let (probe, slots) = probe_for(&paths);
            for body in [
                format!(r#"{{"a":[{items}]}}"#),
                format!(r#"{{"choices":[{{"logprobs":{{"content":[{items}]}}}}]}}"#),
                // Two lists one after the other: what is remembered from one node's
                // objects must not serve the other's.
                format!(r#"{{"a":[{items}],"choices":[{{"logprobs":{{"content":[{items}]}}}}]}}"#),
            ] {
                let doc: Value = serde_json::from_str(&body).unwrap();
                let found = probe.run(body.as_bytes()).unwrap();
                for ((steps, kind), slot) in paths.iter().zip(&slots) {
                    let want = oracle(&doc, steps, *kind);
                    prop_assert!(same(&found[*slot], &want), "{body} {steps:?}: {:?} vs {want:?}", found[*slot]);
                }
                // Bytes changed anywhere, the remembered gaps included.
                let mut damaged = body.into_bytes();
                damage(&mut damaged, &cuts);
                agrees_on_bytes(&damaged)?;
            }
        }

        /// Arrays of integers, where the eight-byte path steps over them (a skipped member,
        /// an array inside a skipped value), right and wrong every way it checks: leading
        /// zeros, `,,`, `,]`, signs, fractions, whitespace, a missing or extra `]`, a run
        /// ending on a word boundary or near the body's end. The probe accepts exactly what
        /// serde_json accepts.
        #[test]
        fn integer_arrays_agree_with_serde_json(
            inner in prop_oneof![
                "[0-9,]{0,40}",
                proptest::collection::vec("0|[1-9][0-9]{0,17}", 0..12).prop_map(|n| n.join(",")),
            ],
            tail in "[] ,.e0-9-]{0,3}",
            pad in 0usize..9,
        ) {
            let (probe, slots) = probe_for(&paths());
            let confidence = slots[0];
            let skip = " ".repeat(pad);
            for body in [
                format!(r#"{{"skip{skip}":[{inner}{tail}],"confidence":1}}"#),
                format!(r#"{{"skip{skip}":{{"x":[{inner}{tail}]}},"confidence":1}}"#),
                format!(r#"{{"skip{skip}":[[{inner}{tail}]],"confidence":1}}"#),
                // The `]` near the end: fewer than eight bytes left.
                format!(r#"{{"confidence":1,"skip{skip}":[{inner}{tail}]}}"#),
            ] {
                let ours = probe.run(body.as_bytes());
                match serde_json::from_str::<Value>(&body) {
                    Ok(_) => {
                        let found = ours.map_err(|_| TestCaseError::fail(format!("refused {body}")))?;
                        prop_assert_eq!(&found[confidence], &Found::Number(1.0), "{}", body);
                    }
                    Err(_) => prop_assert_eq!(ours, Err(NotJson), "{}", body),
                }
            }
        }
    }

    fn read_number(text: &str) -> Result<f64, NotJson> {
        let mut out = [];
        let mut scan = Scan {
            b: text.as_bytes(),
            i: 0,
            depth: 0,
            out: &mut out,
            shape: Shape::default(),
        };
        let n = scan.number_value()?;
        if scan.i == text.len() {
            Ok(n)
        } else {
            Err(NotJson)
        }
    }

    proptest! {
        /// The quotient path is exact across its whole domain, where Clinger's is not.
        #[test]
        fn quotients_match_str_parse(m in any::<u64>(), k in 0u32..30) {
            let want: f64 = format!("{m}e-{k}").parse().unwrap();
            match quotient(m, k) {
                Some(got) => prop_assert_eq!(got.to_bits(), want.to_bits(), "{}e-{}", m, k),
                None => prop_assert!(m == 0 || k == 0 || k > 27),
            }
        }

        /// Logprob-shaped numbers (up to 19 significant digits) read as `str::parse` reads them.
        #[test]
        fn long_fractions_match_str_parse(negative in any::<bool>(), int in 0u32..40, frac in "[0-9]{15,19}") {
            let text = format!("{}{int}.{frac}", if negative { "-" } else { "" });
            let want: f64 = text.parse().unwrap();
            prop_assert_eq!(read_number(&text).map(f64::to_bits), Ok(want.to_bits()), "{}", text);
        }

        /// The fast path is exact: whenever it answers, it answers what `str::parse` does.
        #[test]
        fn exact_numbers_match_str_parse(
            negative in any::<bool>(),
            int in "0|[1-9][0-9]{0,19}",
            frac in proptest::option::of("[0-9]{1,20}"),
            exp in proptest::option::of(-40i32..40),
        ) {
            let mut text = format!("{}{int}", if negative { "-" } else { "" });
            if let Some(f) = frac { text.push('.'); text.push_str(&f); }
            if let Some(e) = exp { text.push_str(&format!("e{e}")); }
            let want: f64 = text.parse().unwrap();
            let got = read_number(&text);
            prop_assert_eq!(got.map(f64::to_bits), want.is_finite().then_some(want.to_bits()).ok_or(NotJson), "{}", text);
        }

        #[test]
        fn every_written_double_reads_back(f in any::<f64>().prop_filter("finite", |f| f.is_finite())) {
            let text = serde_json::to_string(&f).unwrap();
            prop_assert_eq!(read_number(&text).unwrap().to_bits(), f.to_bits(), "{}", text);
        }
    }

    /// The quotients whose truncated bits sit exactly on a rounding midpoint while the
    /// division left a remainder: only the sticky bit tells them from true ties. They are
    /// about one in 50,000 at large `k`, so they are searched for rather than hoped for.
    #[test]
    fn quotients_just_above_a_midpoint_round_up() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut found = 0;
        for k in 20..=27u32 {
            let five = u128::from(5u64.pow(k));
            for _ in 0..300_000 {
                let m = rng.u64(1 << 53..);
                let n = u128::from(m) << quotient_shift(m, 5u64.pow(k));
                let (q, r) = (n / five, n % five);
                let below = 128 - q.leading_zeros() - 53;
                if r == 0 || q & ((1 << below) - 1) != 1 << (below - 1) {
                    continue;
                }
                found += 1;
                let want: f64 = format!("{m}e-{k}").parse().unwrap();
                assert_eq!(
                    quotient(m, k).map(f64::to_bits),
                    Some(want.to_bits()),
                    "{m}e-{k}"
                );
            }
        }
        assert!(found >= 20, "only {found} midpoint cases");
    }

    #[test]
    fn eight_digits_reads_only_eight_ascii_digits() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..10_000 {
            let n = rng.u64(0..100_000_000);
            let text = format!("{n:08}");
            assert_eq!(eight_digits(text.as_bytes()), Some(n), "{text}");
            // Any one byte that is not a digit, the neighbours of '0' and '9' included.
            let mut bad = text.into_bytes();
            let at = rng.usize(0..8);
            bad[at] = loop {
                let c = rng.u8(..);
                if !c.is_ascii_digit() {
                    break c;
                }
            };
            assert_eq!(eight_digits(&bad), None, "{bad:?}");
            bad[at] = if rng.bool() { b'/' } else { b':' };
            assert_eq!(eight_digits(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn numbers_follow_json_grammar() {
        let mut probe = Probe::default();
        let slot = probe.add(&steps("/n"), Kind::One);
        for ok in [
            "0",
            "-0",
            "1.5",
            "-1e3",
            "1E+2",
            "2e-2",
            "12345678901234567890123",
        ] {
            let body = format!(r#"{{"n":{ok}}}"#);
            let want: f64 = ok.parse().unwrap();
            assert_eq!(
                probe.run(body.as_bytes()).unwrap()[slot],
                Found::Number(want),
                "{ok}"
            );
            // And skipped where no slot wants it.
            let body = format!(r#"{{"x":{ok},"n":1}}"#);
            assert!(probe.run(body.as_bytes()).is_ok(), "{ok}");
        }
        for bad in [
            "01", "+1", "1.", ".5", "1e", "-", "1e400", "NaN", "Infinity", "0x1", "1.e3",
        ] {
            let body = format!(r#"{{"n":{bad}}}"#);
            assert_eq!(probe.run(body.as_bytes()), Err(NotJson), "{bad}");
            assert!(
                serde_json::from_slice::<Value>(body.as_bytes()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn strings_and_escapes() {
        let mut probe = Probe::default();
        let slot = probe.add(&steps("/s"), Kind::One);
        let cases: [(&[u8], Option<&str>); 8] = [
            (br#"{"s":"a\"b\\c\/\n\u00e9"}"#, Some("a\"b\\c/\né")),
            (br#"{"s":"\ud83d\ude00"}"#, Some("😀")),
            (br#"{"s":"\ud83d"}"#, None),
            (br#"{"s":"\x"}"#, None),
            (br#"{"s":"\u12"}"#, None),
            (b"{\"s\":\"a\nb\"}", None),
            (b"{\"s\":\"\xff\"}", None),
            (
                br#"{"\u0073":"by an escaped key"}"#,
                Some("by an escaped key"),
            ),
        ];
        for (body, want) in cases {
            let got = probe.run(body).map(|f| f[slot].clone());
            assert_eq!(
                got,
                want.map(|w| Found::Str(w.into())).ok_or(NotJson),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // Skipped strings are checked for structure, not for UTF-8 (as serde's IgnoredAny),
        // and so are keys that hold no escape and match no wanted key.
        assert!(probe.run(b"{\"x\":\"\xff\",\"s\":\"ok\"}").is_ok());
        assert_eq!(
            probe
                .run(b"{\"\xff\":1,\"s\":\"ok\"}")
                .map(|f| f[slot].clone()),
            Ok(Found::Str("ok".into()))
        );
        assert_eq!(probe.run(b"{\"\\ud800\":1,\"s\":\"ok\"}"), Err(NotJson));
        assert_eq!(probe.run(b"{\"x\":\"a\x01\"}"), Err(NotJson));
    }

    #[test]
    fn nesting_is_capped_like_serde_json() {
        let probe = probe_for(&paths()).0;
        for depth in [1usize, 64, 127, 128, 129, 100_000] {
            let body = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            let serde = serde_json::from_str::<Value>(&body).is_ok();
            assert_eq!(probe.run(body.as_bytes()).is_ok(), serde, "depth {depth}");
        }
        // The innermost array stepped over from a walked one (the short ways for `[]` and
        // for a flat array) counts against the cap too.
        for depth in [3usize, 127, 128, 129] {
            let mut probe = Probe::default();
            probe.add(&vec![Step::Each; depth - 2], Kind::Many);
            for innermost in ["", "0"] {
                let body = format!("{}{innermost}{}", "[".repeat(depth), "]".repeat(depth));
                let serde = serde_json::from_str::<Value>(&body).is_ok();
                assert_eq!(
                    probe.run(body.as_bytes()).is_ok(),
                    serde,
                    "depth {depth}, innermost [{innermost}]"
                );
            }
        }
    }

    #[test]
    fn plain_string_bytes_are_found_at_every_offset() {
        // The eight-bytes-at-a-time search must see a special byte in any lane.
        for len in 0..40 {
            for special in [b'"', b'\\', 0x00, 0x1f] {
                let mut s = vec![b'a'; len];
                s.push(special);
                s.extend_from_slice(b"tail");
                assert_eq!(find_string_special(&s, 0), len, "{len} {special:#x}");
            }
            let s = vec![0xe9u8; len];
            assert_eq!(find_string_special(&s, 0), len, "non-ASCII is plain");
        }
    }
}
