//! Who may allocate: users, their permitted programs and session limit, and their
//! token, of which only a hash is kept.

use base64::Engine as _;
use bulkhead_pool_proto::{check_name, RefuseReason};
use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use subtle::ConstantTimeEq;

/// Token prefix: makes a leaked token recognisable to secret scanners.
const TOKEN_PREFIX: &str = "bhp_";
/// 192 bits from the CSPRNG.
const TOKEN_BYTES: usize = 24;

/// A user's token, shown once at creation. Debug does not print it.
pub struct Token(String);

impl Token {
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut b = [0u8; TOKEN_BYTES];
        rng.fill_bytes(&mut b);
        Token(format!(
            "{TOKEN_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> TokenHash {
        TokenHash::of(&self.0)
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// SHA-256 of a token. Tokens carry 192 random bits, so an unsalted fast hash is
/// enough (no dictionary to try), as for API tokens elsewhere.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    pub fn of(credential: &str) -> Self {
        Self(Sha256::digest(credential.as_bytes()).into())
    }

    /// Constant-time comparison, so timing tells nothing of how much matched.
    pub fn matches(&self, credential: &str) -> bool {
        Self::of(credential).0.ct_eq(&self.0).into()
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({})", hex::encode(&self.0[..4]))
    }
}

impl From<TokenHash> for String {
    fn from(h: TokenHash) -> String {
        hex::encode(h.0)
    }
}

impl TryFrom<String> for TokenHash {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let mut b = [0u8; 32];
        hex::decode_to_slice(&s, &mut b).map_err(|e| format!("token hash: {e}"))?;
        Ok(Self(b))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub token_hash: TokenHash,
    pub programs: BTreeSet<String>,
    pub max_sessions: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("user {0} exists")]
    Exists(String),
    #[error("no user {0}")]
    Unknown(String),
    #[error("{0:?} is not a valid name (1-64 of [A-Za-z0-9._@-])")]
    BadName(String),
    #[error("a user needs at least one program")]
    NoPrograms,
    #[error("the session limit must be at least 1")]
    ZeroLimit,
}

/// The user table, serialisable for the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Users {
    users: BTreeMap<String, User>,
}

