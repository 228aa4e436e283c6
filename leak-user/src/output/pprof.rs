//! A report as a pprof profile (`profile.proto`, gzipped): the format `go tool pprof`,
//! Pyroscope, Parca and Grafana read. Two sample types, as in Go's heap profiles:
//! `inuse_objects` (count) and `inuse_space` (bytes, the default). One sample per site; one
//! location per return address, whose lines are the frames inlined there, innermost first;
//! one mapping per module, marked as already symbolized.
//!
//! The protobuf is written by hand: a profile uses varints, length-delimited fields and
//! packed repeated integers only.
use std::io::{self, Write as _};

use hashbrown::HashMap;

use crate::analysis::report::{Report, StackFrame};

/// Protobuf wire types.
const VARINT: u64 = 0;
const LEN: u64 = 2;

/// A protobuf message being written.
#[derive(Default)]
struct Message(Vec<u8>);

impl Message {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            // Low 7 bits with the continuation bit: the truncation is the point.
            #[expect(clippy::cast_possible_truncation, reason = "7 bits at a time")]
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        #[expect(clippy::cast_possible_truncation, reason = "v < 0x80 here")]
        self.0.push(v as u8);
    }

    fn key(&mut self, field: u64, wire: u64) {
        self.varint((field << 3) | wire);
    }

    /// An integer field (proto3: zero is the default and is left out).
    fn uint(&mut self, field: u64, v: u64) {
        if v != 0 {
            self.key(field, VARINT);
            self.varint(v);
        }
    }

    /// A signed integer field (`int64`: two's complement as a varint).
    fn int(&mut self, field: u64, v: i64) {
        self.uint(field, u64::from_ne_bytes(v.to_ne_bytes()));
    }

    fn bytes(&mut self, field: u64, b: &[u8]) {
        self.key(field, LEN);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }

    fn message(&mut self, field: u64, m: &Self) {
        self.bytes(field, &m.0);
    }

    /// A packed repeated integer field.
    fn packed(&mut self, field: u64, values: impl IntoIterator<Item = u64>) {
        let mut body = Self::default();
        for v in values {
            body.varint(v);
        }
        if !body.0.is_empty() {
            self.bytes(field, &body.0);
        }
    }
}

/// Interned strings: a profile refers to each by its index in `string_table`.
struct Strings {
    table: Vec<String>,
    index: HashMap<String, u64>,
}

impl Strings {
    fn new() -> Self {
        // Index 0 is the empty string, by the format's rule.
        Self { table: vec![String::new()], index: HashMap::from([(String::new(), 0)]) }
    }

    fn id(&mut self, s: &str) -> u64 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.table.len() as u64;
        self.table.push(s.to_owned());
        self.index.insert(s.to_owned(), i);
        i
    }
}

/// `profile.proto` field numbers.
mod field {
    pub const SAMPLE_TYPE: u64 = 1;
    pub const SAMPLE: u64 = 2;
    pub const MAPPING: u64 = 3;
    pub const LOCATION: u64 = 4;
    pub const FUNCTION: u64 = 5;
    pub const STRING_TABLE: u64 = 6;
    pub const TIME_NANOS: u64 = 9;
    pub const DURATION_NANOS: u64 = 10;
    pub const PERIOD_TYPE: u64 = 11;
    pub const PERIOD: u64 = 12;
    pub const DEFAULT_SAMPLE_TYPE: u64 = 14;
}

