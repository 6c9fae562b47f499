//! AWS Signature Version 4: verifies the `Authorization` header of a request
//! the way AWS services do, and signs requests (for tests and tools).
//!
//! Only header-based signing is supported (no presigned query strings). The
//! payload hash is the body's SHA-256; an `x-amz-content-sha256` header, when
//! present, must be that hash in hex (`UNSIGNED-PAYLOAD` and streaming
//! payloads are refused: every byte of a request is authenticated).
//!
//! A server verifies in two steps so that no body byte is buffered for a
//! caller it does not know: [`verify_head`] checks everything the headers
//! hold (key, date window, signed header set, and the whole signature when
//! the client declared its payload hash), then [`PendingSignature::finish`]
//! takes the SHA-256 of the body, hashed as it streams in.

use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::timefmt;

/// The only algorithm SigV4 names.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// How far a request's `X-Amz-Date` may be from our clock (AWS: 15 minutes).
pub const MAX_SKEW: Duration = Duration::from_secs(15 * 60);

/// Why a request's signature was refused. Each maps to an AWS error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header (AWS: `MissingAuthenticationTokenException`).
    #[error("Missing Authentication Token")]
    Missing,
    /// The header is not a well-formed SigV4 authorization.
    #[error("Authorization header is malformed: {0}")]
    Malformed(String),
    /// The access key id names no tenant (AWS: `UnrecognizedClientException`).
    #[error("The security token included in the request is invalid.")]
    UnknownKey,
    /// The request is too old or from the future.
    #[error("Signature expired: {0}")]
    Expired(String),
    /// The signature does not match (AWS: `InvalidSignatureException`).
    #[error("The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.")]
    Mismatch,
    /// A header that changes what the request does is present but not
    /// signed, or repeated.
    #[error("The header '{0}' changes what the request does: it must be sent once and be listed in SignedHeaders")]
    Unsigned(String),
}

impl AuthError {
    /// The AWS error code for this refusal.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "MissingAuthenticationTokenException",
            AuthError::UnknownKey => "UnrecognizedClientException",
            AuthError::Malformed(_)
            | AuthError::Expired(_)
            | AuthError::Mismatch
            | AuthError::Unsigned(_) => "InvalidSignatureException",
        }
    }
}

/// The parts of a request's head the signature covers.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    /// HTTP method, upper case.
    pub method: &'a str,
    /// The path as sent on the wire (still percent-encoded).
    pub path: &'a str,
    /// The raw query string without `?` (empty if none).
    pub query: &'a str,
    /// Every header, name and value; names in any case, repeated names allowed.
    pub headers: &'a [(String, String)],
}

/// The parts of a request the signature covers.
#[derive(Debug, Clone)]
pub struct RequestParts<'a> {
    /// HTTP method, upper case.
    pub method: &'a str,
    /// The path as sent on the wire (still percent-encoded).
    pub path: &'a str,
    /// The raw query string without `?` (empty if none).
    pub query: &'a str,
    /// Every header, name and value; names in any case, repeated names allowed.
    pub headers: &'a [(String, String)],
    /// The body.
    pub body: &'a [u8],
}

/// The parsed `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// The access key id.
    pub access_key_id: String,
    /// `YYYYMMDD` of the credential scope.
    pub date: String,
    /// The region of the scope (any region is accepted).
    pub region: String,
    /// The service of the scope.
    pub service: String,
    /// The signed header names, lower case, as listed.
    pub signed_headers: Vec<String>,
    /// The hex signature.
    pub signature: String,
}

