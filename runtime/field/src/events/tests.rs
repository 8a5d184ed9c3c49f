//! The event log's tests: observers, torn lines, refused files, non-finite numbers.

use super::*;

#[derive(Debug, Default)]
struct Seen(Mutex<Vec<String>>);

impl EventObserver for Seen {
    fn event(&self, event: &FieldEvent) {
        self.0.lock().unwrap().push(event.kind().to_string());
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
    log.emit(FieldEvent::Started(Started::default()));
    log.emit(FieldEvent::RoundStarted(RoundStarted {
        round: 1,
        reason: Reason::Manual,
        frame: 0,
        train_frames: 0,
        probe_frames: 0,
        version: 0,
        poison: None,
        oldest_frame: None,
        episode_round: None,
    }));
    log.emit(FieldEvent::Committed(Committed::default()));
    log.emit(FieldEvent::Stopped(RunSummary::default()));
    assert_eq!(
        *seen.0.lock().unwrap(),
        ["started", "round_started", "committed", "stopped"]
    );
    let text = std::fs::read_to_string(&p).unwrap();
    let kinds: Vec<_> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["event"].clone())
        .collect();
    assert_eq!(kinds, ["started", "round_started", "committed", "stopped"]);
}

#[test]
fn torn_lines_are_closed_and_skipped() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("sub/events.jsonl");
    let log = EventLog::open(&p, Fsync::Every).unwrap();
    log.emit(FieldEvent::Started(Started {
        resumed_version: 3,
        ..Started::default()
    }));
    drop(log);
    // A crash in the middle of a line.
    let mut f = OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"{\"t_ms\": 5, \"event\": \"sta").unwrap();
    drop(f);
    let log = EventLog::open(&p, Fsync::Rounds).unwrap();
    log.emit(FieldEvent::Committed(Committed {
        version: 4,
        anchor_accuracy: 0.99,
        ..Committed::default()
    }));
    let (ev, skipped) = read_events(&p).unwrap();
    assert_eq!(skipped, 1);
    assert_eq!(ev.len(), 2);
    assert_eq!(ev[0].event, "started");
    assert_eq!(ev[1].u64("version"), Some(4));
    assert_eq!(ev[1].f64("anchor_accuracy"), Some(0.99));
    assert!(matches!(
        ev[1].typed(),
        Some(FieldEvent::Committed(Committed { version: 4, .. }))
    ));
    std::fs::write(&p, "hello\n").unwrap();
    let e = read_events(&p).unwrap_err().to_string();
    assert!(
        e.contains("events.jsonl:1") && e.contains("not a fieldtune event log"),
        "{e}"
    );
}

#[test]
fn links_and_fifos_are_refused_as_the_event_log() {
    let d = tempfile::tempdir().unwrap();
    let target = d.path().join("precious.txt");
    std::fs::write(&target, "keep\n").unwrap();
    let link = d.path().join("events.jsonl");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let e = EventLog::open(&link, Fsync::Never)
        .err()
        .expect("a link is refused")
        .to_string();
    assert!(
        e.contains("events.jsonl") && e.contains("symbolic link"),
        "{e}"
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep\n");
    let fifo = d.path().join("fifo.jsonl");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    assert!(made.is_ok_and(|s| s.success()), "mkfifo");
    let e = EventLog::open(&fifo, Fsync::Never)
        .err()
        .expect("a FIFO is refused")
        .to_string();
    assert!(e.contains("fifo.jsonl") && e.contains("regular"), "{e}");
    let e = read_events(&fifo).unwrap_err().to_string();
    assert!(e.contains("fifo.jsonl") && e.contains("FIFO"), "{e}");
}

#[test]
fn non_finite_numbers_are_written_null_and_read_back_as_nan() {
    let ev = FieldEvent::Paused(Paused {
        celsius: f64::NAN,
        ceiling: None,
        round: Some(2),
    });
    let line = ev.to_line(7);
    assert_eq!(
        line,
        "{\"celsius\":null,\"event\":\"paused\",\"round\":2,\"t_ms\":7}\n"
    );
    let back: FieldEvent = serde_json::from_str(line.trim()).unwrap();
    assert!(
        matches!(back, FieldEvent::Paused(Paused { celsius, round: Some(2), .. }) if celsius.is_nan())
    );
}
