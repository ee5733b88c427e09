//! Control messages: a Message Type AVP followed by AVPs (RFC 2661 §3.2, §4.1).

use crate::avp::{self, attr, Avp, EncodeError, RawAvp};
use crate::DecodeError;

/// The value of the first AVP of a variant in a message, cloned:
/// `find_avp!(msg, Avp::AssignedSessionId)` is an `Option<u16>`.
#[macro_export]
macro_rules! find_avp {
    ($m:expr, $variant:path) => {
        $m.avps.iter().find_map(|a| {
            if let $variant(v) = a {
                Some(v.clone())
            } else {
                None
            }
        })
    };
}

/// IETF control message types (§3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum MessageType {
    Sccrq = 1,
    Sccrp = 2,
    Scccn = 3,
    StopCcn = 4,
    Hello = 6,
    Ocrq = 7,
    Ocrp = 8,
    Occn = 9,
    Icrq = 10,
    Icrp = 11,
    Iccn = 12,
    Cdn = 14,
    Wen = 15,
    Sli = 16,
}

impl MessageType {
    pub const ALL: [MessageType; 14] = [
        MessageType::Sccrq,
        MessageType::Sccrp,
        MessageType::Scccn,
        MessageType::StopCcn,
        MessageType::Hello,
        MessageType::Ocrq,
        MessageType::Ocrp,
        MessageType::Occn,
        MessageType::Icrq,
        MessageType::Icrp,
        MessageType::Iccn,
        MessageType::Cdn,
        MessageType::Wen,
        MessageType::Sli,
    ];

    pub fn from_u16(v: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|t| *t as u16 == v)
    }

    /// Messages that concern one session rather than the tunnel.
    pub fn is_session(self) -> bool {
        use MessageType::*;
        matches!(
            self,
            Ocrq | Ocrp | Occn | Icrq | Icrp | Iccn | Cdn | Wen | Sli
        )
    }
}

/// What the Message Type AVP says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ietf(MessageType),
    /// An IETF value this crate does not know (0, 5, 13, v3 types, ...).
    UnknownIetf(u16),
    /// A vendor-specific message (RFC 3931 §5.4.1): Message Type AVP with a vendor ID.
    Vendor {
        vendor: u16,
        value: u16,
    },
}

/// A decoded control message (not a ZLB: a ZLB has no Message Type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub kind: Kind,
    /// The Message Type AVP's M bit: whether an unknown message must clear the tunnel.
    pub mandatory: bool,
    pub avps: Vec<Avp>,
}

/// How to hide AVPs when encoding (§4.3).
pub struct Hiding<'a> {
    pub secret: &'a [u8],
    /// Random Vector to put before the first hidden AVP.
    pub random_vector: [u8; 16],
    /// Padding appended to each hidden value to mask its length.
    pub pad: &'a [u8],
}

impl Message {
    pub fn new(t: MessageType, avps: Vec<Avp>) -> Self {
        Message {
            kind: Kind::Ietf(t),
            mandatory: true,
            avps,
        }
    }

    pub fn message_type(&self) -> Option<MessageType> {
        match self.kind {
            Kind::Ietf(t) => Some(t),
            _ => None,
        }
    }

    /// The first AVP matching `f`.
    pub fn find<T>(&self, f: impl FnMut(&Avp) -> Option<T>) -> Option<T> {
        self.avps.iter().find_map(f)
    }

