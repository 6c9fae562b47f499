//! Lambda's request and response shapes (PascalCase JSON, as AWS documents
//! them) and the checks on every field a client sends.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::ApiError;
use crate::registry::FunctionRecord;
use crate::runtime::Runtime;

/// MemorySize range in MiB.
pub const MEMORY_RANGE: std::ops::RangeInclusive<i64> = 128..=10240;
/// Timeout range in seconds.
pub const TIMEOUT_RANGE: std::ops::RangeInclusive<i64> = 1..=900;
/// Environment variables' total size (keys plus values).
pub const MAX_ENV_BYTES: usize = 4096;
/// Longest description.
pub const MAX_DESCRIPTION: usize = 256;

/// Environment keys Lambda reserves for the runtime.
const RESERVED_ENV: &[&str] = &[
    "_HANDLER",
    "_X_AMZN_TRACE_ID",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_EXECUTION_ENV",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_LAMBDA_INITIALIZATION_TYPE",
    "AWS_LAMBDA_LOG_GROUP_NAME",
    "AWS_LAMBDA_LOG_STREAM_NAME",
    "AWS_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_LAMBDA_RUNTIME_API",
    "LAMBDA_TASK_ROOT",
    "LAMBDA_RUNTIME_DIR",
];

/// `Code` of CreateFunction.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CodeInput {
    /// Base64 of the zip.
    pub zip_file: Option<String>,
    /// Not supported here.
    pub s3_bucket: Option<String>,
    /// Not supported here.
    pub image_uri: Option<String>,
}

/// `Environment`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Environment {
    /// The variables.
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
}

/// CreateFunction's body (fields we do not use are ignored).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateFunctionRequest {
    /// Name.
    pub function_name: Option<String>,
    /// Runtime.
    pub runtime: Option<String>,
    /// Role ARN (kept, not used).
    pub role: Option<String>,
    /// Handler.
    pub handler: Option<String>,
    /// Code.
    pub code: Option<CodeInput>,
    /// Description.
    pub description: Option<String>,
    /// Timeout, seconds.
    pub timeout: Option<i64>,
    /// Memory, MiB.
    pub memory_size: Option<i64>,
    /// Environment.
    pub environment: Option<Environment>,
    /// `Zip` only.
    pub package_type: Option<String>,
    /// `x86_64` only.
    pub architectures: Option<Vec<String>>,
}

/// UpdateFunctionCode's body.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateCodeRequest {
    /// Base64 of the zip.
    pub zip_file: Option<String>,
    /// Not supported here.
    pub s3_bucket: Option<String>,
    /// Not supported here.
    pub image_uri: Option<String>,
    /// Validate only.
    pub dry_run: Option<bool>,
    /// Only if this is still the current revision.
    pub revision_id: Option<String>,
    /// `x86_64` only.
    pub architectures: Option<Vec<String>>,
}

/// UpdateFunctionConfiguration's body.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateConfigRequest {
    /// Runtime.
    pub runtime: Option<String>,
    /// Role.
    pub role: Option<String>,
    /// Handler.
    pub handler: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Timeout, seconds.
    pub timeout: Option<i64>,
    /// Memory, MiB.
    pub memory_size: Option<i64>,
    /// Environment (replaces the old one whole).
    pub environment: Option<Environment>,
    /// Only if this is still the current revision.
    pub revision_id: Option<String>,
}

/// PutFunctionConcurrency's body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ConcurrencyRequest {
    /// The reservation.
    pub reserved_concurrent_executions: Option<i64>,
}

/// Lambda's `FunctionConfiguration`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct FunctionConfiguration {
    /// Name.
    pub function_name: String,
    /// ARN.
    pub function_arn: String,
    /// Runtime.
    pub runtime: String,
    /// Role.
    pub role: String,
    /// Handler.
    pub handler: String,
    /// Zip size.
    pub code_size: u64,
    /// Description.
    pub description: String,
    /// Timeout, seconds.
    pub timeout: u32,
    /// Memory, MiB.
    pub memory_size: u32,
    /// Last change.
    pub last_modified: String,
    /// Base64 SHA-256 of the zip.
    pub code_sha256: String,
    /// Always `$LATEST` (no published versions).
    pub version: &'static str,
    /// Environment, when any variable is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<Environment>,
    /// Current revision.
    pub revision_id: String,
    /// Always `Active`: code is ready when the call returns.
    pub state: &'static str,
    /// Always `Successful`.
    pub last_update_status: &'static str,
    /// Always `Zip`.
    pub package_type: &'static str,
    /// Always `["x86_64"]`.
    pub architectures: [&'static str; 1],
}

