//! Bulkhead's vendor extension: AICRQ/AICRP ("accept incoming call request/reply")
//! and the raw call mode. Wire format: docs/l2tp.md.
//!
//! Both messages are vendor-specific control messages (RFC 3931 §5.4.1: the Message
//! Type AVP carries the vendor ID) with M=0, sent only to a peer that echoed the
//! Capabilities AVP (M=0) in its SCCRQ/SCCRP. Attribute numbers start at 1024, far from
//! the IETF ones, because xl2tpd reads vendor AVPs by attribute number alone.

use crate::avp::Avp;

/// Default vendor ID. Not an IANA-registered PEN: deployments set their own.
pub const DEFAULT_VENDOR_ID: u16 = 64999;

/// Vendor message type values (outside IETF's 1–16 and 20).
pub const MSG_AICRQ: u16 = 101;
pub const MSG_AICRP: u16 = 102;

pub const ATTR_CAPABILITIES: u16 = 1024;
pub const ATTR_LINE: u16 = 1025;
pub const ATTR_ARM_SECONDS: u16 = 1026;
pub const ATTR_ARMED_SESSION: u16 = 1027;
pub const ATTR_CALL_MODE: u16 = 1028;

/// Capability bits.
pub const CAP_AICRQ: u32 = 1;
pub const CAP_RAW: u32 = 2;

/// Call mode values.
pub const MODE_PPP: u16 = 0;
pub const MODE_RAW: u16 = 1;

pub fn avp(vendor: u16, attr: u16, value: Vec<u8>) -> Avp {
    Avp::Other {
        vendor,
        attr,
        mandatory: false,
        value,
    }
}

pub fn avp_u16(vendor: u16, attr: u16, v: u16) -> Avp {
    avp(vendor, attr, v.to_be_bytes().to_vec())
}

pub fn avp_u32(vendor: u16, attr: u16, v: u32) -> Avp {
    avp(vendor, attr, v.to_be_bytes().to_vec())
}

/// Finds our vendor AVP `attr` in a list.
pub fn find(avps: &[Avp], vendor: u16, attr: u16) -> Option<&[u8]> {
    avps.iter().find_map(|a| match a {
        Avp::Other {
            vendor: v,
            attr: t,
            value,
            ..
        } if *v == vendor && *t == attr => Some(&value[..]),
        _ => None,
    })
}

pub fn find_u16(avps: &[Avp], vendor: u16, attr: u16) -> Option<u16> {
    find(avps, vendor, attr).and_then(|v| Some(u16::from_be_bytes(v.try_into().ok()?)))
}

pub fn find_u32(avps: &[Avp], vendor: u16, attr: u16) -> Option<u32> {
    find(avps, vendor, attr).and_then(|v| Some(u32::from_be_bytes(v.try_into().ok()?)))
}

/// AICRP Result Code value meaning "armed"; any other value is a CDN result code
/// (RFC 2661 §4.4.2) saying why the request was refused.
pub const ARM_ACCEPTED: u16 = 0;
