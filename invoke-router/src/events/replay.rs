//! Replaying the journal: each record applied to the events' state, and
//! the records that rebuild an event's state (a compacted journal).

use std::collections::HashMap;

use super::journal::Record;
use super::{Entry, EventStatus};

/// Applies one record to the replayed state.
pub(super) fn apply(entries: &mut HashMap<String, Entry>, r: Record) {
    match r {
        Record::Enqueue {
            id,
            tenant,
            function,
            at_ms,
        } => {
            entries.insert(
                id,
                Entry {
                    tenant,
                    function,
                    at_ms,
                    status: EventStatus::Queued,
                    attempts: 0,
                    due_ms: at_ms,
                    throttled: 0,
                },
            );
        }
        other => {
            let Some(e) = entries.get_mut(other.id()) else {
                return;
            };
            match other {
                Record::Enqueue { .. } => {}
                Record::Attempt { attempt, .. } => e.status = EventStatus::Running { attempt },
                Record::Retry {
                    attempts, due_ms, ..
                } => {
                    e.status = EventStatus::Queued;
                    e.attempts = attempts;
                    e.due_ms = due_ms;
                }
                Record::Throttled {
                    attempts, due_ms, ..
                } => {
                    e.status = EventStatus::Queued;
                    e.attempts = attempts;
                    e.due_ms = due_ms;
                    e.throttled += 1;
                }
                Record::Succeeded { attempts, .. } => {
                    e.status = EventStatus::Succeeded;
                    e.attempts = attempts;
                }
                Record::Failed {
                    attempts, error, ..
                } => {
                    e.status = EventStatus::Failed { attempts, error };
                    e.attempts = attempts;
                }
            }
        }
    }
}

/// The records that rebuild `e` (the compacted journal); a running
/// attempt is kept as running, so a crash runs it again as the same attempt.
pub(super) fn records_for(id: &str, e: &Entry) -> Vec<Record> {
    let mut out = vec![Record::Enqueue {
        id: id.into(),
        tenant: e.tenant.clone(),
        function: e.function.clone(),
        at_ms: e.at_ms,
    }];
    let waited = Record::Retry {
        id: id.into(),
        attempts: e.attempts,
        error: String::new(),
        due_ms: e.due_ms,
    };
    let has_waited = e.attempts > 0 || e.throttled > 0;
    match &e.status {
        EventStatus::Queued => {
            if has_waited {
                out.push(waited);
            }
        }
        EventStatus::Running { attempt } => {
            if has_waited {
                out.push(waited);
            }
            out.push(Record::Attempt {
                id: id.into(),
                attempt: *attempt,
            });
        }
        EventStatus::Succeeded => out.push(Record::Succeeded {
            id: id.into(),
            attempts: e.attempts,
        }),
        EventStatus::Failed { attempts, error } => out.push(Record::Failed {
            id: id.into(),
            attempts: *attempts,
            error: error.clone(),
        }),
    }
    out
}
