//! A minimal stderr logger for the `log` facade; the level comes from `VMKIT_LOG`
//! (`error`, `warn` — the default —, `info`, `debug`, `trace` or `off`).

use log::{LevelFilter, Log, Metadata, Record};

struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            eprintln!(
                "reference-vmm: [{}] {}: {}",
                record.level(),
                record.target(),
                record.args()
            );
        }
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

/// Installs the logger; an unknown level in `VMKIT_LOG` is an error naming it.
pub fn init() -> anyhow::Result<()> {
    let level = match std::env::var("VMKIT_LOG") {
        Ok(v) => v
            .parse::<LevelFilter>()
            .map_err(|_| anyhow::anyhow!("VMKIT_LOG: unknown level {v:?}"))?,
        Err(_) => LevelFilter::Warn,
    };
    // A logger set twice (only possible in tests) keeps the first.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
    Ok(())
}
