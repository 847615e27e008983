//! Plugin logging: one line per event to `logFile`, or stderr.
//!
//! Never stdout: that channel carries the CNI reply and nothing else. A
//! plugin run lasts milliseconds and logs a handful of lines, so this is a
//! plain appender, not a logging framework.

use std::fmt::Display;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

pub struct Logger {
    file: Option<Mutex<File>>,
    prefix: String,
}

impl Logger {
    /// Logs to `path` (appending; created 0640), or to stderr when `None` or
    /// when the file cannot be opened (a broken log path must not fail pods).
    pub fn new(path: Option<&Path>, prefix: String) -> Self {
        let mut logger = Logger { file: None, prefix };
        if let Some(p) = path {
            match OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o640)
                .open(p)
            {
                Ok(f) => logger.file = Some(Mutex::new(f)),
                Err(e) => logger.warn(format_args!("cannot open log file {}: {e}", p.display())),
            }
        }
        logger
    }

    pub fn info(&self, msg: impl Display) {
        self.write("INFO", msg);
    }

    pub fn warn(&self, msg: impl Display) {
        self.write("WARN", msg);
    }

    pub fn error(&self, msg: impl Display) {
        self.write("ERROR", msg);
    }

    fn write(&self, level: &str, msg: impl Display) {
        let line = format!(
            "{} {level} sluice-cni[{}] {}: {msg}\n",
            rfc3339_now(),
            std::process::id(),
            self.prefix
        );
        // One write(2) per line; O_APPEND keeps concurrent plugins' lines whole.
        let written = match &self.file {
            Some(f) => match f.lock() {
                Ok(mut f) => f.write_all(line.as_bytes()).is_ok(),
                Err(_) => false,
            },
            None => false,
        };
        if !written {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }
}

/// UTC timestamp with milliseconds, without a date library.
fn rfc3339_now() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let (y, mo, d, h, mi, s) = sluice_net::time::utc(now.as_secs());
    format!(
        "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:03}Z",
        now.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_lines_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cni.log");
        let l = Logger::new(Some(&p), "ADD c1/eth0".into());
        l.info("hello");
        l.error("bad");
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].contains("INFO sluice-cni[") && lines[0].ends_with("ADD c1/eth0: hello"));
        assert!(lines[1].contains("ERROR"));
    }
}
