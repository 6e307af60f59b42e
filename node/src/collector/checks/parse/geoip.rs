//! Countries of client addresses, from a MaxMind-format database (GeoLite2-Country,
//! GeoIP2-Country or -City, DB-IP's country lite in MMDB format, ...).
//!
//! [`GeoDb`] wraps a `maxminddb::Reader` already in memory (opening the file is the
//! caller's I/O) and answers the ISO 3166 code of an address as text from an access
//! log. Decisions:
//! - The code is `country.iso_code`, else `registered_country.iso_code` (GeoLite2
//!   has ranges, e.g. anycast or satellite providers, with only the latter).
//! - An IPv4-mapped IPv6 address (`::ffff:192.0.2.7`, what a dual-stack listener
//!   logs for IPv4 clients) is looked up as the IPv4 address.
//! - [`UNKNOWN`]: the address is not text of an IP address, is not in the database,
//!   its record has no country, its code is not a short alphanumeric token (it
//!   becomes a label value), or it is IPv6 in an IPv4-only database.
//! - [`GeoDb::count`] also puts under [`UNKNOWN`] the requests whose address was not
//!   kept (the access statistics keep a bounded number of distinct addresses), so
//!   the per-country counts add up to the requests that logged an address.
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use maxminddb::{path, Reader};

/// The country of an address the database cannot place.
pub const UNKNOWN: &str = "unknown";

/// Longest code accepted as a country label (ISO 3166-1 alpha-2 is 2; a few
/// databases use longer private codes).
const MAX_CODE_LEN: usize = 8;

/// Bytes [`GeoDb::from_bytes`] cannot read as a database.
#[cfg(test)]
#[derive(Debug, thiserror::Error)]
#[error("not a MaxMind DB: {0}")]
pub struct NotAGeoDb(maxminddb::MaxMindDbError);

/// A MaxMind-format database in memory.
pub struct GeoDb {
    reader: Reader<Vec<u8>>,
}

impl GeoDb {
    pub fn new(reader: Reader<Vec<u8>>) -> GeoDb {
        GeoDb { reader }
    }

    /// Reads a database from its bytes (tests; the check opens the file with
    /// `Reader::open_readfile`).
    #[cfg(test)]
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GeoDb, NotAGeoDb> {
        Reader::from_source(bytes)
            .map(GeoDb::new)
            .map_err(NotAGeoDb)
    }

    /// `database_type` of the metadata, e.g. "GeoLite2-Country".
    #[cfg(test)]
    pub fn database_type(&self) -> &str {
        &self.reader.metadata().database_type
    }

    /// The ISO code of the country of `addr` (text as logged), or None.
    pub fn country(&self, addr: &str) -> Option<String> {
        let ip: IpAddr = addr.trim().parse().ok()?;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        let found = self.reader.lookup(ip).ok()?;
        if !found.has_data() {
            return None;
        }
        let code = |field: &str| -> Option<String> {
            found
                .decode_path::<String>(&path![field, "iso_code"])
                .ok()
                .flatten()
                .and_then(|c| clean_code(&c))
        };
        code("country").or_else(|| code("registered_country"))
    }

    /// Requests per country code of `(address, requests)` pairs; `unattributed`
    /// requests (addresses not kept) count as [`UNKNOWN`]. Empty input: empty map.
    pub fn count<'a>(
        &self,
        addrs: impl IntoIterator<Item = (&'a str, u64)>,
        unattributed: u64,
    ) -> BTreeMap<String, u64> {
        let mut out: BTreeMap<String, u64> = BTreeMap::new();
        for (addr, n) in addrs {
            let code = self.country(addr).unwrap_or_else(|| UNKNOWN.to_string());
            *out.entry(code).or_default() += n;
        }
        if unattributed > 0 {
            *out.entry(UNKNOWN.to_string()).or_default() += unattributed;
        }
        out
    }
}

impl fmt::Debug for GeoDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.reader.metadata();
        f.debug_struct("GeoDb")
            .field("database_type", &m.database_type)
            .field("ip_version", &m.ip_version)
            .field("build_epoch", &m.build_epoch)
            .finish()
    }
}

/// An ISO code as a label value: short, ASCII alphanumeric, upper case.
fn clean_code(code: &str) -> Option<String> {
    let c = code.trim();
    let ok =
        !c.is_empty() && c.len() <= MAX_CODE_LEN && c.chars().all(|ch| ch.is_ascii_alphanumeric());
    ok.then(|| c.to_ascii_uppercase())
}

/// The MaxMind DB writer for tests lives in the test harness (one copy for the
/// node's unit tests and the end-to-end tests).
#[cfg(test)]
pub(crate) mod testdb {
    pub use herd_tests::mmdb::*;
}

#[cfg(test)]
mod tests {
    use super::testdb::{country, s, MmdbWriter as Writer, V};
    use super::*;

