//! Supervised watchdog feeding.

use fieldtune_board_core::{FeedOutcome, Feeder, UnknownTask, Watchdog};

#[derive(Default)]
struct CountingDog {
    fed: u32,
    fail: bool,
}

impl Watchdog for CountingDog {
    type Error = &'static str;
    fn feed(&mut self) -> Result<(), &'static str> {
        if self.fail {
            return Err("device gone");
        }
        self.fed += 1;
        Ok(())
    }
}

const MS: u64 = 1_000_000;

#[test]
fn feeds_only_while_every_task_checks_in() {
    // Task 0 (inference) every 100 ms, task 1 (adaptation worker) every 5 s.
    let mut f = Feeder::new(CountingDog::default(), [100 * MS, 5_000 * MS], 0);
    assert_eq!(f.poll(50 * MS), Ok(FeedOutcome::Fed));
    f.checkin(0, 90 * MS).unwrap();
    assert_eq!(f.poll(180 * MS), Ok(FeedOutcome::Fed));
    // Task 0 last seen at 90 ms; at 191 ms it has been silent 101 ms.
    assert_eq!(
        f.poll(191 * MS),
        Ok(FeedOutcome::Starved {
            task: 0,
            silent_ns: 101 * MS
        })
    );
    assert_eq!(f.watchdog().fed, 2);
    f.checkin(0, 200 * MS).unwrap();
    assert_eq!(f.poll(200 * MS), Ok(FeedOutcome::Fed));
    // Task 1 never checked in: starved 5 s after the feeder started, even with task 0 alive.
    f.checkin(0, 5_001 * MS).unwrap();
    assert_eq!(
        f.poll(5_001 * MS),
        Ok(FeedOutcome::Starved {
            task: 1,
            silent_ns: 5_001 * MS
        })
    );
    assert_eq!(f.fed(), 3);
}

#[test]
fn exactly_at_the_deadline_still_feeds() {
    let mut f = Feeder::new(CountingDog::default(), [100 * MS], 0);
    assert_eq!(f.poll(100 * MS), Ok(FeedOutcome::Fed));
    assert!(matches!(
        f.poll(100 * MS + 1),
        Ok(FeedOutcome::Starved { .. })
    ));
}

#[test]
fn minimum_interval_between_feeds() {
    let mut f = Feeder::new(CountingDog::default(), [1_000 * MS], 0).with_min_interval(200 * MS);
    assert_eq!(f.poll(0), Ok(FeedOutcome::Fed));
    assert_eq!(f.poll(199 * MS), Ok(FeedOutcome::TooSoon));
    assert_eq!(f.poll(200 * MS), Ok(FeedOutcome::Fed));
    assert_eq!(f.release().fed, 2);
}

#[test]
fn unknown_task_and_watchdog_errors() {
    let mut f = Feeder::new(CountingDog::default(), [MS, MS], 0);
    let e = f.checkin(2, 0).unwrap_err();
    assert_eq!(e, UnknownTask { task: 2, tasks: 2 });
    assert_eq!(
        e.to_string(),
        "watchdog: task 2 checked in, but the feeder has tasks 0..2"
    );
    let mut f = Feeder::new(
        CountingDog {
            fail: true,
            ..Default::default()
        },
        [MS],
        0,
    );
    assert_eq!(f.poll(0), Err("device gone"));
    assert_eq!(f.fed(), 0);
}

#[test]
fn a_late_checkin_does_not_move_time_backwards() {
    let mut f = Feeder::new(CountingDog::default(), [100 * MS], 0);
    f.checkin(0, 150 * MS).unwrap();
    f.checkin(0, 120 * MS).unwrap(); // stale, out of order
    assert_eq!(f.poll(250 * MS), Ok(FeedOutcome::Fed));
}
