//! A service's `url:` read as RFC 3986 does: the host is a DNS name (reg-name) unless
//! it is an IP literal, so `http://api-v1.23.0:8080` names the host `api-v1.23.0`.
//! (The WHATWG rules of the `url` crate call a host whose last label is numeric a
//! malformed IPv4 address.) Only the host and port matter to an L4 balancer.

use std::net::Ipv6Addr;

/// The host and port of `text`, e.g. `http://api-v1.23.0:8080/health`.
pub fn host_port(text: &str) -> Result<(String, u16), String> {
    let not_a_url = || format!("'{text}' is not a URL like http://host:port");
    let (scheme, rest) = text.split_once("://").ok_or_else(not_a_url)?;
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !scheme_ok {
        return Err(not_a_url());
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(format!(
            "'{text}' has user credentials; Keystone forwards connections and never logs in, so leave them out"
        ));
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(bracketed) => {
            let (ip, after) = bracketed
                .split_once(']')
                .ok_or_else(|| format!("'{text}' has an unclosed '[' in its host"))?;
            ip.parse::<Ipv6Addr>()
                .map_err(|_| format!("'{ip}' in '{text}' is not an IPv6 address"))?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(not_a_url)?),
            };
            (ip, port)
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if host.is_empty() {
        return Err(format!("'{text}' has no host"));
    }
    let reg_name = host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c));
    if !authority.starts_with('[') && !reg_name {
        return Err(format!("'{host}' in '{text}' is not a host name"));
    }
    let port = match port.filter(|p| !p.is_empty()) {
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| format!("'{p}' in '{text}' is not a port number"))?,
        None => match scheme.to_ascii_lowercase().as_str() {
            "http" => 80,
            "https" => 443,
            other => {
                return Err(format!(
                    "'{text}' has no port and no default for scheme '{other}'"
                ));
            }
        },
    };
    Ok((host.to_ascii_lowercase(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_numeric_last_label_is_a_host_name() {
        assert_eq!(
            host_port("http://api-v1.23.0:8080").unwrap(),
            ("api-v1.23.0".to_owned(), 8080)
        );
        assert_eq!(
            host_port("http://API-v1.24.0:8080/health?x#y").unwrap(),
            ("api-v1.24.0".to_owned(), 8080)
        );
    }

    #[test]
    fn ip_literals_and_default_ports() {
        assert_eq!(
            host_port("http://127.0.0.1/").unwrap(),
            ("127.0.0.1".to_owned(), 80)
        );
        assert_eq!(
            host_port("https://[2001:db8::1]").unwrap(),
            ("2001:db8::1".to_owned(), 443)
        );
        assert_eq!(
            host_port("tcp://[2001:db8::1]:5432").unwrap(),
            ("2001:db8::1".to_owned(), 5432)
        );
    }

    #[test]
    fn refusals_quote_the_url() {
        for (text, reason) in [
            ("api:8080", "'api:8080' is not a URL like http://host:port"),
            ("http://:8080", "'http://:8080' has no host"),
            (
                "http://a b:80",
                "'a b' in 'http://a b:80' is not a host name",
            ),
            (
                "http://api:80x",
                "'80x' in 'http://api:80x' is not a port number",
            ),
            (
                "tcp://api",
                "'tcp://api' has no port and no default for scheme 'tcp'",
            ),
            (
                "http://[::1:80",
                "'http://[::1:80' has an unclosed '[' in its host",
            ),
        ] {
            assert_eq!(host_port(text).unwrap_err(), reason, "{text}");
        }
        assert!(
            host_port("http://u:p@api:80")
                .unwrap_err()
                .contains("user credentials")
        );
    }
}
