//! A small writer of MaxMind DB files (format 2.0,
//! <https://maxmind.github.io/MaxMind-DB/>) for the nginx `geoip_db` tests: a binary
//! search tree of 24-bit records, a 16-byte separator, the data section, then the
//! metadata map after `\xAB\xCD\xEFMaxMind.com`. IPv4 or IPv6 trees (IPv4 networks
//! at `::a.b.c.d` in an IPv6 tree, as MaxMind does). The node's own unit tests use
//! it too (`testdb` in `geoip.rs`).
use std::net::IpAddr;

/// A value of the data section.
#[derive(Debug, Clone)]
pub enum V {
    Str(String),
    U16(u16),
    U32(u32),
    U64(u64),
    Map(Vec<(String, V)>),
    Arr(Vec<V>),
}

pub fn s(v: &str) -> V {
    V::Str(v.to_string())
}

pub fn map(pairs: &[(&str, V)]) -> V {
    V::Map(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    )
}

/// `{"country": {"iso_code": CODE, "names": {"en": NAME}}}`, as in GeoLite2-Country.
pub fn country(code: &str, name: &str) -> V {
    map(&[(
        "country",
        map(&[("iso_code", s(code)), ("names", map(&[("en", s(name))]))]),
    )])
}

#[derive(Clone, Copy)]
enum Rec {
    Empty,
    Node(usize),
    Data(usize),
}

pub struct MmdbWriter {
    ip_version: u16,
    nodes: Vec<[Rec; 2]>,
    data: Vec<u8>,
}

impl MmdbWriter {
    /// An empty tree for `ip_version` 4 or 6.
    pub fn new(ip_version: u16) -> MmdbWriter {
        assert!(ip_version == 4 || ip_version == 6, "ip_version 4 or 6");
        MmdbWriter {
            ip_version,
            nodes: vec![[Rec::Empty, Rec::Empty]],
            data: Vec::new(),
        }
    }

    /// Maps `network/prefix` (e.g. "127.0.0.0", 24) to `value`. Networks must not nest.
    pub fn insert(&mut self, network: &str, prefix: u8, value: &V) -> &mut Self {
        let ip: IpAddr = network.parse().expect("an IP address");
        let (bits, depth): (u128, u8) = match (ip, self.ip_version) {
            (IpAddr::V4(v4), 4) => (u128::from(u32::from(v4)) << 96, prefix),
            (IpAddr::V4(v4), _) => (u128::from(u32::from(v4)), 96 + prefix),
            (IpAddr::V6(v6), 6) => (u128::from(v6), prefix),
            (IpAddr::V6(_), _) => panic!("IPv6 network in an IPv4 tree"),
        };
        let max_depth = if self.ip_version == 4 { 32 } else { 128 };
        assert!(depth >= 1 && depth <= max_depth, "prefix out of range");
        let offset = self.data.len();
        encode(value, &mut self.data);
        let mut node = 0usize;
        for i in 0..depth {
            let bit = ((bits >> (127 - u32::from(i))) & 1) as usize;
            if i + 1 == depth {
                assert!(matches!(self.nodes[node][bit], Rec::Empty), "networks nest");
                self.nodes[node][bit] = Rec::Data(offset);
                break;
            }
            node = match self.nodes[node][bit] {
                Rec::Node(n) => n,
                Rec::Empty => {
                    self.nodes.push([Rec::Empty, Rec::Empty]);
                    let n = self.nodes.len() - 1;
                    self.nodes[node][bit] = Rec::Node(n);
                    n
                }
                Rec::Data(_) => panic!("networks nest"),
            };
        }
        self
    }