    /// Encodes the message body (no L2TP header). Hideable AVPs are hidden when
    /// `hiding` is given.
    pub fn encode(
        &self,
        out: &mut Vec<u8>,
        hiding: Option<&Hiding<'_>>,
    ) -> Result<(), EncodeError> {
        let start = out.len();
        let (vendor, value) = match self.kind {
            Kind::Ietf(t) => (0, t as u16),
            Kind::UnknownIetf(v) => (0, v),
            Kind::Vendor { vendor, value } => (vendor, value),
        };
        Avp::Other {
            vendor,
            attr: attr::MESSAGE_TYPE,
            mandatory: self.mandatory,
            value: value.to_be_bytes().to_vec(),
        }
        .encode(out, None)?;
        let mut rv_sent = false;
        for a in &self.avps {
            let hide = match hiding {
                Some(h) if a.hideable() => {
                    if !rv_sent {
                        Avp::RandomVector(h.random_vector.to_vec()).encode(out, None)?;
                        rv_sent = true;
                    }
                    Some((h.secret, &h.random_vector[..], h.pad))
                }
                _ => None,
            };
            a.encode(out, hide)?;
        }
        if out.len() - start + crate::header::CONTROL_HEADER_LEN > u16::MAX as usize {
            return Err(EncodeError::MessageTooLong);
        }
        Ok(())
    }

    /// Decodes a control message body. `secret` unhides H-bit AVPs; a Random Vector
    /// AVP is kept in `avps` like any other (it is only needed for unhiding).
    pub fn decode(buf: &[u8], secret: Option<&[u8]>) -> Result<Message, DecodeError> {
        let mut it = avp::raw_avps(buf);
        let first = it.next().ok_or(DecodeError::Truncated)??;
        if first.attr != attr::MESSAGE_TYPE || first.hidden || first.value.len() != 2 {
            return Err(DecodeError::NoMessageType);
        }
        let value = u16::from_be_bytes([first.value[0], first.value[1]]);
        let kind = if first.vendor != 0 {
            Kind::Vendor {
                vendor: first.vendor,
                value,
            }
        } else {
            MessageType::from_u16(value).map_or(Kind::UnknownIetf(value), Kind::Ietf)
        };
        let mut avps = Vec::new();
        let mut rv: Option<Vec<u8>> = None;
        for raw in it {
            let raw: RawAvp<'_> = raw?;
            if raw.reserved {
                // §4.1: a set reserved bit makes the AVP unrecognized.
                avps.push(Avp::Other {
                    vendor: raw.vendor,
                    attr: raw.attr,
                    mandatory: raw.mandatory,
                    value: raw.value.to_vec(),
                });
                continue;
            }
            let value;
            let v: &[u8] = if raw.hidden {
                let secret = secret.ok_or(DecodeError::Hidden(raw.attr))?;
                let rv = rv.as_deref().ok_or(DecodeError::Hidden(raw.attr))?;
                value = avp::unhide(raw.attr, secret, rv, raw.value)?;
                &value
            } else {
                raw.value
            };
            let a = Avp::decode_value(raw.vendor, raw.attr, raw.mandatory, v)?;
            if let Avp::RandomVector(r) = &a {
                rv = Some(r.clone());
            }
            avps.push(a);
        }
        Ok(Message {
            kind,
            mandatory: first.mandatory,
            avps,
        })
    }