/// The uncompressed `profile.proto` encoding of `report`.
#[must_use]
pub fn encode(report: &Report) -> Vec<u8> {
    let mut strings = Strings::new();
    let mut profile = Message::default();
    let value_type = |strings: &mut Strings, ty: &str, unit: &str| {
        let mut m = Message::default();
        m.uint(1, strings.id(ty));
        m.uint(2, strings.id(unit));
        m
    };
    let objects = value_type(&mut strings, "inuse_objects", "count");
    profile.message(field::SAMPLE_TYPE, &objects);
    let space = value_type(&mut strings, "inuse_space", "bytes");
    profile.message(field::SAMPLE_TYPE, &space);

    let mut mappings: HashMap<String, u64> = HashMap::new();
    let mut functions: HashMap<(String, String), u64> = HashMap::new();
    let mut locations: HashMap<String, u64> = HashMap::new();
    let mut body = Message::default();
    for site in &report.sites {
        let mut ids = Vec::new();
        for frames in frames_by_address(&site.stack) {
            let address = &frames[0].address;
            if let Some(&id) = locations.get(address) {
                ids.push(id);
                continue;
            }
            let id = locations.len() as u64 + 1;
            locations.insert(address.clone(), id);
            ids.push(id);
            let mut location = Message::default();
            location.uint(1, id);
            if let Some(module) = frames[0].module.as_deref() {
                let next = mappings.len() as u64 + 1;
                let mapping = *mappings.entry(module.to_owned()).or_insert(next);
                if mapping == next {
                    let mut m = Message::default();
                    m.uint(1, mapping);
                    m.uint(5, strings.id(module));
                    // has_functions, has_filenames, has_line_numbers: already symbolized.
                    for f in [7, 8, 9] {
                        m.uint(f, 1);
                    }
                    body.message(field::MAPPING, &m);
                }
                location.uint(2, mapping);
            }
            location.uint(3, parse_hex(address));
            for frame in frames {
                let name = frame.name();
                let file = frame.file.as_deref().unwrap_or("").to_owned();
                let next = functions.len() as u64 + 1;
                let function = *functions.entry((name.clone(), file.clone())).or_insert(next);
                if function == next {
                    let mut f = Message::default();
                    f.uint(1, function);
                    f.uint(2, strings.id(&name));
                    f.uint(3, strings.id(&name));
                    f.uint(4, strings.id(&file));
                    body.message(field::FUNCTION, &f);
                }
                let mut line = Message::default();
                line.uint(1, function);
                line.int(2, frame.line.map_or(0, i64::from));
                location.message(4, &line);
            }
            body.message(field::LOCATION, &location);
        }
        let mut sample = Message::default();
        sample.packed(1, ids);
        sample.packed(2, [site.outstanding_allocs, site.outstanding_bytes]);
        if let Some(f) = &site.allocator_fn {
            let mut label = Message::default();
            label.uint(1, strings.id("allocator"));
            label.uint(2, strings.id(f));
            sample.message(3, &label);
        }
        profile.message(field::SAMPLE, &sample);
    }
    profile.0.extend_from_slice(&body.0);
    #[expect(clippy::cast_possible_truncation, reason = "ns since 1970 fit in i64 until 2262")]
    let ns = |s: f64| (s * 1e9) as i64;
    profile.int(field::TIME_NANOS, ns(report.window.end_unix_s));
    profile.int(field::DURATION_NANOS, ns(report.duration_s));
    let period = value_type(&mut strings, "space", "bytes");
    profile.message(field::PERIOD_TYPE, &period);
    // Sampled: one sample per mean bytes, as Go's heap profiles say (their 512 KiB).
    profile.uint(field::PERIOD, report.sampling.as_ref().map_or(0, |s| s.mean_bytes));
    profile.uint(field::DEFAULT_SAMPLE_TYPE, strings.id("inuse_space"));
    for s in &strings.table {
        profile.bytes(field::STRING_TABLE, s.as_bytes());
    }
    profile.0
}

/// Writes `report` as a gzipped profile (`profile.pb.gz`) to `w`.
///
/// # Errors
/// `w` failed.
pub fn write(report: &Report, w: &mut dyn io::Write) -> io::Result<()> {
    let mut gz = flate2::write::GzEncoder::new(w, flate2::Compression::default());
    gz.write_all(&encode(report))?;
    gz.finish()?;
    Ok(())
}

/// A stack's frames grouped by return address (inlined calls share one), innermost first.
fn frames_by_address(stack: &[StackFrame]) -> Vec<&[StackFrame]> {
    let mut groups = Vec::new();
    let mut start = 0;
    for i in 1..=stack.len() {
        if i == stack.len() || stack[i].address != stack[start].address {
            groups.push(&stack[start..i]);
            start = i;
        }
    }
    groups
}