impl FunctionConfiguration {
    /// The configuration of a stored function.
    pub fn from_record(rec: &FunctionRecord, arn: String) -> Self {
        Self {
            function_name: rec.name.clone(),
            function_arn: arn,
            runtime: rec.runtime.name().to_string(),
            role: rec.role.clone(),
            handler: rec.handler.clone(),
            code_size: rec.code_size,
            description: rec.description.clone(),
            timeout: rec.timeout_s,
            memory_size: rec.memory_mib,
            last_modified: rec.last_modified.clone(),
            code_sha256: rec.code_sha256_base64.clone(),
            version: "$LATEST",
            environment: (!rec.env.is_empty()).then(|| Environment {
                variables: rec.env.clone(),
            }),
            revision_id: rec.revision_id.clone(),
            state: "Active",
            last_update_status: "Successful",
            package_type: "Zip",
            architectures: ["x86_64"],
        }
    }
}

/// Parses a JSON body into `T`, with Lambda's error for malformed JSON.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_content(format!("Could not parse request body into json: {e}")))
}

/// A function name as CreateFunction takes it: 1-64 of `[A-Za-z0-9_-]`.
pub fn check_function_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::validation(format!(
            "1 validation error detected: Value '{}' at 'functionName' failed to satisfy constraint: \
             Member must satisfy regular expression pattern: [a-zA-Z0-9-_]+ and have length 1 to 64",
            truncate(name, 170)
        )))
    }
}

/// A runtime we support (Lambda's OS-only runtimes and Ember's `exec`).
pub fn check_runtime(runtime: &str) -> Result<Runtime, ApiError> {
    Runtime::parse(runtime).ok_or_else(|| {
        let names: Vec<&str> = Runtime::ALL.iter().map(|r| r.name()).collect();
        ApiError::invalid_parameter(format!(
            "Value {} at 'runtime' failed to satisfy constraint: Member must satisfy enum value set: [{}]",
            truncate(runtime, 64),
            names.join(", ")
        ))
    })
}

/// A handler for `runtime`: a non-blank word of at most 128 characters for
/// Lambda's runtimes; for `exec` a shell command of at most 4096 bytes.
pub fn check_handler(runtime: Runtime, handler: &str) -> Result<(), ApiError> {
    let exec = runtime == Runtime::Exec;
    let ok = if exec {
        !handler.trim().is_empty() && handler.len() <= 4096 && !handler.contains('\0')
    } else {
        !handler.is_empty() && handler.len() <= 128 && !handler.chars().any(char::is_whitespace)
    };
    if ok {
        Ok(())
    } else {
        Err(ApiError::validation(format!(
            "1 validation error detected: Value '{}' at 'handler' failed to satisfy constraint: {}",
            truncate(handler, 128),
            if exec {
                "Member must be a command of 1 to 4096 bytes"
            } else {
                "Member must satisfy regular expression pattern: [^\\s]+ and have length 1 to 128"
            }
        )))
    }
}

/// MemorySize within Lambda's range.
pub fn check_memory(mib: i64) -> Result<u32, ApiError> {
    if MEMORY_RANGE.contains(&mib) {
        Ok(mib as u32)
    } else {
        Err(ApiError::validation(format!(
            "1 validation error detected: Value '{mib}' at 'memorySize' failed to satisfy constraint: \
             Member must have value between 128 and 10240"
        )))
    }
}

/// Timeout within Lambda's range.
pub fn check_timeout(secs: i64) -> Result<u32, ApiError> {
    if TIMEOUT_RANGE.contains(&secs) {
        Ok(secs as u32)
    } else {
        Err(ApiError::validation(format!(
            "1 validation error detected: Value '{secs}' at 'timeout' failed to satisfy constraint: \
             Member must have value between 1 and 900"
        )))
    }
}

/// A description of at most 256 characters.
pub fn check_description(d: &str) -> Result<(), ApiError> {
    if d.chars().count() <= MAX_DESCRIPTION {
        Ok(())
    } else {
        Err(ApiError::validation(
            "1 validation error detected: Value at 'description' failed to satisfy constraint: \
             Member must have length less than or equal to 256",
        ))
    }
}