    /// The first IETF AVP this crate does not know that has the M bit set (§4.1),
    /// or a vendor AVP with M set from a vendor other than `our_vendor`.
    pub fn unknown_mandatory(&self, our_vendor: Option<u16>) -> Option<(u16, u16)> {
        self.avps.iter().find_map(|a| match a {
            Avp::Other {
                vendor,
                attr,
                mandatory: true,
                ..
            } if Some(*vendor) != our_vendor || *vendor == 0 => Some((*vendor, *attr)),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::avp::{CallErrors, ResultCode};

    fn every_avp() -> Vec<Avp> {
        vec![
            Avp::ResultCode(ResultCode::new(2, 6, "vendor says no")),
            Avp::ResultCode(ResultCode {
                result: 1,
                error: None,
                message: None,
            }),
            Avp::ProtocolVersion {
                version: 1,
                revision: 0,
            },
            Avp::FramingCapabilities(3),
            Avp::BearerCapabilities(2),
            Avp::TieBreaker([1, 2, 3, 4, 5, 6, 7, 8]),
            Avp::FirmwareRevision(0x0102),
            Avp::HostName(b"lac".to_vec()),
            Avp::VendorName(b"Bulkhead".to_vec()),
            Avp::AssignedTunnelId(77),
            Avp::ReceiveWindowSize(8),
            Avp::Challenge(vec![9; 16]),
            Avp::Q931Cause {
                cause: 16,
                message: 0x5a,
                advisory: b"normal".to_vec(),
            },
            Avp::ChallengeResponse([7; 16]),
            Avp::AssignedSessionId(5),
            Avp::CallSerialNumber(0xdead_beef),
            Avp::MinimumBps(300),
            Avp::MaximumBps(56000),
            Avp::BearerType(2),
            Avp::FramingType(2),
            Avp::CalledNumber(b"PRIMARY_ISP".to_vec()),
            Avp::CallingNumber(b"5551234".to_vec()),
            Avp::SubAddress(b"1".to_vec()),
            Avp::TxConnectSpeed(33600),
            Avp::PhysicalChannelId(3),
            Avp::InitialReceivedLcpConfreq(vec![1, 4, 5, 0xdc]),
            Avp::LastSentLcpConfreq(vec![1, 4, 5, 0xdc]),
            Avp::LastReceivedLcpConfreq(vec![1, 4, 5, 0xdc]),
            Avp::ProxyAuthenType(2),
            Avp::ProxyAuthenName(b"alice".to_vec()),
            Avp::ProxyAuthenChallenge(vec![3; 8]),
            Avp::ProxyAuthenId(0x0007),
            Avp::ProxyAuthenResponse(vec![4; 16]),
            Avp::CallErrors(CallErrors {
                crc: 1,
                framing: 2,
                hardware_overruns: 3,
                buffer_overruns: 4,
                timeout: 5,
                alignment: 6,
            }),
            Avp::Accm {
                send: 0xffff_ffff,
                receive: 0,
            },
            Avp::RandomVector(vec![0xaa; 16]),
            Avp::PrivateGroupId(b"grp".to_vec()),
            Avp::RxConnectSpeed(28800),
            Avp::SequencingRequired,
            Avp::Other {
                vendor: 64999,
                attr: 1024,
                mandatory: false,
                value: vec![0, 0, 0, 1],
            },
            Avp::Other {
                vendor: 0,
                attr: 200,
                mandatory: true,
                value: vec![1],
            },
        ]
    }

    #[test]
    fn every_message_and_avp_round_trips() {
        for t in MessageType::ALL {
            let m = Message::new(t, every_avp());
            let mut buf = Vec::new();
            m.encode(&mut buf, None).unwrap();
            assert_eq!(Message::decode(&buf, None).unwrap(), m, "{t:?}");
        }
        let v = Message {
            kind: Kind::Vendor {
                vendor: 64999,
                value: 101,
            },
            mandatory: false,
            avps: every_avp(),
        };
        let mut buf = Vec::new();
        v.encode(&mut buf, None).unwrap();
        assert_eq!(Message::decode(&buf, None).unwrap(), v);
    }

    #[test]
    fn hidden_avps_round_trip_and_need_the_secret() {
        let m = Message::new(
            MessageType::Iccn,
            every_avp()
                .into_iter()
                .filter(|a| !matches!(a, Avp::RandomVector(_)))
                .collect(),
        );
        let hiding = Hiding {
            secret: b"s3cret",
            random_vector: [5; 16],
            pad: b"xyz",
        };
        let mut buf = Vec::new();
        m.encode(&mut buf, Some(&hiding)).unwrap();
        let got = Message::decode(&buf, Some(b"s3cret")).unwrap();
        let without_rv: Vec<Avp> = got
            .avps
            .into_iter()
            .filter(|a| !matches!(a, Avp::RandomVector(_)))
            .collect();
        assert_eq!(without_rv, m.avps);
        assert!(matches!(
            Message::decode(&buf, None),
            Err(DecodeError::Hidden(_))
        ));
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(Message::decode(&[], None), Err(DecodeError::Truncated));
        // First AVP is not a Message Type.
        let mut buf = Vec::new();
        Avp::HostName(b"x".to_vec()).encode(&mut buf, None).unwrap();
        assert_eq!(Message::decode(&buf, None), Err(DecodeError::NoMessageType));
        // Assigned Tunnel ID with 3 bytes.
        let mut buf = Vec::new();
        Message::new(MessageType::Hello, vec![])
            .encode(&mut buf, None)
            .unwrap();
        buf.extend_from_slice(&[0x80, 9, 0, 0, 0, 9, 1, 2, 3]);
        assert_eq!(Message::decode(&buf, None), Err(DecodeError::AvpLength(9)));
        // AVP length past the end.
        let mut buf = Vec::new();
        Message::new(MessageType::Hello, vec![])
            .encode(&mut buf, None)
            .unwrap();
        buf.extend_from_slice(&[0x80, 40, 0, 0, 0, 9]);
        assert_eq!(
            Message::decode(&buf, None),
            Err(DecodeError::AvpHeaderLength(40))
        );
    }

    #[test]
    fn reserved_bits_make_an_avp_unknown() {
        let mut buf = Vec::new();
        Message::new(MessageType::Hello, vec![])
            .encode(&mut buf, None)
            .unwrap();
        buf.extend_from_slice(&[0x84, 8, 0, 0, 0, 9, 0, 1]);
        let m = Message::decode(&buf, None).unwrap();
        assert_eq!(m.unknown_mandatory(None), Some((0, 9)));
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        fn arb_avp() -> impl Strategy<Value = Avp> {
            let bytes = || proptest::collection::vec(any::<u8>(), 1..40);
            prop_oneof![
                (any::<u16>(), any::<u16>(), "[a-z ]{0,20}")
                    .prop_map(|(r, e, m)| Avp::ResultCode(ResultCode::new(r, e, m))),
                any::<u32>().prop_map(Avp::FramingCapabilities),
                any::<[u8; 8]>().prop_map(Avp::TieBreaker),
                bytes().prop_map(Avp::HostName),
                any::<u16>().prop_map(Avp::AssignedTunnelId),
                any::<u16>().prop_map(Avp::AssignedSessionId),
                bytes().prop_map(Avp::Challenge),
                any::<[u8; 16]>().prop_map(Avp::ChallengeResponse),
                bytes().prop_map(Avp::CalledNumber),
                any::<u32>().prop_map(Avp::TxConnectSpeed),
                (any::<u32>(), any::<u32>()).prop_map(|(s, r)| Avp::Accm {
                    send: s,
                    receive: r
                }),
                Just(Avp::SequencingRequired),
                (
                    1u16..,
                    40u16..,
                    any::<bool>(),
                    proptest::collection::vec(any::<u8>(), 0..60)
                )
                    .prop_map(|(vendor, attr, mandatory, value)| Avp::Other {
                        vendor,
                        attr,
                        mandatory,
                        value
                    }),
            ]
        }

        proptest! {
            #[test]
            fn random_avp_lists_round_trip(avps in proptest::collection::vec(arb_avp(), 0..20), hide in any::<bool>()) {
                let m = Message::new(MessageType::Icrq, avps);
                let hiding = Hiding { secret: b"k", random_vector: [1; 16], pad: b"" };
                let mut buf = Vec::new();
                m.encode(&mut buf, hide.then_some(&hiding)).unwrap();
                let got = Message::decode(&buf, Some(b"k")).unwrap();
                let got: Vec<Avp> = got.avps.into_iter().filter(|a| !matches!(a, Avp::RandomVector(_))).collect();
                prop_assert_eq!(got, m.avps);
            }

            #[test]
            fn decoder_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..200)) {
                let _ = Message::decode(&buf, Some(b"k"));
                let _ = crate::header::decode(&buf);
            }
        }
    }
}