    #[test]
    fn written_databases_are_valid() {
        for version in [4u16, 6] {
            let bytes = testdb::sample(version);
            let reader = Reader::from_source(bytes).unwrap();
            reader.verify().unwrap();
            let m = reader.metadata();
            assert_eq!(m.ip_version, version);
            assert_eq!(m.record_size, 24);
            assert_eq!(m.database_type, "Herd-Test-Country");
            assert_eq!(m.languages, vec!["en".to_string()]);
            let networks = reader.networks(Default::default()).unwrap().count();
            assert_eq!(networks, if version == 6 { 5 } else { 4 });
            let de = reader.lookup("127.0.0.1".parse().unwrap()).unwrap();
            assert_eq!(de.network().unwrap().to_string(), "127.0.0.0/24");
            let city: maxminddb::geoip2::Country = de.decode().unwrap().unwrap();
            assert_eq!(city.country.iso_code, Some("DE"));
            assert_eq!(city.country.names.english, Some("Germany"));
        }
    }

    #[test]
    fn countries_of_addresses() {
        let db = GeoDb::from_bytes(testdb::sample(6)).unwrap();
        assert_eq!(db.database_type(), "Herd-Test-Country");
        let c = |a: &str| db.country(a);
        assert_eq!(c("127.0.0.1").as_deref(), Some("DE"));
        assert_eq!(c("127.0.0.255").as_deref(), Some("DE"));
        assert_eq!(c(" 127.0.0.9 ").as_deref(), Some("DE"));
        assert_eq!(c("127.0.1.1"), None, "outside the /24");
        assert_eq!(c("10.1.2.3").as_deref(), Some("US"));
        assert_eq!(c("10.255.255.255").as_deref(), Some("US"));
        assert_eq!(c("11.0.0.1"), None);
        assert_eq!(c("::ffff:127.0.0.5").as_deref(), Some("DE"), "IPv4-mapped");
        assert_eq!(c("::ffff:10.0.0.1").as_deref(), Some("US"));
        assert_eq!(c("2001:db8::1").as_deref(), Some("FR"));
        assert_eq!(c("2001:db9::1"), None);
        assert_eq!(
            c("192.0.2.7").as_deref(),
            Some("NL"),
            "registered country, upper-cased"
        );
        assert_eq!(c("198.51.100.4"), None, "a record without a country");
        for bad in [
            "",
            "-",
            "unix:",
            "localhost",
            "127.0.0.1:8080",
            "[::1]",
            "fe80::1%eth0",
            "999.1.1.1",
        ] {
            assert_eq!(c(bad), None, "{bad:?}");
        }

        // An IPv4-only database answers no IPv6 address (and does not fail).
        let v4 = GeoDb::from_bytes(testdb::sample(4)).unwrap();
        assert_eq!(v4.country("127.0.0.3").as_deref(), Some("DE"));
        assert_eq!(v4.country("10.9.9.9").as_deref(), Some("US"));
        assert_eq!(v4.country("::ffff:127.0.0.3").as_deref(), Some("DE"));
        assert_eq!(v4.country("2001:db8::1"), None);
        assert!(format!("{v4:?}").contains("ip_version: 4"));
    }

    #[test]
    fn counts_per_country() {
        let db = GeoDb::from_bytes(testdb::sample(6)).unwrap();
        let addrs = [
            ("127.0.0.1", 5u64),
            ("127.0.0.2", 2),
            ("10.0.0.7", 3),
            ("2001:db8::5", 1),
            ("203.0.113.9", 4),
            ("garbage", 1),
        ];
        let counts = db.count(addrs, 6);
        let want: BTreeMap<String, u64> = [("DE", 7), ("US", 3), ("FR", 1), ("unknown", 11)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(counts, want);
        assert!(db.count([], 0).is_empty());
    }

    #[test]
    fn odd_codes_and_bad_files() {
        let mut w = Writer::new(6);
        w.insert("127.0.0.0", 25, &country("de\"}", "x"))
            .insert("127.0.0.128", 25, &country(&"A".repeat(20), "x"))
            .insert("10.0.0.0", 8, &V::Map(vec![("country".into(), s("DE"))]));
        let db = GeoDb::from_bytes(w.build("Odd")).unwrap();
        assert_eq!(db.country("127.0.0.1"), None, "not a token");
        assert_eq!(db.country("127.0.0.200"), None, "too long");
        assert_eq!(db.country("10.0.0.1"), None, "country is not a map");

        let e = GeoDb::from_bytes(b"not a database at all".to_vec())
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a MaxMind DB"), "{e}");
        let mut cut = testdb::sample(6);
        cut.truncate(40);
        assert!(GeoDb::from_bytes(cut).is_err());
        assert_eq!(clean_code(" us "), Some("US".into()));
    }
}
