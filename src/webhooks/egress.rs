//! Where a webhook may go: public unicast addresses only, unless `[webhooks] allowed_hosts`
//! lists the host name or a network holding the address. The URL is checked at submit and
//! again before each delivery; names are checked after resolution, by the resolver the HTTP
//! client connects with, so the connection goes to exactly the addresses that passed.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// `[webhooks] allowed_hosts`, parsed: exact host names (`*.suffix` for a domain and its
/// subdomains), single addresses and CIDR ranges.
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    names: Vec<String>,
    suffixes: Vec<String>,
    nets: Vec<IpNet>,
}

impl AllowList {
    /// The error names the offending entry (`allowed_hosts[2]: ...`).
    pub fn parse(entries: &[String]) -> Result<AllowList, String> {
        let mut list = AllowList::default();
        for (i, entry) in entries.iter().enumerate() {
            let entry = entry.trim().trim_end_matches('.').to_ascii_lowercase();
            let bad = |why: &str| Err(format!("allowed_hosts[{i}]: {why}"));
            if entry.is_empty() {
                return bad("must not be empty");
            }
            if let Ok(net) = entry.parse::<IpNet>() {
                list.nets.push(net.trunc());
            } else if let Ok(ip) = entry.trim_matches(['[', ']']).parse::<IpAddr>() {
                list.nets.push(IpNet::from(ip));
            } else if let Some(suffix) = entry.strip_prefix("*.") {
                if !is_host_name(suffix) {
                    return bad("not a host name, address or CIDR range");
                }
                list.suffixes.push(format!(".{suffix}"));
            } else if is_host_name(&entry) {
                list.names.push(entry);
            } else {
                return bad("not a host name, address or CIDR range");
            }
        }
        Ok(list)
    }

    fn allows_name(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.names.contains(&host) || self.suffixes.iter().any(|s| host.ends_with(s))
    }

    fn allows_ip(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|net| net.contains(&ip))
    }
}

