//! The event log: one JSON object per line, `{"t_ms": <unix ms>, "event": "<kind>", ...}`.
//!
//! Kinds: `started`, `stats`, `trigger`, `round_started`, `round_ended`, `committed`,
//! `rolled_back`, `reset_to_source`, `paused`, `resumed`, `checkpoint_quarantined`, `stopped`.
//!
//! Each line is written with one `write` call on a file opened for appending. fsync policy
//! (`[events] fsync`): `rounds` (default) fsyncs after every event except `stats`, so what a
//! round did survives power loss as its checkpoint does; `every` fsyncs every line; `never`
//! leaves it to the OS. A line torn by a crash is closed with a newline when the log is
//! opened again, and readers skip lines that do not parse (counting them).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

use crate::config::Fsync;
use crate::error::{io_err, FieldError, Result};
use crate::store::unix_ms;

/// Sees the kind of every event as it is logged (e.g. to drive a board's status LEDs).
pub trait EventObserver: Send + Sync + std::fmt::Debug {
    fn event(&self, kind: &str);
}

/// Appends events to a JSON-lines file.
pub struct EventLog {
    file: Mutex<File>,
    path: PathBuf,
    fsync: Fsync,
    observer: Option<Arc<dyn EventObserver>>,
}

impl EventLog {
    /// Opens `path` for appending (creating folders), closing a torn last line.
    pub fn open(path: &Path, fsync: Fsync) -> Result<EventLog> {
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)
            .map_err(io_err(path))?;
        let len = file.metadata().map_err(io_err(path))?.len();
        if len > 0 {
            let mut last = [0u8; 1];
            file.seek(SeekFrom::Start(len - 1)).map_err(io_err(path))?;
            file.read_exact(&mut last).map_err(io_err(path))?;
            if last[0] != b'\n' {
                file.write_all(b"\n").map_err(io_err(path))?;
            }
        }
        Ok(EventLog {
            file: Mutex::new(file),
            path: path.to_path_buf(),
            fsync,
            observer: None,
        })
    }

    /// Tells `observer` the kind of every event after it is written.
    pub fn with_observer(mut self, observer: Option<Arc<dyn EventObserver>>) -> EventLog {
        self.observer = observer;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one event; `fields` must be a JSON object (other values go under `"value"`).
    /// A failing write is logged, never fatal: serving frames matters more.
    pub fn emit(&self, event: &str, fields: Value) {
        let mut obj = Map::new();
        obj.insert("t_ms".into(), unix_ms().into());
        obj.insert("event".into(), event.into());
        match fields {
            Value::Object(m) => obj.extend(m),
            Value::Null => {}
            v => {
                obj.insert("value".into(), v);
            }
        }
        let mut line = Value::Object(obj).to_string();
        line.push('\n');
        let sync = match self.fsync {
            Fsync::Every => true,
            Fsync::Rounds => event != "stats",
            Fsync::Never => false,
        };
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let res = f
            .write_all(line.as_bytes())
            .and_then(|_| if sync { f.sync_data() } else { Ok(()) });
        if let Err(e) = res {
            tracing::error!("event log {}: {e}", self.path.display());
        }
        drop(f);
        if let Some(o) = &self.observer {
            o.event(event);
        }
    }
}

/// One event read back.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub t_ms: u64,
    pub event: String,
    pub fields: Map<String, Value>,
}

impl Event {
    pub fn f64(&self, key: &str) -> Option<f64> {
        self.fields.get(key).and_then(Value::as_f64)
    }

    pub fn u64(&self, key: &str) -> Option<u64> {
        self.fields.get(key).and_then(Value::as_u64)
    }

    pub fn str(&self, key: &str) -> Option<&str> {
        self.fields.get(key).and_then(Value::as_str)
    }
}

/// Reads an event log: the events, and how many lines were skipped as unreadable (torn by
/// a crash). A file that is not an event log at all (no line parses) is an error.
pub fn read_events(path: &Path) -> Result<(Vec<Event>, usize)> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let mut events = Vec::new();
    let mut skipped = 0;
    let mut first_bad = None;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed: Option<Event> =
            serde_json::from_str::<Value>(line)
                .ok()
                .and_then(|v| match v {
                    Value::Object(mut m) => {
                        let t_ms = m.remove("t_ms")?.as_u64()?;
                        let event = m.remove("event")?.as_str()?.to_string();
                        Some(Event {
                            t_ms,
                            event,
                            fields: m,
                        })
                    }
                    _ => None,
                });
        match parsed {
            Some(e) => events.push(e),
            None => {
                skipped += 1;
                first_bad.get_or_insert(i + 1);
            }
        }
    }
    if events.is_empty() {
        if let Some(line) = first_bad {
            return Err(FieldError::EventLog {
                path: path.into(),
                line,
                reason: "not a fieldtune event log (expected JSON objects with t_ms and event)"
                    .into(),
            });
        }
    }
    Ok((events, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default)]
    struct Seen(Mutex<Vec<String>>);

    impl EventObserver for Seen {
        fn event(&self, kind: &str) {
            self.0.lock().unwrap().push(kind.to_string());
        }
    }

    #[test]
    fn the_observer_sees_every_kind_after_it_is_written() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("events.jsonl");
        let seen = Arc::new(Seen::default());
        let log = EventLog::open(&p, Fsync::Never)
            .unwrap()
            .with_observer(Some(seen.clone()));
        for k in ["started", "round_started", "committed", "stopped"] {
            log.emit(k, serde_json::json!({}));
        }
        assert_eq!(
            *seen.0.lock().unwrap(),
            ["started", "round_started", "committed", "stopped"]
        );
        assert_eq!(std::fs::read_to_string(&p).unwrap().lines().count(), 4);
    }

    #[test]
    fn torn_lines_are_closed_and_skipped() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/events.jsonl");
        let log = EventLog::open(&p, Fsync::Every).unwrap();
        log.emit("started", serde_json::json!({"version": 3}));
        drop(log);
        // A crash in the middle of a line.
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"t_ms\": 5, \"event\": \"sta").unwrap();
        drop(f);
        let log = EventLog::open(&p, Fsync::Rounds).unwrap();
        log.emit(
            "committed",
            serde_json::json!({"version": 4, "anchor_accuracy": 0.99}),
        );
        let (ev, skipped) = read_events(&p).unwrap();
        assert_eq!(skipped, 1);
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].event, "started");
        assert_eq!(ev[1].u64("version"), Some(4));
        assert_eq!(ev[1].f64("anchor_accuracy"), Some(0.99));
        std::fs::write(&p, "hello\n").unwrap();
        let e = read_events(&p).unwrap_err().to_string();
        assert!(
            e.contains("events.jsonl:1") && e.contains("not a fieldtune event log"),
            "{e}"
        );
    }
}