/// Parses `AWS4-HMAC-SHA256 Credential=.../.../.../.../aws4_request, SignedHeaders=..., Signature=...`.
pub fn parse_authorization(value: &str) -> Result<Authorization, AuthError> {
    let rest = value
        .strip_prefix(ALGORITHM)
        .ok_or_else(|| AuthError::Malformed(format!("algorithm must be {ALGORITHM}")))?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        let (key, val) = part
            .split_once('=')
            .ok_or_else(|| AuthError::Malformed(format!("'{part}' is not KEY=VALUE")))?;
        match key {
            "Credential" => credential = Some(val),
            "SignedHeaders" => signed = Some(val),
            "Signature" => signature = Some(val),
            _ => return Err(AuthError::Malformed(format!("unknown field '{key}'"))),
        }
    }
    let missing = |f: &str| AuthError::Malformed(format!("{f} is missing"));
    let credential = credential.ok_or_else(|| missing("Credential"))?;
    let signed = signed.ok_or_else(|| missing("SignedHeaders"))?;
    let signature = signature.ok_or_else(|| missing("Signature"))?;
    let scope: Vec<&str> = credential.split('/').collect();
    if scope.len() != 5 || scope[4] != "aws4_request" || scope.iter().any(|s| s.is_empty()) {
        return Err(AuthError::Malformed(
            "Credential must be KEY/DATE/REGION/SERVICE/aws4_request".into(),
        ));
    }
    if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(AuthError::Malformed(
            "Signature must be 64 hex digits".into(),
        ));
    }
    let signed_headers: Vec<String> = signed.split(';').map(str::to_string).collect();
    if signed_headers
        .iter()
        .any(|h| h.is_empty() || h.to_ascii_lowercase() != *h)
    {
        return Err(AuthError::Malformed(
            "SignedHeaders must be lower-case names separated by ';'".into(),
        ));
    }
    Ok(Authorization {
        access_key_id: scope[0].to_string(),
        date: scope[1].to_string(),
        region: scope[2].to_string(),
        service: scope[3].to_string(),
        signed_headers,
        signature: signature.to_ascii_lowercase(),
    })
}

impl<'a> RequestParts<'a> {
    /// The head of this request.
    pub fn head(&self) -> RequestHead<'a> {
        RequestHead {
            method: self.method,
            path: self.path,
            query: self.query,
            headers: self.headers,
        }
    }
}

/// Verifies a whole (buffered) request's signature. `secret_for` maps an
/// access key id to its secret (None: unknown key). Returns the verified
/// authorization.
pub fn verify(
    req: &RequestParts<'_>,
    service: &str,
    now: SystemTime,
    secret_for: impl Fn(&str) -> Option<String>,
) -> Result<Authorization, AuthError> {
    let pending = verify_head(&req.head(), service, now, secret_for, &[])?;
    pending.finish(&Sha256::digest(req.body).into())
}

/// A signature whose header checks passed. Its payload is checked by
/// [`PendingSignature::finish`] once the body's SHA-256 is known.
#[derive(Debug, Clone)]
pub struct PendingSignature {
    auth: Authorization,
    /// The scope's signing key.
    signing_key: Vec<u8>,
    /// `AWS4-HMAC-SHA256\n<date>\n<scope>\n`.
    string_to_sign_prefix: String,
    /// The canonical request up to (without) the payload hash.
    canonical_prefix: String,
    /// The payload hash the client declared in `x-amz-content-sha256`; the
    /// signature over it was verified already.
    declared: Option<[u8; 32]>,
}

impl PendingSignature {
    /// The authorization (its signature is fully verified only once
    /// [`finish`](Self::finish) succeeds, unless [`declared`](Self::declared)).
    pub fn authorization(&self) -> &Authorization {
        &self.auth
    }

    /// Whether the client declared its payload hash, so the signature is
    /// verified already and only the body's hash is left to compare.
    pub fn declared(&self) -> bool {
        self.declared.is_some()
    }

    /// Completes the check with the SHA-256 of the body as received.
    pub fn finish(self, body_sha256: &[u8; 32]) -> Result<Authorization, AuthError> {
        let ok = match &self.declared {
            Some(declared) => constant_time_eq(declared, body_sha256),
            None => {
                let expected = self.signature_over(&hex::encode(body_sha256));
                constant_time_eq(expected.as_bytes(), self.auth.signature.as_bytes())
            }
        };
        if ok {
            Ok(self.auth)
        } else {
            Err(AuthError::Mismatch)
        }
    }

    fn signature_over(&self, payload_hash_hex: &str) -> String {
        let mut canonical = String::with_capacity(self.canonical_prefix.len() + 64);
        canonical.push_str(&self.canonical_prefix);
        canonical.push_str(payload_hash_hex);
        let mut string_to_sign = self.string_to_sign_prefix.clone();
        string_to_sign.push_str(&hex::encode(Sha256::digest(canonical.as_bytes())));
        hex::encode(hmac(&self.signing_key, string_to_sign.as_bytes()))
    }
}

