//! The syntax of addresses every layer reads: `host[:port]` and http(s) URLs.
//! Pure parsing; nothing is resolved or connected here.

/// Host and port, if one is given, of `host`, `host:port`, `[v6]` or `[v6]:port`.
/// A bare IPv6 address (`::1`) has no port: one needs the brackets.
pub fn split_host_port(address: &str) -> Result<(String, Option<u16>), String> {
    let a = address.trim();
    if a.is_empty() {
        return Err("address is empty".into());
    }
    if let Some(rest) = a.strip_prefix('[') {
        let (host, tail) = rest
            .split_once(']')
            .ok_or_else(|| format!("address {a:?}: missing ']'"))?;
        if host.is_empty() {
            return Err(format!("address {a:?}: host is empty"));
        }
        let port = match tail.strip_prefix(':') {
            Some(p) => Some(parse_port(a, p)?),
            None if tail.is_empty() => None,
            None => return Err(format!("address {a:?}: unexpected text after ']'")),
        };
        return Ok((host.to_string(), port));
    }
    match a.split_once(':') {
        None => Ok((a.to_string(), None)),
        // A bare IPv6 address: no port can be given without brackets.
        Some((_, rest)) if rest.contains(':') => Ok((a.to_string(), None)),
        Some(("", _)) => Err(format!("address {a:?}: host is empty")),
        Some((host, port)) => Ok((host.to_string(), Some(parse_port(a, port)?))),
    }
}

/// Host and port of an address, `default_port` where it gives none.
pub fn parse_host_port(address: &str, default_port: u16) -> Result<(String, u16), String> {
    split_host_port(address).map(|(host, port)| (host, port.unwrap_or(default_port)))
}

fn parse_port(address: &str, port: &str) -> Result<u16, String> {
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("address {address:?}: port {port:?} is not 1-65535")),
    }
}

/// Checks that `url` (the value of config field `field`) is an http or https URL
/// with a host.
pub fn check_http_url(field: &str, url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("{field} {url:?} must start with http:// or https://"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() {
        return Err(format!("{field} {url:?} has no host"));
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
            check_http_url("base_url", "ftp://h").unwrap_err(),
            "base_url \"ftp://h\" must start with http:// or https://"
        );
        assert_eq!(
            check_http_url("url", "https:///p").unwrap_err(),
            "url \"https:///p\" has no host"
        );
        assert!(
            check_http_url("url", "HTTP://h").is_err(),
            "scheme is lower case"
        );
    }
}
