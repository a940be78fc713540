//! The config's JSON Schema (`legate schema`), generated from the config types: editors with
//! yaml-language-server complete and check legate configs with it. Types that read a compact
//! spelling (`5s`, `64KiB`, `127.0.0.1:8080`, `unix:/path`) describe it here.

use super::duration::ConfigDuration;
use super::model::{AdminListen, FileMode, HostRewrite, ListenAddr, ListenOn};
use super::resilience::{EndpointEntry, Rate, RetryOn, StatusRange};
use super::size::ByteSize;
use super::tls::{HeaderFromFile, TlsVersion};
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use std::borrow::Cow;

macro_rules! schema {
    ($t:ty, $name:literal, $schema:tt) => {
        impl JsonSchema for $t {
            fn schema_name() -> Cow<'static, str> {
                $name.into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!($schema)
            }
        }
    };
}

schema!(ConfigDuration, "Duration", {
    "type": "string",
    "pattern": "^([0-9]+(\\.[0-9]+)?(ms|s|m|h))+$",
    "description": "a duration: 250ms, 5s, 1m30s, 1h",
    "examples": ["250ms", "5s", "1m"]
});
schema!(ByteSize, "ByteSize", {
    "type": ["string", "integer"],
    "description": "bytes, or with a unit: 512, 64KiB, 1MiB",
    "examples": ["64KiB", "1MiB"]
});
schema!(ListenAddr, "Address", {
    "type": ["string", "integer"],
    "description": "IP:PORT, or just the port (127.0.0.1)",
    "examples": ["127.0.0.1:8080", 8080]
});
schema!(ListenOn, "ListenOn", {
    "type": ["string", "integer"],
    "description": "IP:PORT, just the port (127.0.0.1), or unix:/path for a Unix socket (TCP listeners)",
    "examples": ["127.0.0.1:8080", "unix:/cloudsql/db/.s.PGSQL.5432"]
});
schema!(AdminListen, "AdminListen", {
    "type": ["string", "integer"],
    "description": "IP:PORT, just the port, or `off`",
    "examples": ["127.0.0.1:9901", "0.0.0.0:9901", "off"]
});
schema!(FileMode, "FileMode", {
    "type": ["string", "integer"],
    "description": "permission bits in octal",
    "examples": ["0660"]
});
schema!(HostRewrite, "HostRewrite", {
    "type": "string",
    "description": "`upstream` (the upstream's host), `keep` (the client's), or a literal host",
    "examples": ["upstream", "keep", "api.example.com"]
});
schema!(RetryOn, "RetryOn", {
    "type": ["string", "integer"],
    "description": "connect-failure, reset, refused-stream, timeout, gateway-error, 5xx, retriable-4xx, 429, or a status code",
    "examples": ["connect-failure", "gateway-error", 503]
});
schema!(Rate, "Rate", {
    "type": "string",
    "pattern": "^[0-9]+(\\.[0-9]+)?/(s|m|h)$",
    "description": "requests per second, minute or hour",
    "examples": ["100/s", "6000/m"]
});
schema!(StatusRange, "StatusRange", {
    "type": ["string", "integer"],
    "description": "a status code or a range",
    "examples": ["200-399", 200]
});
schema!(TlsVersion, "TlsVersion", {
    "type": ["string", "number"],
    "enum": ["1.0", "1.1", "1.2", "1.3", 1.0, 1.1, 1.2, 1.3],
    "description": "a TLS version; 1.0 and 1.1 need the legacy-tls build"
});
schema!(EndpointEntry, "Endpoint", {
    "description": "host:port, or { address: host:port, weight: N }",
    "oneOf": [
        { "type": "string" },
        {
            "type": "object",
            "properties": {
                "address": { "type": "string" },
                "weight": { "type": "integer", "minimum": 1, "default": 1 }
            },
            "required": ["address"],
            "additionalProperties": false
        }
    ]
});
schema!(HeaderFromFile, "HeaderFromFile", {
    "description": "a file path, or { file: PATH, prefix: \"Bearer \" }",
    "oneOf": [
        { "type": "string" },
        {
            "type": "object",
            "properties": {
                "file": { "type": "string" },
                "prefix": { "type": "string", "default": "" }
            },
            "required": ["file"],
            "additionalProperties": false
        }
    ]
});

/// The schema of a whole config file, as pretty JSON.
pub fn json() -> String {
    let schema = schemars::schema_for!(super::Config);
    serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n"
}