/// Verifies what a request's head can show: a known key, the date window,
/// the signed header set (`host`, and each of `must_sign` that is present,
/// which must then appear once), and, when the client declared its payload
/// hash in `x-amz-content-sha256`, the signature itself. No body byte is
/// needed.
pub fn verify_head(
    head: &RequestHead<'_>,
    service: &str,
    now: SystemTime,
    secret_for: impl Fn(&str) -> Option<String>,
    must_sign: &[&str],
) -> Result<PendingSignature, AuthError> {
    let auth_value = header(head.headers, "authorization").ok_or(AuthError::Missing)?;
    let auth = parse_authorization(auth_value)?;
    if auth.service != service {
        return Err(AuthError::Malformed(format!(
            "credential scope names service '{}', expected '{service}'",
            auth.service
        )));
    }
    let secret = secret_for(&auth.access_key_id).ok_or(AuthError::UnknownKey)?;
    if !auth.signed_headers.iter().any(|h| h == "host") {
        return Err(AuthError::Malformed(
            "'host' must be a signed header".into(),
        ));
    }
    for name in must_sign {
        let count = head
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count();
        if count > 1 || (count == 1 && !auth.signed_headers.iter().any(|h| h == name)) {
            return Err(AuthError::Unsigned((*name).to_string()));
        }
    }
    let amz_date = header(head.headers, "x-amz-date")
        .ok_or_else(|| AuthError::Malformed("X-Amz-Date header is missing".into()))?;
    let signed_at = timefmt::parse_amz_date(amz_date).ok_or_else(|| {
        AuthError::Malformed(format!("X-Amz-Date '{amz_date}' is not YYYYMMDDTHHMMSSZ"))
    })?;
    if !amz_date.starts_with(&auth.date) {
        return Err(AuthError::Malformed(
            "credential scope date does not match X-Amz-Date".into(),
        ));
    }
    let skew = match now.duration_since(signed_at) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    if skew > MAX_SKEW {
        return Err(AuthError::Expired(format!(
            "{amz_date} is more than 15 minutes from the server's time {}",
            timefmt::amz_date(now)
        )));
    }
    let declared = match header(head.headers, "x-amz-content-sha256") {
        None => None,
        Some(v) => Some(declared_hash(v)?),
    };
    let pending = PendingSignature {
        canonical_prefix: canonical_head(head, &auth.signed_headers)?,
        string_to_sign_prefix: format!(
            "{ALGORITHM}\n{amz_date}\n{}/{}/{}/aws4_request\n",
            auth.date, auth.region, auth.service
        ),
        signing_key: signing_key(&secret, &auth),
        declared,
        auth,
    };
    if let Some(d) = &pending.declared {
        let expected = pending.signature_over(&hex::encode(d));
        if !constant_time_eq(expected.as_bytes(), pending.auth.signature.as_bytes()) {
            return Err(AuthError::Mismatch);
        }
    }
    Ok(pending)
}

/// An `x-amz-content-sha256` value: 64 hex digits, nothing else.
fn declared_hash(v: &str) -> Result<[u8; 32], AuthError> {
    let mut out = [0u8; 32];
    match hex::decode_to_slice(v.trim(), &mut out) {
        Ok(()) => Ok(out),
        Err(_) => Err(AuthError::Malformed(format!(
            "X-Amz-Content-Sha256 must be the payload's SHA-256 in hex, not '{}'",
            v.chars().take(64).collect::<String>()
        ))),
    }
}

fn signing_key(secret: &str, auth: &Authorization) -> Vec<u8> {
    let mut key = hmac(format!("AWS4{secret}").as_bytes(), auth.date.as_bytes());
    for part in [&auth.region, &auth.service, "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    key
}

/// Signs a request: returns the `Authorization` header value. The request's
/// headers must already hold `host` and `x-amz-date`; every header listed in
/// `signed_headers` (lower case) is signed.
pub fn sign(
    req: &RequestParts<'_>,
    access_key_id: &str,
    secret: &str,
    region: &str,
    service: &str,
    signed_headers: &[&str],
) -> Result<String, AuthError> {
    let amz_date = header(req.headers, "x-amz-date")
        .ok_or_else(|| AuthError::Malformed("X-Amz-Date header is missing".into()))?;
    let mut names: Vec<String> = signed_headers
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    names.sort();
    let auth = Authorization {
        access_key_id: access_key_id.to_string(),
        date: amz_date.get(..8).unwrap_or_default().to_string(),
        region: region.to_string(),
        service: service.to_string(),
        signed_headers: names,
        signature: String::new(),
    };
    let body_hash = hex::encode(Sha256::digest(req.body));
    let sig = signature(req, &auth, secret, amz_date, &body_hash)?;
    Ok(format!(
        "{ALGORITHM} Credential={}/{}/{}/{}/aws4_request, SignedHeaders={}, Signature={sig}",
        auth.access_key_id,
        auth.date,
        auth.region,
        auth.service,
        auth.signed_headers.join(";")
    ))
}

/// A client's signing identity: its key pair and the credential scope.
#[derive(Debug, Clone, Copy)]
pub struct ClientKey<'a> {
    /// The access key id.
    pub access_key_id: &'a str,
    /// Its secret.
    pub secret: &'a str,
    /// The region in the scope (the router accepts any).
    pub region: &'a str,
    /// The service in the scope (`lambda`).
    pub service: &'a str,
}