    /// The whole file: search tree, 16-byte separator, data, metadata.
    pub fn build(&self, database_type: &str) -> Vec<u8> {
        let count = self.nodes.len();
        let mut out = Vec::new();
        for node in &self.nodes {
            for rec in node {
                let v = match *rec {
                    Rec::Empty => count,
                    Rec::Node(n) => n,
                    Rec::Data(off) => count + 16 + off,
                };
                assert!(v < 1 << 24, "too big for 24-bit records");
                out.extend_from_slice(&(v as u32).to_be_bytes()[1..]);
            }
        }
        out.extend_from_slice(&[0u8; 16]);
        out.extend_from_slice(&self.data);
        out.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
        let meta = map(&[
            ("node_count", V::U32(count as u32)),
            ("record_size", V::U16(24)),
            ("ip_version", V::U16(self.ip_version)),
            ("database_type", s(database_type)),
            ("languages", V::Arr(vec![s("en")])),
            ("binary_format_major_version", V::U16(2)),
            ("binary_format_minor_version", V::U16(0)),
            ("build_epoch", V::U64(1_700_000_000)),
            (
                "description",
                map(&[("en", s("Herd end-to-end test database"))]),
            ),
        ]);
        encode(&meta, &mut out);
        out
    }
}

/// Control byte(s) of a field: type (extended when above 7) and size.
fn control(kind: u8, size: usize, out: &mut Vec<u8>) {
    let (low, extra): (u8, Vec<u8>) = if size < 29 {
        (size as u8, vec![])
    } else if size < 29 + 256 {
        (29, vec![(size - 29) as u8])
    } else if size < 285 + 65_536 {
        (30, ((size - 285) as u16).to_be_bytes().to_vec())
    } else {
        (31, ((size - 65_821) as u32).to_be_bytes()[1..].to_vec())
    };
    if kind <= 7 {
        out.push((kind << 5) | low);
    } else {
        out.push(low);
        out.push(kind - 7);
    }
    out.extend(extra);
}

fn uint(kind: u8, v: u64, out: &mut Vec<u8>) {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    control(kind, 8 - skip, out);
    out.extend_from_slice(&bytes[skip..]);
}

/// Appends `v` in the data section's encoding.
pub fn encode(v: &V, out: &mut Vec<u8>) {
    match v {
        V::Str(t) => {
            control(2, t.len(), out);
            out.extend_from_slice(t.as_bytes());
        }
        V::U16(n) => uint(5, u64::from(*n), out),
        V::U32(n) => uint(6, u64::from(*n), out),
        V::U64(n) => uint(9, *n, out),
        V::Map(pairs) => {
            control(7, pairs.len(), out);
            for (k, val) in pairs {
                encode(&V::Str(k.clone()), out);
                encode(val, out);
            }
        }
        V::Arr(items) => {
            control(11, items.len(), out);
            for item in items {
                encode(item, out);
            }
        }
    }
}

/// The database the tests use: 127.0.0.0/24 → DE, 10.0.0.0/8 → US,
/// 192.0.2.0/24 → only a registered country (NL), 198.51.100.0/24 → a record
/// without any country, 2001:db8::/32 → FR (IPv6 trees only).
pub fn sample(ip_version: u16) -> Vec<u8> {
    let mut w = MmdbWriter::new(ip_version);
    w.insert("127.0.0.0", 24, &country("DE", "Germany"))
        .insert("10.0.0.0", 8, &country("US", "United States"))
        .insert(
            "192.0.2.0",
            24,
            &map(&[("registered_country", map(&[("iso_code", s("nl"))]))]),
        )
        .insert(
            "198.51.100.0",
            24,
            &map(&[("continent", map(&[("code", s("EU"))]))]),
        );
    if ip_version == 6 {
        w.insert("2001:db8::", 32, &country("FR", "France"));
    }
    w.build("Herd-Test-Country")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_one_network_ipv4_tree() {
        let mut w = MmdbWriter::new(4);
        w.insert("127.0.0.0", 24, &country("DE", "Germany"));
        let bytes = w.build("Test");
        // 24 nodes down to the /24, 6 bytes each.
        assert_eq!(&bytes[24 * 6..24 * 6 + 16], &[0u8; 16]);
        let marker = b"\xAB\xCD\xEFMaxMind.com";
        assert!(bytes.windows(marker.len()).any(|w| w == marker));
    }
}
