//! Volume access tokens and block capabilities (docs/adr/0016).
//!
//! A token names the volumes its holder may use, each read-write or read-only, and when it
//! expires; it is signed with the deployment's token key (a keyed BLAKE3 MAC), which the
//! servers and the operator issuing tokens hold. A client sends its token with every call
//! (the `authorization: Bearer` header); servers that hold the key check it, and check
//! that whatever the call touches belongs to a volume it grants.
//!
//! A block is content-addressed and may be shared by volumes, so a chunkserver cannot
//! tell from a block id which volumes reference it. The metaservers can: when they answer
//! a token holder's extents they attach, for each block, a capability (a MAC of the block
//! id and the volume under the same key). A chunkserver serves a token holder a block only
//! with a capability for a volume the token grants; a put hands one back for the block
//! just stored.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::BlockId;

/// The prefix and version of every token.
pub const PREFIX: &str = "mrd1";
/// The header a client's token travels in (`Bearer <token>`).
pub const HEADER: &str = "authorization";
/// The longest token accepted, in bytes.
pub const MAX_TOKEN_LEN: usize = 8 << 10;
/// Most volumes one token names.
pub const MAX_GRANTS: usize = 256;
/// Bytes of a block capability.
pub const CAP_LEN: usize = 16;

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token of this format at all.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// Signed with a key this server does not hold, or altered since it was signed.
    #[error("token signature does not verify (altered, or signed with another key: {0})")]
    BadSignature(String),
    /// Past its expiry.
    #[error("token expired at {0} (unix seconds)")]
    Expired(u64),
    /// A key file that cannot be used.
    #[error("token key: {0}")]
    Key(String),
}

/// One volume a token grants.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Grant {
    /// The volume's name.
    pub volume: String,
    /// Whether its holder may change it (otherwise read only).
    pub write: bool,
}

/// What a token says.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Claims {
    /// The key it was signed with.
    pub kid: String,
    /// Whom it was issued to (for logs and audits).
    pub subject: String,
    /// The volumes it grants.
    pub volumes: Vec<Grant>,
    /// When it was issued (unix seconds).
    pub issued: u64,
    /// When it stops being valid (unix seconds).
    pub expires: u64,
}

impl Claims {
    /// The grant for volume `name`, if any.
    pub fn grant(&self, name: &str) -> Option<&Grant> {
        self.volumes.iter().find(|g| g.volume == name)
    }
}

/// The deployment's token keys: the first signs, every one verifies (rotation: add a new
/// key first, issue with it, drop the old one once its tokens have expired).
#[derive(Clone)]
pub struct TokenKeys {
    keys: Vec<(String, [u8; 32])>,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self.keys.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("TokenKeys").field("kids", &kids).finish()
    }
}

