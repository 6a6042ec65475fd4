//! Network names in the configuration, checked at start-up: address blocks
//! (`trusted_proxies`), browser origins (`allowed_origins`) and host names
//! (`admin.allowed_hosts`).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::Deserialize;

/// A block of IP addresses, written `10.0.0.0/8`, `2001:db8::/32`, or a
/// single address (`127.0.0.1`, a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    /// The first address of the block (host bits cleared).
    addr: IpAddr,
    /// Leading bits that must match.
    prefix: u8,
}

impl IpNet {
    /// The loopback blocks, `127.0.0.0/8` and `::1/128`.
    pub fn loopback() -> [IpNet; 2] {
        [
            IpNet { addr: IpAddr::from([127, 0, 0, 0]), prefix: 8 },
            IpNet { addr: IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]), prefix: 128 },
        ]
    }

    /// Whether `ip` is in the block. An IPv4 address arriving on a
    /// dual-stack socket as `::ffff:a.b.c.d` counts as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask(u128::from(u32::from(ip)), self.prefix, 32) == u128::from(u32::from(net))
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => mask(u128::from(ip), self.prefix, 128) == u128::from(net),
            _ => false,
        }
    }
}

/// `value` with all but its `prefix` leading bits (of `width`) cleared.
fn mask(value: u128, prefix: u8, width: u8) -> u128 {
    let host_bits = u32::from(width.saturating_sub(prefix));
    if host_bits >= 128 { 0 } else { value >> host_bits << host_bits }
}

