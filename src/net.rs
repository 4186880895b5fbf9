//! Client addresses in one form: every trust, allow-list and budget decision compares
//! canonical addresses, so an IPv4-mapped IPv6 address (`::ffff:10.0.0.5`, what a dual-stack
//! socket or a proxy may report) is the IPv4 address it carries, and matches `10.0.0.0/8`.

use std::net::IpAddr;

use ipnet::IpNet;

/// Prefix of the IPv4-mapped IPv6 addresses (`::ffff:0:0/96`, RFC 4291 section 2.5.5.2).
const MAPPED_PREFIX: u8 = 96;

/// Default prefix by which IPv6 addresses share a failure budget (`--ipv6-budget-prefix`):
/// a /64 is one ordinary host or home network, which can pick any of its 2^64 addresses.
pub const DEFAULT_V6_BUDGET_PREFIX: u8 = 64;

/// `ip` with an IPv4-mapped IPv6 address turned into its IPv4 address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// `net` in canonical form: a network inside `::ffff:0:0/96` becomes the IPv4 network it
/// maps (`::ffff:10.0.0.0/104` is `10.0.0.0/8`), so it matches canonical addresses.
pub fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= MAPPED_PREFIX => match v6.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::new(IpAddr::V4(v4), v6.prefix_len() - MAPPED_PREFIX)
                .expect("a prefix of 96..=128 less 96 fits IPv4")
                .trunc(),
            None => net,
        },
        _ => net,
    }
}

/// Whether any of `nets` contains `ip`, both compared in canonical form.
pub fn any_contains(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = canonical(ip);
    nets.iter().any(|n| canonical_net(*n).contains(&ip))
}

/// The bucket a per-IP budget counts `ip` in: a canonical IPv4 address alone (/32), an IPv6
/// address by its first `v6_prefix` bits.
pub fn budget_bucket(ip: IpAddr, v6_prefix: u8) -> IpNet {
    let ip = canonical(ip);
    let len = match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => v6_prefix.min(128),
    };
    IpNet::new(ip, len).expect("prefix within range").trunc()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn mapped_addresses_are_their_ipv4_address() {
        assert_eq!(canonical(ip("::ffff:10.0.0.5")), ip("10.0.0.5"));
        assert_eq!(canonical(ip("2001:db8::1")), ip("2001:db8::1"));
        assert_eq!(canonical(ip("10.0.0.5")), ip("10.0.0.5"));
    }

    #[test]
    fn mapped_addresses_match_ipv4_lists_and_mapped_lists_match_ipv4_addresses() {
        let cases = [
            (&["10.0.0.0/8"][..], "::ffff:10.0.0.5", true),
            (&["10.0.0.0/8"][..], "10.0.0.5", true),
            (&["10.0.0.0/8"][..], "::ffff:11.0.0.5", false),
            (&["::ffff:10.0.0.0/104"][..], "10.1.2.3", true),
            (&["::ffff:10.0.0.0/104"][..], "::ffff:10.1.2.3", true),
            (&["::ffff:10.0.0.0/104"][..], "11.1.2.3", false),
            (&["2001:db8::/32"][..], "2001:db8::1", true),
            (&["2001:db8::/32"][..], "10.0.0.5", false),
            (&["::/0"][..], "2001:db8::1", true),
        ];
        for (nets, addr, want) in cases {
            let nets: Vec<IpNet> = nets.iter().map(|n| net(n)).collect();
            assert_eq!(any_contains(&nets, ip(addr)), want, "{nets:?} ∋ {addr}");
        }
    }

    #[test]
    fn budget_buckets_are_an_ipv4_address_or_an_ipv6_prefix() {
        assert_eq!(budget_bucket(ip("192.0.2.7"), 64), net("192.0.2.7/32"));
        assert_eq!(
            budget_bucket(ip("::ffff:192.0.2.7"), 64),
            net("192.0.2.7/32")
        );
        assert_eq!(
            budget_bucket(ip("2001:db8:1:2:3:4:5:6"), 64),
            net("2001:db8:1:2::/64")
        );
        assert_eq!(
            budget_bucket(ip("2001:db8:1:2:3:4:5:6"), 56),
            net("2001:db8:1::/56")
        );
        assert_eq!(
            budget_bucket(ip("2001:db8::6"), 128),
            net("2001:db8::6/128")
        );
    }
}