fn valid_kid(kid: &str) -> bool {
    !kid.is_empty()
        && kid.len() <= 32
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl TokenKeys {
    /// A new key named `kid`, from the system's random source.
    pub fn generate(kid: &str) -> Result<Self, TokenError> {
        if !valid_kid(kid) {
            return Err(TokenError::Key(format!(
                "key id {kid:?}: 1-32 of [A-Za-z0-9-_]"
            )));
        }
        let mut key = [0u8; 32];
        let mut f = std::fs::File::open("/dev/urandom")
            .map_err(|e| TokenError::Key(format!("/dev/urandom: {e}")))?;
        std::io::Read::read_exact(&mut f, &mut key)
            .map_err(|e| TokenError::Key(format!("/dev/urandom: {e}")))?;
        Ok(TokenKeys {
            keys: vec![(kid.to_string(), key)],
        })
    }

    /// Parses a key file: one key per line, `<kid> <64 hex digits>`; `#` starts a comment.
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = |why: &str| TokenError::Key(format!("line {}: {why}", n + 1));
            let mut parts = line.split_whitespace();
            let (Some(kid), Some(hex_key), None) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(bad("expected `<key id> <64 hex digits>`"));
            };
            if !valid_kid(kid) {
                return Err(bad("a key id is 1-32 of [A-Za-z0-9-_]"));
            }
            let mut key = [0u8; 32];
            hex::decode_to_slice(hex_key, &mut key).map_err(|_| bad("not 64 hex digits"))?;
            if keys.iter().any(|(k, _)| k == kid) {
                return Err(bad("key id given twice"));
            }
            keys.push((kid.to_string(), key));
        }
        if keys.is_empty() {
            return Err(TokenError::Key("no key in the file".into()));
        }
        Ok(TokenKeys { keys })
    }

    /// Reads a key file (see [`parse`](Self::parse)).
    pub fn load(path: &Path) -> Result<Self, TokenError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TokenError::Key(format!("{}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| TokenError::Key(format!("{}: {e}", path.display())))
    }

    /// The file form of these keys.
    pub fn to_file(&self) -> String {
        let mut out = String::from(
            "# Meridian token keys: the first signs, all verify. Keep secret (servers and issuers only).\n",
        );
        for (kid, key) in &self.keys {
            out.push_str(&format!("{kid} {}\n", hex::encode(key)));
        }
        out
    }

    /// The id of the key that signs.
    pub fn signing_kid(&self) -> &str {
        &self.keys[0].0
    }

    fn key(&self, kid: &str) -> Option<&[u8; 32]> {
        self.keys.iter().find(|(k, _)| k == kid).map(|(_, key)| key)
    }

    /// A signed token for `subject`, granting `volumes`, valid for `ttl_secs` from `now`.
    pub fn issue(
        &self,
        subject: &str,
        volumes: Vec<Grant>,
        now: u64,
        ttl_secs: u64,
    ) -> Result<String, TokenError> {
        if volumes.is_empty() || volumes.len() > MAX_GRANTS {
            return Err(TokenError::Malformed(format!(
                "a token names 1 to {MAX_GRANTS} volumes, not {}",
                volumes.len()
            )));
        }
        let claims = Claims {
            kid: self.signing_kid().to_string(),
            subject: subject.to_string(),
            volumes,
            issued: now,
            expires: now.saturating_add(ttl_secs),
        };
        let payload =
            serde_json::to_vec(&claims).map_err(|e| TokenError::Malformed(e.to_string()))?;
        let mac = token_mac(&self.keys[0].1, &payload);
        let token = format!("{PREFIX}.{}.{}", hex::encode(&payload), mac.to_hex());
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed(format!(
                "the token would be {} bytes, more than {MAX_TOKEN_LEN}",
                token.len()
            )));
        }
        Ok(token)
    }

    /// The claims of `token` if it is well formed, signed with one of these keys, and not
    /// expired at `now` (unix seconds).
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let (claims, payload, mac_hex) = split(token)?;
        let key = self.key(&claims.kid).ok_or_else(|| {
            TokenError::BadSignature(format!("key {:?} unknown here", claims.kid))
        })?;
        let mut mac = [0u8; 32];
        hex::decode_to_slice(mac_hex, &mut mac)
            .map_err(|_| TokenError::Malformed("signature not 64 hex digits".into()))?;
        // blake3::Hash compares in constant time.
        if token_mac(key, &payload) != blake3::Hash::from(mac) {
            return Err(TokenError::BadSignature(format!("key {:?}", claims.kid)));
        }
        if now >= claims.expires {
            return Err(TokenError::Expired(claims.expires));
        }
        Ok(claims)
    }

    /// The capability for reading `block` as part of volume `volume`.
    pub fn cap(&self, block: &BlockId, volume: u32) -> [u8; CAP_LEN] {
        cap_with(&self.keys[0].1, block, volume)
    }

    /// Whether `cap` is a capability for `block` in `volume`, under any of these keys.
    pub fn check_cap(&self, block: &BlockId, volume: u32, cap: &[u8]) -> bool {
        cap.len() == CAP_LEN
            && self.keys.iter().any(|(_, key)| {
                let want = cap_with(key, block, volume);
                // Constant time: fold the differences.
                want.iter().zip(cap).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
            })
    }
}