/// Environment variables: key pattern, no reserved keys, 4 KiB in all.
pub fn check_environment(vars: &BTreeMap<String, String>) -> Result<(), ApiError> {
    let reserved: Vec<&str> = vars
        .keys()
        .map(String::as_str)
        .filter(|k| RESERVED_ENV.contains(k))
        .collect();
    if !reserved.is_empty() {
        return Err(ApiError::invalid_parameter(format!(
            "Lambda was unable to configure your environment variables because the environment \
             variables you have provided contains reserved keys that are currently not supported \
             for modification. Reserved keys used in this request: {}",
            reserved.join(", ")
        )));
    }
    for key in vars.keys() {
        let mut bytes = key.bytes();
        let ok = bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
            && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok {
            return Err(ApiError::validation(format!(
                "1 validation error detected: Value '{}' at 'environment.variables' failed to satisfy \
                 constraint: Map keys must satisfy constraint: [Member must satisfy regular expression \
                 pattern: [a-zA-Z]([a-zA-Z0-9_])*]",
                truncate(key, 128)
            )));
        }
    }
    let size: usize = vars.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > MAX_ENV_BYTES || vars.values().any(|v| v.contains('\0')) {
        return Err(ApiError::invalid_parameter(
            "Lambda was unable to configure your environment variables because the environment \
             variables you have provided exceeded the 4KB limit.",
        ));
    }
    Ok(())
}

/// Only `x86_64` runs here.
pub fn check_architectures(archs: Option<&Vec<String>>) -> Result<(), ApiError> {
    match archs {
        None => Ok(()),
        Some(a) if a.len() == 1 && a[0] == "x86_64" => Ok(()),
        Some(_) => Err(ApiError::invalid_parameter(
            "Ember runs functions on x86_64 only: Architectures must be [\"x86_64\"]",
        )),
    }
}

/// Decodes `Code.ZipFile`.
pub fn decode_zip(zip_b64: Option<&str>, s3: bool, image: bool) -> Result<Vec<u8>, ApiError> {
    use base64::Engine;
    if s3 || image {
        return Err(ApiError::invalid_parameter(
            "Ember takes function code as Code.ZipFile only (no S3 or container images)",
        ));
    }
    let b64 = zip_b64.ok_or_else(|| ApiError::invalid_parameter("Code.ZipFile is required"))?;
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| ApiError::invalid_parameter("Code.ZipFile is not valid base64"))
}

/// The first `max` characters of a client-supplied string, for messages.
pub fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_checks() {
        assert!(check_function_name("hello-World_1").is_ok());
        for bad in ["", "a b", "a/b", "../x", &"x".repeat(65)] {
            assert_eq!(
                check_function_name(bad).unwrap_err().code,
                "ValidationException"
            );
        }
        assert!(check_runtime("provided.al2023").is_ok());
        assert_eq!(
            check_runtime("python3.12").unwrap_err().code,
            "InvalidParameterValueException"
        );
        assert!(check_handler(Runtime::Exec, "cat | tr a b").is_ok());
        assert!(check_handler(Runtime::Provided, "a b").is_err());
        assert_eq!(check_memory(127).unwrap_err().code, "ValidationException");
        assert_eq!(check_memory(10240).unwrap(), 10240);
        assert!(
            check_timeout(0).is_err() && check_timeout(901).is_err() && check_timeout(900).is_ok()
        );
        let mut env = BTreeMap::from([("GOOD_KEY".to_string(), "v".to_string())]);
        assert!(check_environment(&env).is_ok());
        env.insert("AWS_REGION".into(), "x".into());
        assert!(check_environment(&env)
            .unwrap_err()
            .message
            .contains("AWS_REGION"));
        let env = BTreeMap::from([("1BAD".to_string(), "v".to_string())]);
        assert!(check_environment(&BTreeMap::from([("A".to_string(), String::new())])).is_ok());
        assert!(check_environment(&env).is_err());
        let env = BTreeMap::from([("BIG".to_string(), "v".repeat(5000))]);
        assert!(check_environment(&env).unwrap_err().message.contains("4KB"));
    }

    #[test]
    fn malformed_json_is_invalid_request_content() {
        assert_eq!(
            parse_body::<CreateFunctionRequest>(b"{not json")
                .unwrap_err()
                .code,
            "InvalidRequestContentException"
        );
        assert_eq!(
            parse_body::<CreateFunctionRequest>(br#"{"MemorySize":"big"}"#)
                .unwrap_err()
                .code,
            "InvalidRequestContentException"
        );
        assert!(parse_body::<UpdateConfigRequest>(b"").is_ok());
    }
}
