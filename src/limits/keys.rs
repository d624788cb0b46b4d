//! What a client or a destination is counted under: an IP's network, an
//! IPv6 site, a number block.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::phone::PhoneNumber;

/// The key an IP is counted under: IPv4 whole, IPv6 by its /64, since one
/// host is usually given a whole /64. IPv4 clients that reach the host as
/// IPv4-mapped addresses or through a NAT64 translator's well-known prefix
/// (`64:ff9b::/96`, RFC 6052) are counted by their IPv4 address.
pub(crate) fn ip_key(ip: IpAddr) -> String {
    match ipv4_client(ip) {
        Ok(v4) => v4_text(v4),
        Err(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

/// The key an IPv6 client's site is counted under, its /48; `None` for an
/// IPv4 client (mapped and NAT64 addresses included).
pub(crate) fn ip_site_key(ip: IpAddr) -> Option<String> {
    ipv4_client(ip).err().map(|v6| {
        let s = v6.segments();
        format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
    })
}

/// An IPv4 client's address, embedded ones included (IPv4-mapped, NAT64);
/// an IPv6 client's address as the error.
fn ipv4_client(ip: IpAddr) -> Result<Ipv4Addr, Ipv6Addr> {
    match ip {
        IpAddr::V4(v4) => Ok(v4),
        IpAddr::V6(v6) => v6.to_ipv4_mapped().or_else(|| nat64(v6)).ok_or(v6),
    }
}

/// The IPv4 address embedded in an address of the well-known NAT64 prefix.
fn nat64(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    (s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]).then(|| {
        let [.., a, b, c, d] = v6.octets();
        Ipv4Addr::new(a, b, c, d)
    })
}

/// The dotted form of an IPv4 address, as its `Display` writes it, without
/// the formatting machinery (it is on every call).
fn v4_text(v4: Ipv4Addr) -> String {
    let mut text = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        text.push_str(itoa::Buffer::new().format(octet));
    }
    text
}

/// The number block of a phone: E.164 without its last three digits.
pub(crate) fn number_block(phone: &PhoneNumber) -> String {
    let s = phone.as_str();
    s[..s.len() - 3].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// From review: every IPv4 client behind a NAT64 translator arrives in
    /// `64:ff9b::/96`, one /64, so they all shared one IP limit.
    #[test]
    fn nat64_clients_are_counted_by_their_ipv4_address() {
        let key = |s: &str| ip_key(s.parse().unwrap());
        assert_eq!(key("64:ff9b::192.0.2.7"), "192.0.2.7");
        assert_ne!(key("64:ff9b::192.0.2.7"), key("64:ff9b::198.51.100.1"));
        // The local-use prefix (RFC 8215) is a network's own: by /64.
        assert_eq!(key("64:ff9b:1::1"), "64:ff9b:1:0::/64");
    }

    #[test]
    fn ipv6_sites_are_their_48_and_ipv4_clients_have_none() {
        let site = |s: &str| ip_site_key(s.parse().unwrap());
        assert_eq!(site("2001:db8:5:ffff::1"), site("2001:db8:5:1::9"));
        assert_eq!(site("2001:db8:5::1").as_deref(), Some("2001:db8:5::/48"));
        assert_ne!(site("2001:db8:5::1"), site("2001:db8:6::1"));
        for v4 in ["192.0.2.7", "::ffff:192.0.2.7", "64:ff9b::192.0.2.7"] {
            assert_eq!(site(v4), None, "{v4}");
        }
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64_network() {
        let key = |s: &str| ip_key(s.parse().unwrap());
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:bbbb::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
    }

    #[test]
    fn ipv4_keys_are_the_display_form() {
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.9.100",
            "1.22.133.4",
            "127.0.0.1",
        ] {
            let v4: std::net::Ipv4Addr = ip.parse().unwrap();
            assert_eq!(v4_text(v4), v4.to_string());
            assert_eq!(ip_key(IpAddr::V4(v4)), ip);
        }
        for n in (0..u32::MAX).step_by(9_973_117) {
            let v4 = std::net::Ipv4Addr::from(n);
            assert_eq!(v4_text(v4), v4.to_string());
        }
    }
}