/// The claims of `token` without checking its signature (for `meridian admin token show`).
pub fn decode(token: &str) -> Result<Claims, TokenError> {
    split(token).map(|(claims, _, _)| claims)
}

/// A token's claims, the payload bytes they were read from, and its signature's hex.
fn split(token: &str) -> Result<(Claims, Vec<u8>, &str), TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed(format!(
            "{} bytes, more than {MAX_TOKEN_LEN}",
            token.len()
        )));
    }
    let mut parts = token.split('.');
    let (Some(prefix), Some(payload_hex), Some(mac_hex), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed(format!(
            "expected {PREFIX}.<payload>.<signature>"
        )));
    };
    if prefix != PREFIX {
        return Err(TokenError::Malformed(format!(
            "starts with {prefix:?}, not {PREFIX:?}"
        )));
    }
    let payload =
        hex::decode(payload_hex).map_err(|_| TokenError::Malformed("payload not hex".into()))?;
    let claims: Claims = serde_json::from_slice(&payload)
        .map_err(|e| TokenError::Malformed(format!("payload: {e}")))?;
    if claims.volumes.is_empty() || claims.volumes.len() > MAX_GRANTS {
        return Err(TokenError::Malformed(format!(
            "names {} volumes (1 to {MAX_GRANTS})",
            claims.volumes.len()
        )));
    }
    Ok((claims, payload, mac_hex))
}

fn token_mac(key: &[u8; 32], payload: &[u8]) -> blake3::Hash {
    let sub = blake3::derive_key("meridian 2026-12 volume access token", key);
    blake3::keyed_hash(&sub, payload)
}

fn cap_with(key: &[u8; 32], block: &BlockId, volume: u32) -> [u8; CAP_LEN] {
    let sub = blake3::derive_key("meridian 2026-12 block capability", key);
    let mut h = blake3::Hasher::new_keyed(&sub);
    h.update(block.as_bytes());
    h.update(&volume.to_le_bytes());
    let mut out = [0u8; CAP_LEN];
    out.copy_from_slice(&h.finalize().as_bytes()[..CAP_LEN]);
    out
}

/// Seconds since the epoch, for expiry.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

static SERVER_KEYS: RwLock<Option<Arc<TokenKeys>>> = RwLock::new(None);
static CLIENT_TOKEN: RwLock<Option<Arc<str>>> = RwLock::new(None);

/// Makes this server check tokens with `keys` (it holds the deployment's token key).
pub fn install_keys(keys: TokenKeys) {
    *SERVER_KEYS.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(keys));
}

/// The keys this server checks tokens with; `None`: it checks none.
pub fn keys() -> Option<Arc<TokenKeys>> {
    SERVER_KEYS
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

/// Reads the key file `path` again on SIGHUP, and when it changes (checked every
/// `every`): keys rotate without a restart. A file that does not load is reported and the
/// keys in force stay.
pub fn watch(path: std::path::PathBuf, every: std::time::Duration) {
    crate::reload::watch(vec![path.clone()], every, "token keys", move || {
        TokenKeys::load(&path)
            .map(install_keys)
            .map_err(|e| e.to_string())
    });
}

/// Makes this client send `token` with every call from now on.
pub fn install_client_token(token: &str) -> Result<Claims, TokenError> {
    let claims = decode(token)?;
    *CLIENT_TOKEN.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::from(token));
    Ok(claims)
}

/// The token this client sends now, if any (a renewal installs another).
pub fn client_token() -> Option<Arc<str>> {
    CLIENT_TOKEN
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

/// Whether this process holds a volume access token (its requests must carry it).
pub fn has_client_token() -> bool {
    client_token().is_some()
}

/// `msg` as a request carrying this client's token, if it has one.
pub fn request<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    authorize(&mut req);
    req
}

