//! Grant cookies: the secret an owner hands to a grantee.
//!
//! Printed form: `bhc1_` + the grant id (16 hex digits) + 256 random bits (64 hex
//! digits), 85 characters, lower-case only. The grant id is public and only tells the
//! table where to look; the secret is what proves the cookie. The table keeps
//! `SHA-256(domain, secret, binding)` where the binding is (grant id, resource,
//! grantee, access, parent, generation), so a persisted table yields no usable cookie,
//! and a record whose binding was altered no longer matches its cookie.

use std::fmt;
use std::str::FromStr;

use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::types::{is_lower_hex_byte, Access, GrantId, PartitionId, ResourceId};

const PREFIX: &str = "bhc1_";
const SECRET_BYTES: usize = 32;
/// Length of a printed cookie.
pub const COOKIE_LEN: usize = PREFIX.len() + 16 + 2 * SECRET_BYTES;
const DOMAIN: &[u8] = b"bulkhead-grant-cookie/v1\0";

/// Why a string is not a cookie. Checked in this order: length, prefix, alphabet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CookieParseError {
    #[error("a cookie is {COOKIE_LEN} characters, this is {0}")]
    Length(usize),
    #[error("a cookie starts with \"{PREFIX}\"")]
    Prefix,
    #[error("a cookie is lower-case hex after its prefix (bad character at {0})")]
    Alphabet(usize),
}

/// A cookie in hand (the secret). Never stored by the table; `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct Cookie {
    grant: GrantId,
    secret: [u8; SECRET_BYTES],
}

impl Cookie {
    pub(crate) fn generate<R: RngCore + CryptoRng>(grant: GrantId, rng: &mut R) -> Cookie {
        let mut secret = [0u8; SECRET_BYTES];
        rng.fill_bytes(&mut secret);
        Cookie { grant, secret }
    }

    /// The grant this cookie claims to be for (not yet verified).
    pub fn grant_id(&self) -> GrantId {
        self.grant
    }

    /// Strict parse: exact length, prefix, lower-case hex.
    pub fn parse(s: &str) -> Result<Cookie, CookieParseError> {
        if s.len() != COOKIE_LEN {
            return Err(CookieParseError::Length(s.len()));
        }
        let body = s.strip_prefix(PREFIX).ok_or(CookieParseError::Prefix)?;
        if let Some(i) = body.bytes().position(|b| !is_lower_hex_byte(b)) {
            return Err(CookieParseError::Alphabet(PREFIX.len() + i));
        }
        let (id, secret_hex) = body.split_at(16);
        let grant = format!("{}{id}", GrantId::PREFIX)
            .parse()
            .map_err(|_| CookieParseError::Alphabet(PREFIX.len()))?;
        let mut secret = [0u8; SECRET_BYTES];
        hex::decode_to_slice(secret_hex, &mut secret)
            .map_err(|_| CookieParseError::Alphabet(PREFIX.len() + 16))?;
        Ok(Cookie { grant, secret })
    }

    /// The hash the table keeps for this cookie under `binding`.
    pub(crate) fn digest(&self, binding: &Binding<'_>) -> CookieDigest {
        let mut h = Sha256::new();
        h.update(DOMAIN);
        h.update(self.secret);
        binding.feed(&mut h);
        CookieDigest(h.finalize().into())
    }
}

impl FromStr for Cookie {
    type Err = CookieParseError;
    fn from_str(s: &str) -> Result<Self, CookieParseError> {
        Cookie::parse(s)
    }
}

impl TryFrom<String> for Cookie {
    type Error = CookieParseError;
    fn try_from(s: String) -> Result<Self, CookieParseError> {
        Cookie::parse(&s)
    }
}

impl<'de> Deserialize<'de> for Cookie {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Cookie::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Serialised as its printed form, for requests that carry one; the table never
/// holds a `Cookie`, only its [`CookieDigest`].
impl Serialize for Cookie {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The printed cookie: what the owner hands over. Only ever shown to the grantor.
impl fmt::Display for Cookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = self.grant.to_be_bytes();
        write!(f, "{PREFIX}{}{}", hex::encode(id), hex::encode(self.secret))
    }
}

impl fmt::Debug for Cookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cookie({}, <secret>)", self.grant)
    }
}

/// What a cookie is bound to. Any change to one of these makes the stored digest
/// stop matching.
pub(crate) struct Binding<'a> {
    pub grant: GrantId,
    pub resource: &'a ResourceId,
    pub grantee: &'a PartitionId,
    pub access: Access,
    pub parent: Option<GrantId>,
    pub generation: u64,
}

impl Binding<'_> {
    fn feed(&self, h: &mut Sha256) {
        // Length-prefixed fields: no two bindings encode to the same bytes.
        let field = |h: &mut Sha256, b: &[u8]| {
            h.update((b.len() as u32).to_be_bytes());
            h.update(b);
        };
        field(h, &self.grant.to_be_bytes());
        field(h, self.resource.to_string().as_bytes());
        field(h, self.grantee.as_str().as_bytes());
        field(h, &[self.access as u8]);
        match self.parent {
            Some(p) => field(h, &p.to_be_bytes()),
            None => field(h, &[]),
        }
        field(h, &self.generation.to_be_bytes());
    }
}

/// SHA-256 of a cookie and its binding; persisted as hex.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CookieDigest([u8; 32]);

impl CookieDigest {
    /// Constant-time, so timing says nothing about how much of a forgery matched.
    pub(crate) fn matches(&self, other: &CookieDigest) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl TryFrom<String> for CookieDigest {
    type Error = hex::FromHexError;
    fn try_from(s: String) -> Result<Self, hex::FromHexError> {
        let mut d = [0u8; 32];
        hex::decode_to_slice(s, &mut d)?;
        Ok(CookieDigest(d))
    }
}

impl From<CookieDigest> for String {
    fn from(d: CookieDigest) -> String {
        hex::encode(d.0)
    }
}

impl fmt::Debug for CookieDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CookieDigest({}…)", hex::encode(&self.0[..4]))
    }
}
