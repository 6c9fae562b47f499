//! A small stderr logger: `ember-vmm: LEVEL message`.

use log::{LevelFilter, Log, Metadata, Record};

struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            eprintln!("ember-vmm: {} {}", record.level(), record.args());
        }
    }

    fn flush(&self) {}
}

/// Logs to stderr from `level` up; a second call changes nothing.
pub fn init(level: LevelFilter) {
    if log::set_logger(&StderrLogger).is_ok() {
        log::set_max_level(level);
    }
}
