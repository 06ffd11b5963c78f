//! IP address classes for the proxy's SSRF guard (after DNS, before dial).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Class of an IP address. IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`),
/// NAT64 (`64:ff9b::/96`) and 6to4 (`2002::/16`) IPv6 addresses are classified by the IPv4
/// address they embed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddrClass {
    /// Globally routable.
    Public,
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// RFC 1918: 10/8, 172.16/12, 192.168/16.
    Private,
    /// Carrier-grade NAT shared space 100.64.0.0/10.
    SharedCgnat,
    /// 169.254.0.0/16 (except metadata), fe80::/10.
    LinkLocal,
    /// Cloud metadata endpoints: 169.254.169.254, fd00:ec2::254.
    Metadata,
    /// IPv6 unique-local fc00::/7.
    UniqueLocal,
    /// 224.0.0.0/4, ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// 0.0.0.0/8, ::.
    Unspecified,
    /// 192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32.
    Documentation,
    /// Other special-purpose ranges: 240/4, 192.0.0/24, 198.18/15, 100::/64, 2001::/23, fec0::/10.
    Reserved,
}

impl AddrClass {
    /// True only for [`AddrClass::Public`].
    pub fn is_public(&self) -> bool {
        matches!(self, AddrClass::Public)
    }

    /// Stable snake_case name for logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            AddrClass::Public => "public",
            AddrClass::Loopback => "loopback",
            AddrClass::Private => "private",
            AddrClass::SharedCgnat => "shared_cgnat",
            AddrClass::LinkLocal => "link_local",
            AddrClass::Metadata => "metadata",
            AddrClass::UniqueLocal => "unique_local",
            AddrClass::Multicast => "multicast",
            AddrClass::Broadcast => "broadcast",
            AddrClass::Unspecified => "unspecified",
            AddrClass::Documentation => "documentation",
            AddrClass::Reserved => "reserved",
        }
    }
}