impl FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<IpNet, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| format!("{s:?} is not an IP address or block (a.b.c.d/n)"))?;
        let width: u8 = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => width,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= width)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {width}"))?,
        };
        let addr = match addr {
            IpAddr::V4(v4) => IpAddr::from(std::net::Ipv4Addr::from(
                u32::try_from(mask(u128::from(u32::from(v4)), prefix, 32)).unwrap_or(0),
            )),
            IpAddr::V6(v6) => IpAddr::from(std::net::Ipv6Addr::from(mask(u128::from(v6), prefix, 128))),
        };
        Ok(IpNet { addr, prefix })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl<'de> Deserialize<'de> for IpNet {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<IpNet, D::Error> {
        let text = String::deserialize(de)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Checks one `allowed_origins` entry: `"*"`, or a browser origin as the
/// `Origin` header carries it, `http(s)://host[:port]` without a path.
pub(super) fn check_origin(origin: &str) -> Result<(), String> {
    if origin == "*" {
        return Ok(());
    }
    let rest = origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://"));
    let Some(authority) = rest else {
        return Err(format!("{origin:?} is not an origin such as \"https://app.example.com\" (or \"*\")"));
    };
    if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
        return Err(format!("{origin:?}: an origin is scheme://host[:port], without a path or a trailing '/'"));
    }
    Ok(())
}

/// Checks one `admin.allowed_hosts` entry: a host name as the `Host` header
/// carries it, without a port (any port is accepted).
pub(super) fn check_host(host: &str) -> Result<(), String> {
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && !host.starts_with(['-', '.']);
    if valid { Ok(()) } else { Err(format!("{host:?} is not a host name (letters, digits, '-' and '.', no port)")) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ConfigError};

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, std::path::Path::new("moat.toml"))
    }

    fn error(text: &str) -> String {
        parse(text).expect_err("invalid").to_string()
    }

    #[test]
    fn edge_keys_parse() {
        let c = parse(
            "[[listeners]]\nbind = \"0.0.0.0:8080\"\nprotocol = \"ws\"\n\
             allowed_origins = [\"https://app.example.com\", \"*\"]\nproxy_protocol = true\n\
             trusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n\
             [limits]\nwrite_timeout_ms = 500\nmax_sessions = 10\n\
             [admin]\nlisten = \"0.0.0.0:9090\"\ntoken_file = \"/run/moat/admin.token\"\n\
             allowed_hosts = [\"moat.example.com\"]\n",
        )
        .expect("valid");
        let l = &c.listeners[0];
        assert_eq!(l.allowed_origins.as_deref(), Some(&["https://app.example.com".to_owned(), "*".to_owned()][..]));
        assert!(l.proxy_protocol);
        assert!(l.trusts_proxy(ip("10.9.8.7")) && l.trusts_proxy(ip("::1")) && !l.trusts_proxy(ip("127.0.0.1")));
        assert_eq!((c.limits.write_timeout_ms, c.limits.max_sessions), (500, 10));
        assert_eq!(c.admin.allowed_hosts, ["moat.example.com"]);
        let defaults = parse("[[listeners]]\nbind = \"0.0.0.0:1883\"\nproxy_protocol = true\n").expect("valid");
        let l = &defaults.listeners[0];
        assert!(l.trusts_proxy(ip("127.0.0.1")) && l.trusts_proxy(ip("::ffff:127.0.0.1")) && l.trusts_proxy(ip("::1")));
        assert!(!l.trusts_proxy(ip("192.0.2.1")), "only loopback proxies unless configured");
        assert_eq!(l.allowed_origins, None);
    }

    #[test]
    fn edge_key_errors_name_line_and_key() {
        let tcp = "[[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\n";
        assert_eq!(
            error(&format!("{tcp}allowed_origins = [\"*\"]\n")),
            "moat.toml:4: `listeners[0].allowed_origins`: listener \"a\" does not speak WebSocket"
        );
        let err = error(&format!("{tcp}protocol = \"ws\"\nallowed_origins = [\"*\",\n  \"app.example.com\"]\n"));
        assert!(err.starts_with("moat.toml:5: `listeners[0].allowed_origins[1]`: \"app.example.com\" is not"), "{err}");
        assert_eq!(
            error(&format!("{tcp}trusted_proxies = [\"10.0.0.1\"]\n")),
            "moat.toml:4: `listeners[0].trusted_proxies`: listener \"a\": only applies with proxy_protocol = true"
        );
        let err = error(&format!("{tcp}proxy_protocol = true\ntrusted_proxies = [\"10.0.0.0/40\"]\n"));
        assert!(err.starts_with("moat.toml:5: `listeners[0].trusted_proxies[0]`: \"10.0.0.0/40\""), "{err}");
        let err = error(&format!("{tcp}proxy_protocol = true\ntrusted_proxies = []\n"));
        assert!(err.starts_with("moat.toml:5: `listeners[0].trusted_proxies`: must name"), "{err}");
        let err = error(&format!("{tcp}proxy_protocol = \"v2\"\n"));
        assert!(err.starts_with("moat.toml:4: `listeners[0].proxy_protocol`"), "{err}");
        assert_eq!(
            error("[limits]\nwrite_timeout_ms = 0\n"),
            "moat.toml:2: `limits.write_timeout_ms`: must be greater than 0"
        );
        assert_eq!(
            error("[limits]\n\nmax_sessions = 0\n"),
            "moat.toml:3: `limits.max_sessions`: must be greater than 0"
        );
        let err = error("[admin]\nlisten = \"127.0.0.1:9090\"\ntoken = \"x\"\ntoken_file = \"t\"\n");
        assert_eq!(err, "moat.toml:4: `admin.token_file`: set `admin.token` or `admin.token_file`, not both");
        let err = error("[admin]\nlisten = \"127.0.0.1:9090\"\nallowed_hosts = [\"moat:9090\"]\n");
        assert!(err.starts_with("moat.toml:3: `admin.allowed_hosts[0]`: \"moat:9090\" is not a host name"), "{err}");
        let err = error("[admin]\nlisten = \"0.0.0.0:9090\"\n");
        assert!(err.contains("`admin.token`: is required (or `admin.token_file`)"), "{err}");
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn blocks_contain_their_addresses() {
        let net: IpNet = "10.1.0.0/16".parse().expect("block");
        assert!(net.contains(ip("10.1.200.3")));
        assert!(net.contains(ip("::ffff:10.1.0.1")), "an IPv4-mapped address counts as IPv4");
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(!net.contains(ip("::1")));
        let host: IpNet = "192.0.2.7".parse().expect("address");
        assert_eq!(host.to_string(), "192.0.2.7/32");
        assert!(host.contains(ip("192.0.2.7")) && !host.contains(ip("192.0.2.8")));
        let v6: IpNet = "2001:db8::1/32".parse().expect("block");
        assert_eq!(v6.to_string(), "2001:db8::/32", "host bits cleared");
        assert!(v6.contains(ip("2001:db8:ffff::9")) && !v6.contains(ip("2001:db9::1")));
        let all: IpNet = "0.0.0.0/0".parse().expect("block");
        assert!(all.contains(ip("203.0.113.1")) && !all.contains(ip("2001:db8::1")));
        let [v4_loop, v6_loop] = IpNet::loopback();
        assert!(v4_loop.contains(ip("127.3.2.1")) && v6_loop.contains(ip("::1")));
        assert!(!v6_loop.contains(ip("::2")));
    }

    #[test]
    fn bad_blocks_are_refused() {
        for bad in ["", "10.0.0.0/33", "::/129", "10.0.0/8", "host.example", "10.0.0.0/x", "10.0.0.0/-1"] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn origins_and_hosts() {
        for good in ["*", "https://app.example.com", "http://localhost:8080", "http://[::1]:3000"] {
            assert_eq!(check_origin(good), Ok(()), "{good}");
        }
        for bad in ["app.example.com", "https://", "https://a.example/", "https://a.example/path", "ftp://a", "null"] {
            assert!(check_origin(bad).is_err(), "{bad}");
        }
        for good in ["moat.example.com", "broker", "10.0.0.5"] {
            assert_eq!(check_host(good), Ok(()), "{good}");
        }
        for bad in ["", "moat.example.com:9090", "-x", "a b", "*.example.com"] {
            assert!(check_host(bad).is_err(), "{bad}");
        }
    }
}