impl Users {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a user; returns the token, which is not kept and cannot be shown again.
    pub fn add(
        &mut self,
        name: &str,
        programs: &[&str],
        max_sessions: u32,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Token, UserError> {
        if !check_name(name) {
            return Err(UserError::BadName(name.into()));
        }
        if self.users.contains_key(name) {
            return Err(UserError::Exists(name.into()));
        }
        let programs = check_programs(programs)?;
        if max_sessions == 0 {
            return Err(UserError::ZeroLimit);
        }
        let token = Token::generate(rng);
        self.users.insert(
            name.into(),
            User {
                name: name.into(),
                token_hash: token.hash(),
                programs,
                max_sessions,
            },
        );
        Ok(token)
    }

    pub fn remove(&mut self, name: &str) -> Result<User, UserError> {
        self.users
            .remove(name)
            .ok_or_else(|| UserError::Unknown(name.into()))
    }

    /// A new token; the old one stops working at once.
    pub fn rotate_token(
        &mut self,
        name: &str,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Token, UserError> {
        let u = self
            .users
            .get_mut(name)
            .ok_or_else(|| UserError::Unknown(name.into()))?;
        let token = Token::generate(rng);
        u.token_hash = token.hash();
        Ok(token)
    }

    pub fn set_programs(&mut self, name: &str, programs: &[&str]) -> Result<(), UserError> {
        let programs = check_programs(programs)?;
        self.users
            .get_mut(name)
            .ok_or_else(|| UserError::Unknown(name.into()))?
            .programs = programs;
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &User> {
        self.users.values()
    }

    /// The gateway's check of an ALLOCATE, in this order: unknown user, bad
    /// credential, not permitted. Unknown programs are the allocator's answer, after
    /// this, so that only an authenticated user learns which programs exist.
    pub fn authorize(
        &self,
        user: &str,
        credential: &str,
        program: &str,
    ) -> Result<&User, RefuseReason> {
        // Hash first whatever the user, so an unknown user costs the same work.
        let presented = TokenHash::of(credential);
        let u = self.users.get(user).ok_or(RefuseReason::UnknownUser)?;
        if !bool::from(presented.0.ct_eq(&u.token_hash.0)) {
            return Err(RefuseReason::BadCredential);
        }
        if !u.programs.contains(program) {
            return Err(RefuseReason::NotPermitted);
        }
        Ok(u)
    }
}

fn check_programs(programs: &[&str]) -> Result<BTreeSet<String>, UserError> {
    if programs.is_empty() {
        return Err(UserError::NoPrograms);
    }
    programs
        .iter()
        .map(|p| {
            if check_name(p) {
                Ok((*p).to_owned())
            } else {
                Err(UserError::BadName((*p).into()))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;

    #[test]
    fn tokens_are_long_printable_and_distinct() {
        let a = Token::generate(&mut OsRng);
        let b = Token::generate(&mut OsRng);
        assert_ne!(a.as_str(), b.as_str());
        let body = a.as_str().strip_prefix(TOKEN_PREFIX).unwrap();
        // 24 bytes in unpadded base64: 32 characters, >= 128 bits.
        assert_eq!(body.len(), 32);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_graphic()));
        assert!(!format!("{a:?}").contains(body));
    }

    #[test]
    fn authorize_refuses_each_way_with_its_reason() {
        let mut users = Users::new();
        let t = users.add("alice", &["echo"], 2, &mut OsRng).unwrap();
        let ok = users.authorize("alice", t.as_str(), "echo").unwrap();
        assert_eq!(ok.max_sessions, 2);
        assert_eq!(
            users.authorize("bob", t.as_str(), "echo"),
            Err(RefuseReason::UnknownUser)
        );
        assert_eq!(
            users.authorize("alice", "bhp_wrong", "echo"),
            Err(RefuseReason::BadCredential)
        );
        assert_eq!(
            users.authorize("alice", t.as_str(), "shell"),
            Err(RefuseReason::NotPermitted)
        );
        // Rotation: the old token stops working.
        let t2 = users.rotate_token("alice", &mut OsRng).unwrap();
        assert_eq!(
            users.authorize("alice", t.as_str(), "echo"),
            Err(RefuseReason::BadCredential)
        );
        assert!(users.authorize("alice", t2.as_str(), "echo").is_ok());
    }

    #[test]
    fn store_form_holds_the_hash_not_the_token() {
        let mut users = Users::new();
        let t = users.add("alice", &["echo", "db"], 1, &mut OsRng).unwrap();
        let json = serde_json::to_string(&users).unwrap();
        assert!(!json.contains(t.as_str()));
        assert!(json.contains(&String::from(t.hash())));
        let back: Users = serde_json::from_str(&json).unwrap();
        assert!(back.authorize("alice", t.as_str(), "db").is_ok());
    }

    #[test]
    fn bad_input_changes_nothing() {
        let mut users = Users::new();
        users.add("alice", &["echo"], 1, &mut OsRng).unwrap();
        let before = users.clone();
        assert!(matches!(
            users.add("alice", &["echo"], 1, &mut OsRng),
            Err(UserError::Exists(_))
        ));
        assert!(matches!(
            users.add("a b", &["echo"], 1, &mut OsRng),
            Err(UserError::BadName(_))
        ));
        assert!(matches!(
            users.add("bob", &[], 1, &mut OsRng),
            Err(UserError::NoPrograms)
        ));
        assert!(matches!(
            users.add("bob", &["ok", "no/pe"], 1, &mut OsRng),
            Err(UserError::BadName(_))
        ));
        assert!(matches!(
            users.add("bob", &["echo"], 0, &mut OsRng),
            Err(UserError::ZeroLimit)
        ));
        assert!(matches!(
            users.set_programs("alice", &["x y"]),
            Err(UserError::BadName(_))
        ));
        assert_eq!(users, before);
    }
}