/// Classifies `ip` for the SSRF guard.
pub fn classify(ip: IpAddr) -> AddrClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddrClass {
    let o = ip.octets();
    let in_net = |net: [u8; 4], len: u32| -> bool {
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        (u32::from(ip) & mask) == (u32::from(Ipv4Addr::from(net)) & mask)
    };
    if o[0] == 0 {
        AddrClass::Unspecified
    } else if o[0] == 127 {
        AddrClass::Loopback
    } else if in_net([10, 0, 0, 0], 8)
        || in_net([172, 16, 0, 0], 12)
        || in_net([192, 168, 0, 0], 16)
    {
        AddrClass::Private
    } else if in_net([100, 64, 0, 0], 10) {
        AddrClass::SharedCgnat
    } else if o == [169, 254, 169, 254] {
        AddrClass::Metadata
    } else if in_net([169, 254, 0, 0], 16) {
        AddrClass::LinkLocal
    } else if o == [255, 255, 255, 255] {
        AddrClass::Broadcast
    } else if in_net([224, 0, 0, 0], 4) {
        AddrClass::Multicast
    } else if in_net([192, 0, 2, 0], 24)
        || in_net([198, 51, 100, 0], 24)
        || in_net([203, 0, 113, 0], 24)
    {
        AddrClass::Documentation
    } else if in_net([240, 0, 0, 0], 4) || in_net([192, 0, 0, 0], 24) || in_net([198, 18, 0, 0], 15)
    {
        AddrClass::Reserved
    } else {
        AddrClass::Public
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddrClass {
    let seg = ip.segments();
    if ip.is_unspecified() {
        return AddrClass::Unspecified;
    }
    if ip.is_loopback() {
        return AddrClass::Loopback;
    }
    if let Some(v4) = embedded_v4(ip) {
        return classify_v4(v4);
    }
    if seg == [0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254] {
        return AddrClass::Metadata;
    }
    if seg[0] & 0xfe00 == 0xfc00 {
        return AddrClass::UniqueLocal;
    }
    if seg[0] & 0xffc0 == 0xfe80 {
        return AddrClass::LinkLocal;
    }
    if seg[0] & 0xffc0 == 0xfec0 {
        return AddrClass::Reserved;
    }
    if seg[0] & 0xff00 == 0xff00 {
        return AddrClass::Multicast;
    }
    if seg[0] == 0x2001 && seg[1] == 0x0db8 {
        return AddrClass::Documentation;
    }
    if seg[0] == 0x0100 && seg[1..4] == [0, 0, 0] {
        return AddrClass::Reserved;
    }
    if seg[0] == 0x2001 && seg[1] < 0x0200 {
        // IETF protocol assignments 2001::/23 (Teredo, benchmarking, ORCHID …).
        return AddrClass::Reserved;
    }
    if seg[0] & 0xe000 != 0x2000 {
        // Outside global unicast 2000::/3.
        return AddrClass::Reserved;
    }
    AddrClass::Public
}

/// The IPv4 address embedded in an IPv4-mapped, IPv4-compatible, NAT64 or 6to4 address.
pub(crate) fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let seg = ip.segments();
    let o = ip.octets();
    let tail = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    if seg[..5] == [0, 0, 0, 0, 0] && (seg[5] == 0xffff || seg[5] == 0) {
        // ::ffff:a.b.c.d (mapped) or ::a.b.c.d (compatible; :: and ::1 handled by the caller).
        return Some(tail);
    }
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(tail);
    }
    if seg[0] == 0x2002 {
        return Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_table() {
        let table: &[(&str, AddrClass)] = &[
            ("8.8.8.8", AddrClass::Public),
            ("1.1.1.1", AddrClass::Public),
            ("127.0.0.1", AddrClass::Loopback),
            ("127.255.0.9", AddrClass::Loopback),
            ("10.1.2.3", AddrClass::Private),
            ("172.16.0.1", AddrClass::Private),
            ("172.31.255.255", AddrClass::Private),
            ("172.32.0.1", AddrClass::Public),
            ("192.168.1.1", AddrClass::Private),
            ("100.64.0.1", AddrClass::SharedCgnat),
            ("100.127.255.255", AddrClass::SharedCgnat),
            ("100.128.0.1", AddrClass::Public),
            ("169.254.169.254", AddrClass::Metadata),
            ("169.254.1.1", AddrClass::LinkLocal),
            ("224.0.0.1", AddrClass::Multicast),
            ("255.255.255.255", AddrClass::Broadcast),
            ("0.0.0.0", AddrClass::Unspecified),
            ("192.0.2.1", AddrClass::Documentation),
            ("240.0.0.1", AddrClass::Reserved),
            ("::", AddrClass::Unspecified),
            ("::1", AddrClass::Loopback),
            ("::ffff:127.0.0.1", AddrClass::Loopback),
            ("::ffff:10.0.0.1", AddrClass::Private),
            ("::ffff:169.254.169.254", AddrClass::Metadata),
            ("::127.0.0.1", AddrClass::Loopback),
            ("::ffff:8.8.8.8", AddrClass::Public),
            ("64:ff9b::7f00:1", AddrClass::Loopback),
            ("fd00:ec2::254", AddrClass::Metadata),
            ("fd12::1", AddrClass::UniqueLocal),
            ("fc00::1", AddrClass::UniqueLocal),
            ("fe80::1", AddrClass::LinkLocal),
            ("ff02::1", AddrClass::Multicast),
            ("2001:db8::1", AddrClass::Documentation),
            ("2606:4700::1111", AddrClass::Public),
        ];
        for (s, class) in table {
            let ip: IpAddr = s.parse().unwrap();
            assert_eq!(classify(ip), *class, "{s}");
            assert_eq!(classify(ip).is_public(), *class == AddrClass::Public, "{s}");
        }
    }
}
