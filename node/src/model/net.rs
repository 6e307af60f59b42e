//! The syntax of addresses every layer reads: `host[:port]` and http(s) URLs.
//! Pure parsing; nothing is resolved or connected here.

/// What is wrong with a `host[:port]` address (`address` is the trimmed text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("address is empty")]
    Empty,
    #[error("address {address:?}: missing ']'")]
    MissingBracket { address: String },
    #[error("address {address:?}: host is empty")]
    NoHost { address: String },
    #[error("address {address:?}: unexpected text after ']'")]
    TextAfterBracket { address: String },
    #[error("address {address:?}: port {port:?} is not 1-65535")]
    BadPort { address: String, port: String },
}

/// What is wrong with an http(s) URL given in config field `field`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("{field} {url:?} must start with http:// or https://")]
    NotHttp { field: String, url: String },
    #[error("{field} {url:?} has no host")]
    NoHost { field: String, url: String },
}

/// Host and port, if one is given, of `host`, `host:port`, `[v6]` or `[v6]:port`.
/// A bare IPv6 address (`::1`) has no port: one needs the brackets.
pub fn split_host_port(address: &str) -> Result<(String, Option<u16>), AddressError> {
    let a = address.trim();
    if a.is_empty() {
        return Err(AddressError::Empty);
    }
    let address = || a.to_string();
    if let Some(rest) = a.strip_prefix('[') {
        let (host, tail) = rest
            .split_once(']')
            .ok_or_else(|| AddressError::MissingBracket { address: address() })?;
        if host.is_empty() {
            return Err(AddressError::NoHost { address: address() });
        }
        let port = match tail.strip_prefix(':') {
            Some(p) => Some(parse_port(a, p)?),
            None if tail.is_empty() => None,
            None => return Err(AddressError::TextAfterBracket { address: address() }),
        };
        return Ok((host.to_string(), port));
    }
    match a.split_once(':') {
        None => Ok((a.to_string(), None)),
        // A bare IPv6 address: no port can be given without brackets.
        Some((_, rest)) if rest.contains(':') => Ok((a.to_string(), None)),
        Some(("", _)) => Err(AddressError::NoHost { address: address() }),
        Some((host, port)) => Ok((host.to_string(), Some(parse_port(a, port)?))),
    }
}

/// Host and port of an address, `default_port` where it gives none.
pub fn parse_host_port(address: &str, default_port: u16) -> Result<(String, u16), AddressError> {
    split_host_port(address).map(|(host, port)| (host, port.unwrap_or(default_port)))
}

fn parse_port(address: &str, port: &str) -> Result<u16, AddressError> {
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(AddressError::BadPort {
            address: address.to_string(),
            port: port.to_string(),
        }),
    }
}

/// Checks that `url` (the value of config field `field`) is an http or https URL
/// with a host.
pub fn check_http_url(field: &str, url: &str) -> Result<(), UrlError> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| UrlError::NotHttp {
            field: field.to_string(),
            url: url.to_string(),
        })?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() {
        return Err(UrlError::NoHost {
            field: field.to_string(),
            url: url.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        assert_eq!(parse_host_port("h", 22).unwrap(), ("h".into(), 22));
        assert_eq!(parse_host_port(" h:2222 ", 22).unwrap(), ("h".into(), 2222));
        assert_eq!(
            parse_host_port("[::1]:2200", 22).unwrap(),
            ("::1".into(), 2200)
        );
        assert_eq!(parse_host_port("[::1]", 465).unwrap(), ("::1".into(), 465));
        assert_eq!(parse_host_port("::1", 22).unwrap(), ("::1".into(), 22));
        assert_eq!(
            split_host_port("fe80::1").unwrap(),
            ("fe80::1".into(), None)
        );
        assert_eq!(split_host_port("h:7000").unwrap(), ("h".into(), Some(7000)));
        for bad in [
            "", "h:0", "h:x", "h:70000", "[::1", "[::1]x", ":22", "[]:22",
        ] {
            assert!(split_host_port(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn urls_need_http_and_a_host() {
        assert!(check_http_url("url", "http://h").is_ok());
        assert!(check_http_url("url", "https://h:8443/p?q#f").is_ok());
        assert_eq!(
            check_http_url("base_url", "ftp://h")
                .unwrap_err()
                .to_string(),
            "base_url \"ftp://h\" must start with http:// or https://"
        );
        assert_eq!(
            check_http_url("url", "https:///p").unwrap_err().to_string(),
            "url \"https:///p\" has no host"
        );
        assert!(
            check_http_url("url", "HTTP://h").is_err(),
            "scheme is lower case"
        );
    }
}