/// Signs a client's request at time `at`: appends `x-amz-date` to `headers`
/// (which must hold `host`), signs every header then present, and appends
/// the `authorization` header. `uri` is the path with its query, if any.
pub fn sign_headers(
    method: &str,
    uri: &str,
    headers: &mut Vec<(String, String)>,
    body: &[u8],
    key: &ClientKey<'_>,
    at: SystemTime,
) -> Result<(), AuthError> {
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    headers.push(("x-amz-date".into(), timefmt::amz_date(at)));
    let names: Vec<String> = headers
        .iter()
        .map(|(k, _)| k.to_ascii_lowercase())
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let req = RequestParts {
        method,
        path,
        query,
        headers,
        body,
    };
    let auth = sign(
        &req,
        key.access_key_id,
        key.secret,
        key.region,
        key.service,
        &names,
    )?;
    headers.push(("authorization".into(), auth));
    Ok(())
}

/// The hex signature of a request under `auth`'s scope and signed headers.
fn signature(
    req: &RequestParts<'_>,
    auth: &Authorization,
    secret: &str,
    amz_date: &str,
    body_hash: &str,
) -> Result<String, AuthError> {
    let canonical = canonical_request(req, &auth.signed_headers, body_hash)?;
    let scope = format!(
        "{}/{}/{}/aws4_request",
        auth.date, auth.region, auth.service
    );
    let string_to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    Ok(hex::encode(hmac(
        &signing_key(secret, auth),
        string_to_sign.as_bytes(),
    )))
}

/// The canonical request (SigV4 step 1) for non-S3 services.
pub fn canonical_request(
    req: &RequestParts<'_>,
    signed_headers: &[String],
    body_hash: &str,
) -> Result<String, AuthError> {
    let mut out = canonical_head(&req.head(), signed_headers)?;
    out.push_str(body_hash);
    Ok(out)
}

/// The canonical request up to the payload hash, which follows it.
fn canonical_head(head: &RequestHead<'_>, signed_headers: &[String]) -> Result<String, AuthError> {
    let mut out = String::new();
    out.push_str(head.method);
    out.push('\n');
    // Non-S3 services encode the (already encoded) path once more.
    let path = if head.path.is_empty() { "/" } else { head.path };
    out.push_str(&uri_encode(path.as_bytes(), false));
    out.push('\n');
    out.push_str(&canonical_query(head.query));
    out.push('\n');
    for name in signed_headers {
        let values: Vec<String> = head
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| collapse_spaces(v))
            .collect();
        if values.is_empty() {
            return Err(AuthError::Malformed(format!(
                "signed header '{name}' is not in the request"
            )));
        }
        out.push_str(name);
        out.push(':');
        out.push_str(&values.join(","));
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&signed_headers.join(";"));
    out.push('\n');
    Ok(out)
}

/// The canonical query string: each name and value decoded, then strictly
/// encoded, sorted by name then value.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&percent_decode(k), true),
                uri_encode(&percent_decode(v), true),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encodes every byte but RFC 3986 unreserved ones (and `/` unless
/// `encode_slash`).
fn uri_encode(bytes: &[u8], encode_slash: bool) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        let keep = b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (b == b'/' && !encode_slash);
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes; `+` stays `+` (SigV4 does not treat it as space).
pub fn percent_decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// Trims a header value and collapses runs of spaces to one.
fn collapse_spaces(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The first value of a header, by case-insensitive name.
fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return Vec::new(),
    };
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
#[path = "sigv4_tests.rs"]
mod tests;