fn is_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// A webhook target that is not allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// Checks a webhook URL as written: http(s), no credentials, and a host that is a name (checked
/// later, once resolved) or an allowed address. The `url` crate has already turned numeric
/// forms (`2130706433`, `0x7f.1`, `0177.0.0.1`) into the address they mean.
pub fn check_url(raw: &str, allow: &AllowList) -> Result<url::Url, Refused> {
    let refuse = |why: String| Err(Refused(why));
    let url = match url::Url::parse(raw) {
        Ok(url) => url,
        Err(err) => return refuse(format!("not an absolute URL ({err})")),
    };
    if !matches!(url.scheme(), "http" | "https") {
        return refuse(format!("scheme `{}` is not http or https", url.scheme()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return refuse("credentials in the URL are not allowed".into());
    }
    let ip = match url.host() {
        None => return refuse("has no host".into()),
        Some(url::Host::Domain(name)) => {
            if name.parse::<IpAddr>().is_ok() {
                // Not reached for http(s) (the parser turns these into addresses); kept so
                // that a change there cannot open a hole here.
                return refuse(format!("host `{name}` is not a normal address"));
            }
            return Ok(url);
        }
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
    };
    match forbidden_class(ip) {
        Some(class) if !allow.allows_ip(ip) => refuse(format!(
            "{ip} is a {class} address; only public addresses are allowed unless listed in [webhooks] allowed_hosts"
        )),
        _ => Ok(url),
    }
}

/// What kind of non-public address `ip` is, or `None` for a public unicast address.
pub fn forbidden_class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, d] = ip.octets();
    let class = match (a, b, c, d) {
        (169, 254, 169, 254) | (100, 100, 100, 200) | (192, 0, 0, 192) => "metadata",
        (0, ..) => "unspecified",
        (127, ..) => "loopback",
        (10, ..) | (192, 168, ..) => "private",
        (172, b, ..) if (16..32).contains(&b) => "private",
        (100, b, ..) if (64..128).contains(&b) => "shared (carrier-grade NAT)",
        (169, 254, ..) => "link-local",
        (192, 0, 0, _) => "reserved",
        (192, 0, 2, _) | (198, 51, 100, _) | (203, 0, 113, _) => "documentation",
        (198, b, ..) if b == 18 || b == 19 => "benchmarking",
        (192, 88, 99, _) => "reserved",
        (224..=239, ..) => "multicast",
        (240..=255, ..) => "reserved",
        _ => return None,
    };
    Some(class)
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    // Forms that carry an IPv4 address: judged by the address they lead to.
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from(((hi as u32) << 16) | lo as u32);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    if s[..6] == [0, 0, 0, 0, 0, 0] {
        return Some("IPv4-compatible (deprecated)");
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return forbidden_v4(embedded(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return forbidden_v4(embedded(s[1], s[2])).or(Some("6to4"));
    }
    if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        return Some("metadata");
    }
    let class = match s[0] {
        0x2001 if s[1] < 0x200 => "reserved (IETF protocol assignments, Teredo)",
        0x2001 if s[1] == 0xdb8 => "documentation",
        0x3fff if s[1] < 0x1000 => "documentation",
        // Global unicast is 2000::/3; everything else is special or unassigned.
        x if x & 0xe000 == 0x2000 => return None,
        x if x & 0xfe00 == 0xfc00 => "private (unique local)",
        x if x & 0xffc0 == 0xfe80 => "link-local",
        x if x & 0xffc0 == 0xfec0 => "site-local (deprecated)",
        x if x & 0xff00 == 0xff00 => "multicast",
        0x64 if s[1] == 0xff9b => "NAT64 (local)",
        0x100 if s[1..4] == [0, 0, 0] => "discard",
        _ => "reserved",
    };
    Some(class)
}

/// Keeps only the resolved addresses `host` may be reached at; refuses when none is left.
pub fn filter_resolved(
    host: &str,
    addrs: Vec<SocketAddr>,
    allow: &AllowList,
) -> Result<Vec<SocketAddr>, Refused> {
    if allow.allows_name(host) {
        return Ok(addrs);
    }
    let mut refused = None;
    let allowed: Vec<SocketAddr> = addrs
        .into_iter()
        .filter(|a| match forbidden_class(a.ip()) {
            Some(class) if !allow.allows_ip(a.ip()) => {
                refused.get_or_insert((a.ip(), class));
                false
            }
            _ => true,
        })
        .collect();
    match (allowed.is_empty(), refused) {
        (true, Some((ip, class))) => Err(Refused(format!(
            "{host} resolves to {ip}, a {class} address; only public addresses are allowed unless listed in [webhooks] allowed_hosts"
        ))),
        _ => Ok(allowed),
    }
}

/// The HTTP client's resolver: system DNS, then [`filter_resolved`]. The client connects only
/// to what this returns, so an answer cannot change between the check and the connection.
pub struct GuardedResolver {
    pub allow: Arc<AllowList>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.allow.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed = filter_resolved(&host, addrs, &allow)?;
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The [`Refused`] somewhere in an error's chain of causes (the resolver's answer, wrapped by
/// the HTTP client).
pub fn refusal_in<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if let Some(refused) = e.downcast_ref::<Refused>() {
            return Some(refused);
        }
        cause = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(url: &str) -> bool {
        check_url(url, &AllowList::default()).is_err()
    }

    #[test]
    fn internal_addresses_in_every_spelling_are_refused() {
        for url in [
            "http://127.0.0.1/",
            "http://127.1/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://0177.0.0.1/",
            "http://0x7f000001/",
            "http://0.0.0.0/",
            "http://10.1.2.3/",
            "http://172.16.0.1/",
            "http://172.31.255.255/",
            "http://192.168.0.1/",
            "http://100.64.0.1/",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::1]/",
            "http://[::]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:a9fe:a9fe]/",
            "http://[::127.0.0.1]/",
            "http://[64:ff9b::7f00:1]/",
            "http://[2002:7f00:1::]/",
            "http://[2002:5db8:d822::]/",
            "http://[fe80::1]/",
            "http://[fd00:ec2::254]/",
            "http://[fc00::1]/",
            "http://[ff02::1]/",
            "http://[::ffff:0:7f00:1]/",
            "http://[64:ff9b:1::a00:1]/",
            "http://[100::1]/",
            "http://[4000::1]/",
            "http://224.0.0.1/",
            "http://255.255.255.255/",
            "https://user:pw@example.com/",
            "https://user@example.com/",
            "ftp://example.com/",
            "file:///etc/passwd",
            "gopher://example.com/",
            "not a url",
        ] {
            assert!(refused(url), "{url} should be refused");
        }
    }

    #[test]
    fn public_addresses_and_names_pass() {
        for url in [
            "https://example.com/hook",
            "http://93.184.216.34:8080/x",
            "http://172.32.0.1/",
            "http://100.128.0.1/",
            "http://[2606:4700::1111]/",
            "http://localhost:3000/",
        ] {
            assert!(!refused(url), "{url} should pass the URL check");
        }
    }

    #[test]
    fn the_allow_list_takes_names_addresses_and_ranges() {
        let allow = AllowList::parse(&[
            "127.0.0.1".into(),
            "10.0.0.0/8".into(),
            "[::1]".into(),
            "Hooks.Internal.".into(),
            "*.svc.local".into(),
        ])
        .unwrap();
        assert!(check_url("http://127.0.0.1:9/", &allow).is_ok());
        assert!(check_url("http://127.0.0.2:9/", &allow).is_err());
        assert!(check_url("http://10.200.0.1/", &allow).is_ok());
        assert!(check_url("http://[::1]/", &allow).is_ok());
        assert!(check_url("http://192.168.1.1/", &allow).is_err());
        let lo = |p| vec![SocketAddr::from(([127, 0, 0, 5], p))];
        assert!(filter_resolved("hooks.internal", lo(1), &allow).is_ok());
        assert!(filter_resolved("a.svc.local", lo(1), &allow).is_ok());
        assert!(filter_resolved("svc.local.evil.com", lo(1), &allow).is_err());
        let err = AllowList::parse(&["ok.example".into(), "10.0.0.0/33".into()]).unwrap_err();
        assert!(err.starts_with("allowed_hosts[1]"), "{err}");
    }

    #[test]
    fn resolution_keeps_public_addresses_and_refuses_only_internal_ones() {
        let none = AllowList::default();
        let mixed = vec![
            SocketAddr::from(([10, 0, 0, 1], 0)),
            SocketAddr::from(([93, 184, 216, 34], 0)),
        ];
        assert_eq!(
            filter_resolved("x.example", mixed, &none).unwrap(),
            vec![SocketAddr::from(([93, 184, 216, 34], 0))]
        );
        let err = filter_resolved(
            "x.example",
            vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            &none,
        )
        .unwrap_err();
        assert!(err.0.contains("loopback"), "{err}");
    }
}
