//! The runtimes a function may name: a closed set, stored in the registry
//! by its Lambda name.

use std::fmt;

use ember_protocol::RuntimeKind;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

/// A function's runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Runtime {
    /// Lambda's `provided.al2023`: a `bootstrap` speaking the Runtime API.
    ProvidedAl2023,
    /// Lambda's `provided` (same contract as `provided.al2023`).
    Provided,
    /// Lambda's managed `python3.13`: Debian 13's Python with AWS's
    /// awslambdaric, from a runtime image (see `runtime_images`).
    Python313,
    /// Lambda's managed `nodejs20.x`: Debian 13's Node.js 20 with Ember's
    /// runtime interface client, from a runtime image.
    Nodejs20x,
    /// Ember's `exec`: the handler is a shell command run per invocation.
    Exec,
}

impl Runtime {
    /// Every runtime, in the order error messages list them.
    pub const ALL: [Runtime; 5] = [
        Runtime::ProvidedAl2023,
        Runtime::Provided,
        Runtime::Python313,
        Runtime::Nodejs20x,
        Runtime::Exec,
    ];

    /// Its name in the API (`Runtime`) and in the registry.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::ProvidedAl2023 => "provided.al2023",
            Runtime::Provided => "provided",
            Runtime::Python313 => "python3.13",
            Runtime::Nodejs20x => "nodejs20.x",
            Runtime::Exec => "exec",
        }
    }

    /// The runtime named `name`, if it is one of ours.
    pub fn parse(name: &str) -> Option<Runtime> {
        Runtime::ALL.into_iter().find(|r| r.name() == name)
    }

    /// How the guest agent runs it.
    pub fn kind(self) -> RuntimeKind {
        match self {
            Runtime::ProvidedAl2023 | Runtime::Provided => RuntimeKind::Provided,
            Runtime::Python313 => RuntimeKind::Python313,
            Runtime::Nodejs20x => RuntimeKind::Nodejs20,
            Runtime::Exec => RuntimeKind::Exec,
        }
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl ToSql for Runtime {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.name()))
    }
}

impl FromSql for Runtime {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let name = value.as_str()?;
        Runtime::parse(name).ok_or_else(|| {
            FromSqlError::Other(format!("unknown runtime {name:?} in the registry").into())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_map_to_the_agent_kinds() {
        for r in Runtime::ALL {
            assert_eq!(Runtime::parse(r.name()), Some(r));
        }
        assert_eq!(Runtime::parse("python3.12"), None);
        assert_eq!(Runtime::Exec.kind(), RuntimeKind::Exec);
        assert_eq!(Runtime::ProvidedAl2023.kind(), RuntimeKind::Provided);
        assert_eq!(
            Runtime::parse("python3.13").map(Runtime::kind),
            Some(RuntimeKind::Python313)
        );
        assert_eq!(
            Runtime::parse("nodejs20.x").map(Runtime::kind),
            Some(RuntimeKind::Nodejs20)
        );
    }
}