/// Adds this client's token, if it has one, to `req`, unless `req` carries one already (a
/// call a server passes on for a token holder keeps the holder's).
pub fn authorize<T>(req: &mut tonic::Request<T>) {
    if req.metadata().contains_key(HEADER) {
        return;
    }
    let token = CLIENT_TOKEN
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if let Some(token) = token
        && let Ok(v) = format!("Bearer {token}").parse()
    {
        req.metadata_mut().insert(HEADER, v);
    }
}

/// Who is calling, as far as volumes go.
#[derive(Clone, Debug)]
pub enum Caller {
    /// Anything: one of the deployment's servers, an operator's admin certificate, or any
    /// caller of a server that checks no tokens.
    Unrestricted,
    /// A token holder: only the volumes its token grants.
    Token(Arc<Claims>),
}

impl Caller {
    /// The token's claims, for a restricted caller.
    pub fn claims(&self) -> Option<&Claims> {
        match self {
            Caller::Unrestricted => None,
            Caller::Token(c) => Some(c),
        }
    }
}

/// Who sent `request`. A server holding token keys takes a request carrying a token as
/// its holder's, whoever passes it on (a member forwarding a client's call sends the
/// client's token with it); one without a token as unrestricted if the caller's
/// certificate is a server's or an admin's, and refuses it (UNAUTHENTICATED) otherwise.
/// A server without keys restricts nobody.
pub fn caller<T>(request: &tonic::Request<T>) -> Result<Caller, tonic::Status> {
    let Some(keys) = keys() else {
        return Ok(Caller::Unrestricted);
    };
    if let Some(header) = request.metadata().get(HEADER) {
        let header = header
            .to_str()
            .map_err(|_| tonic::Status::unauthenticated("unreadable authorization header"))?;
        let token = header.strip_prefix("Bearer ").ok_or_else(|| {
            tonic::Status::unauthenticated("authorization is not `Bearer <token>`")
        })?;
        return keys
            .verify(token, unix_now())
            .map(|c| Caller::Token(Arc::new(c)))
            .map_err(|e| tonic::Status::unauthenticated(e.to_string()));
    }
    let certs = request
        .extensions()
        .get::<crate::tls_incoming::ConnInfo>()
        .and_then(|c| c.peer_certs.clone());
    if let Some(certs) = certs
        && let Some(leaf) = certs.first()
        && let Ok(roles) = crate::tls::roles(leaf)
        && crate::tls::names_tokenless(&roles)
    {
        return Ok(Caller::Unrestricted);
    }
    Err(tonic::Status::unauthenticated(
        "this server requires a volume access token (meridian admin token issue; \
         mount with --token-file)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> TokenKeys {
        TokenKeys::parse(&format!("k1 {}\n", "11".repeat(32))).unwrap()
    }

    fn grants() -> Vec<Grant> {
        vec![
            Grant {
                volume: "x".into(),
                write: true,
            },
            Grant {
                volume: "y".into(),
                write: false,
            },
        ]
    }

    #[test]
    fn an_issued_token_verifies_until_it_expires() {
        let k = keys();
        let t = k.issue("alice", grants(), 1_000, 60).unwrap();
        let c = k.verify(&t, 1_059).unwrap();
        assert_eq!(c.subject, "alice");
        assert_eq!(c.grant("x").map(|g| g.write), Some(true));
        assert_eq!(c.grant("y").map(|g| g.write), Some(false));
        assert!(c.grant("z").is_none());
        assert_eq!(k.verify(&t, 1_060), Err(TokenError::Expired(1_060)));
    }

    #[test]
    fn a_tampered_token_or_another_key_is_refused() {
        let k = keys();
        let t = k.issue("alice", grants(), 1_000, 60).unwrap();
        // Make y writable in the payload, keeping the signature.
        let parts: Vec<&str> = t.split('.').collect();
        let payload = String::from_utf8(hex::decode(parts[1]).unwrap()).unwrap();
        let forged = payload.replace(
            r#""volume":"y","write":false"#,
            r#""volume":"y","write":true"#,
        );
        assert_ne!(forged, payload);
        let forged = format!("{}.{}.{}", parts[0], hex::encode(forged), parts[2]);
        assert!(matches!(
            k.verify(&forged, 1_000),
            Err(TokenError::BadSignature(_))
        ));
        // Longer expiry, same signature.
        let later = payload.replace("\"expires\":1060", "\"expires\":99999");
        let later = format!("{}.{}.{}", parts[0], hex::encode(later), parts[2]);
        assert!(matches!(
            k.verify(&later, 1_000),
            Err(TokenError::BadSignature(_))
        ));
        // Same key id, another key.
        let other = TokenKeys::parse(&format!("k1 {}\n", "22".repeat(32))).unwrap();
        assert!(matches!(
            other.verify(&t, 1_000),
            Err(TokenError::BadSignature(_))
        ));
        // A key added for rotation verifies tokens of the old one, and signs new ones.
        let both =
            TokenKeys::parse(&format!("k2 {}\nk1 {}\n", "22".repeat(32), "11".repeat(32))).unwrap();
        assert!(both.verify(&t, 1_000).is_ok());
        let t2 = both.issue("bob", grants(), 1_000, 60).unwrap();
        assert!(matches!(
            k.verify(&t2, 1_000),
            Err(TokenError::BadSignature(_))
        ));
    }

    #[test]
    fn capabilities_bind_a_block_to_a_volume() {
        let k = keys();
        let (a, b) = (BlockId::of(b"a"), BlockId::of(b"b"));
        let cap = k.cap(&a, 7);
        assert!(k.check_cap(&a, 7, &cap));
        assert!(!k.check_cap(&a, 8, &cap));
        assert!(!k.check_cap(&b, 7, &cap));
        assert!(!k.check_cap(&a, 7, &cap[..15]));
        let other = TokenKeys::parse(&format!("k1 {}\n", "22".repeat(32))).unwrap();
        assert!(!other.check_cap(&a, 7, &cap));
    }

    #[test]
    fn key_files_round_trip_and_bad_ones_are_refused() {
        let k = TokenKeys::generate("2026-12").unwrap();
        let again = TokenKeys::parse(&k.to_file()).unwrap();
        assert_eq!(again.signing_kid(), "2026-12");
        assert_eq!(
            again.cap(&BlockId::of(b"a"), 1),
            k.cap(&BlockId::of(b"a"), 1)
        );
        for bad in [
            "",
            "# nothing\n",
            "k1 abc\n",
            "k1\n",
            "bad/kid 00\n",
            &format!("k1 {} extra\n", "00".repeat(32)),
            &format!("k1 {0}\nk1 {0}\n", "00".repeat(32)),
        ] {
            assert!(TokenKeys::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(TokenKeys::generate("no spaces").is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: crate::mutate::cases(256), ..proptest::prelude::ProptestConfig::default() })]
        /// Fuzz target: a damaged token gives an error or exactly the claims signed.
        #[test]
        fn damaged_tokens_never_verify_as_something_else(
            edits in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>(), proptest::prelude::any::<u8>()), 1..4),
        ) {
            let k = keys();
            let t = k.issue("alice", grants(), 1_000, 60).unwrap();
            let damaged = crate::mutate::mutate(t.as_bytes(), &edits);
            if let Ok(s) = std::str::from_utf8(&damaged)
                && let Ok(c) = k.verify(s, 1_000)
            {
                proptest::prop_assert_eq!(c, k.verify(&t, 1_000).unwrap());
            }
        }
    }
}