fn parse_hex(address: &str) -> u64 {
    u64::from_str_radix(address.trim_start_matches("0x"), 16).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A decoded protobuf field: number and value (varint, or bytes).
    #[derive(Debug, PartialEq)]
    enum Value {
        Int(u64),
        Bytes(Vec<u8>),
    }

    fn read_varint(b: &[u8], at: &mut usize) -> u64 {
        let mut v = 0;
        let mut shift = 0;
        loop {
            let byte = b[*at];
            *at += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return v;
            }
            shift += 7;
        }
    }

    fn fields(b: &[u8]) -> Vec<(u64, Value)> {
        let mut at = 0;
        let mut out = Vec::new();
        while at < b.len() {
            let key = read_varint(b, &mut at);
            let value = match key & 7 {
                VARINT => Value::Int(read_varint(b, &mut at)),
                LEN => {
                    let n = usize::try_from(read_varint(b, &mut at)).unwrap();
                    at += n;
                    Value::Bytes(b[at - n..at].to_vec())
                }
                w => panic!("wire type {w}"),
            };
            out.push((key >> 3, value));
        }
        out
    }

    fn all(b: &[u8], field: u64) -> Vec<Vec<u8>> {
        fields(b)
            .into_iter()
            .filter(|(f, _)| *f == field)
            .map(|(_, v)| match v {
                Value::Bytes(b) => b,
                Value::Int(_) => panic!("field {field} is not bytes"),
            })
            .collect()
    }

    fn ints(b: &[u8], field: u64) -> Vec<u64> {
        fields(b)
            .into_iter()
            .filter(|(f, _)| *f == field)
            .map(|(_, v)| match v {
                Value::Int(i) => i,
                Value::Bytes(_) => panic!("field {field} is not an integer"),
            })
            .collect()
    }

    fn packed(b: &[u8]) -> Vec<u64> {
        let mut at = 0;
        let mut out = Vec::new();
        while at < b.len() {
            out.push(read_varint(b, &mut at));
        }
        out
    }

    #[test]
    fn varints_as_protobuf_writes_them() {
        let mut m = Message::default();
        m.varint(1);
        m.varint(300);
        m.varint(u64::MAX);
        assert_eq!(m.0[..3], [0x01, 0xac, 0x02]);
        assert_eq!(m.0.len(), 3 + 10);
        let mut m = Message::default();
        m.int(2, -1);
        assert_eq!(fields(&m.0), [(2, Value::Int(u64::MAX))]);
    }

    #[test]
    fn a_report_becomes_samples_locations_and_functions() {
        let report = crate::analysis::build::tests::sample_report();
        let pb = encode(&report);
        let strings: Vec<String> = all(&pb, field::STRING_TABLE)
            .into_iter()
            .map(|b| String::from_utf8(b).unwrap())
            .collect();
        assert_eq!(strings[0], "");
        let s = |i: u64| strings[usize::try_from(i).unwrap()].clone();
        // Sample types: objects then space, space the default.
        let types: Vec<(String, String)> = all(&pb, field::SAMPLE_TYPE)
            .iter()
            .map(|t| (s(ints(t, 1)[0]), s(ints(t, 2)[0])))
            .collect();
        assert_eq!(
            types,
            [("inuse_objects".into(), "count".into()), ("inuse_space".into(), "bytes".into())]
        );
        assert_eq!(s(ints(&pb, field::DEFAULT_SAMPLE_TYPE)[0]), "inuse_space");
        // Functions by id, locations by id -> their functions, innermost first.
        let functions: HashMap<u64, String> =
            all(&pb, field::FUNCTION).iter().map(|f| (ints(f, 1)[0], s(ints(f, 2)[0]))).collect();
        let locations: HashMap<u64, Vec<String>> = all(&pb, field::LOCATION)
            .iter()
            .map(|l| {
                let lines =
                    all(l, 4).iter().map(|line| functions[&ints(line, 1)[0]].clone()).collect();
                (ints(l, 1)[0], lines)
            })
            .collect();
        let samples: Vec<(Vec<String>, Vec<u64>)> = all(&pb, field::SAMPLE)
            .iter()
            .map(|sample| {
                let ids = packed(&all(sample, 1)[0]);
                let stack = ids.iter().flat_map(|id| locations[id].clone()).collect();
                (stack, packed(&all(sample, 2)[0]))
            })
            .collect();
        let expected: Vec<(Vec<String>, Vec<u64>)> = report
            .sites
            .iter()
            .map(|site| {
                let stack = site.stack.iter().map(StackFrame::name).collect();
                (stack, vec![site.outstanding_allocs, site.outstanding_bytes])
            })
            .collect();
        assert_eq!(samples, expected);
        assert_eq!(samples.len(), 2);
        // Shared frames are one location and one function.
        let mains = functions.values().filter(|f| *f == "main").count();
        assert_eq!(mains, 1, "{functions:?}");
        // Every location is in a mapping that says it is symbolized.
        for m in all(&pb, field::MAPPING) {
            assert_eq!(ints(&m, 7), [1]);
            assert_eq!(s(ints(&m, 5)[0]), "demo");
        }
    }

    #[test]
    fn inlined_frames_share_a_location() {
        let frame = |f: &str, address: &str| StackFrame {
            function: Some(f.into()),
            module: None,
            file: None,
            line: None,
            address: address.to_owned(),
        };
        let stack = [frame("inner", "0x10"), frame("outer", "0x10"), frame("main", "0x20")];
        let groups: Vec<usize> = frames_by_address(&stack).iter().map(|g| g.len()).collect();
        assert_eq!(groups, [2, 1]);
        assert!(frames_by_address(&[]).is_empty());
    }
}
