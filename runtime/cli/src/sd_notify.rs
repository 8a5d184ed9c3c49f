//! systemd's notify protocol for `fieldtune run` in a `Type=notify` unit (packaging/): READY=1
//! once the runtime serves (event `started`), WATCHDOG=1 every half `WATCHDOG_USEC` while the
//! inference loop shows it is alive (events `started` and `stats`), STOPPING=1 when the run stops
//! (event `stopped`). Datagrams go to `$NOTIFY_SOCKET`, a path or an abstract name written
//! `@name`; without it nothing is sent and nothing runs.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fieldtune_field::events::{EventObserver, FieldEvent};

/// A socket that sends notify datagrams to one address.
#[derive(Debug)]
pub struct Notifier {
    sock: UnixDatagram,
    addr: SocketAddr,
    name: String,
}

impl Notifier {
    /// `addr` as `$NOTIFY_SOCKET` holds it: a filesystem path, or `@name` for an abstract socket.
    pub fn connect(addr: &str) -> Result<Notifier> {
        let sa = if let Some(abs) = addr.strip_prefix('@') {
            SocketAddr::from_abstract_name(abs.as_bytes())
        } else if addr.starts_with('/') {
            SocketAddr::from_pathname(addr)
        } else {
            bail!("NOTIFY_SOCKET={addr:?}: neither an absolute path nor an abstract '@' name");
        }
        .with_context(|| format!("NOTIFY_SOCKET={addr:?}"))?;
        let sock = UnixDatagram::unbound().context("creating the notify socket")?;
        Ok(Notifier {
            sock,
            addr: sa,
            name: addr.to_string(),
        })
    }

    /// Sends one message (newline-separated `KEY=VALUE` assignments).
    pub fn send(&self, state: &str) -> Result<()> {
        self.sock
            .send_to_addr(state.as_bytes(), &self.addr)
            .with_context(|| format!("sending {state:?} to NOTIFY_SOCKET={}", self.name))?;
        Ok(())
    }
}

/// The watchdog interval systemd asks for: `WATCHDOG_USEC` when set to a positive number and
/// `WATCHDOG_PID`, if set, is this process.
pub fn watchdog_interval(usec: Option<&str>, pid: Option<&str>) -> Option<Duration> {
    if let Some(p) = pid {
        if p.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    let us: u64 = usec?.trim().parse().ok()?;
    (us > 0).then(|| Duration::from_micros(us))
}

/// The observer for a run under systemd, or `None` when `$NOTIFY_SOCKET` is not set. A bad
/// address only costs the notifications (logged), never the run.
pub fn observer_from_env(stats_every_s: f64) -> Option<Arc<dyn EventObserver>> {
    let addr = std::env::var("NOTIFY_SOCKET")
        .ok()
        .filter(|s| !s.is_empty())?;
    let notifier = match Notifier::connect(&addr) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!("systemd notifications off: {e:#}");
            return None;
        }
    };
    let watchdog = watchdog_interval(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
    );
    match SystemdObserver::start(notifier, watchdog, stats_every_s) {
        Ok(o) => Some(Arc::new(o)),
        Err(e) => {
            tracing::warn!("systemd notifications off: {e:#}");
            None
        }
    }
}

/// Both observers (either may be absent).
pub fn chain(
    a: Option<Arc<dyn EventObserver>>,
    b: Option<Arc<dyn EventObserver>>,
) -> Option<Arc<dyn EventObserver>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(Arc::new(Both(a, b))),
        (a, b) => a.or(b),
    }
}

#[derive(Debug)]
struct Both(Arc<dyn EventObserver>, Arc<dyn EventObserver>);

impl EventObserver for Both {
    fn event(&self, event: &FieldEvent) {
        self.0.event(event);
        self.1.event(event);
    }
}

/// What the observer and its watchdog thread share.
#[derive(Debug)]
struct Notify {
    notifier: Notifier,
    /// When the inference loop last showed it is alive.
    beat: Mutex<Instant>,
    wake: Condvar,
    ready: AtomicBool,
    stopping: AtomicBool,
    warned: AtomicBool,
}

impl Notify {
    fn send(&self, state: &str) {
        if let Err(e) = self.notifier.send(state) {
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!("systemd notification failed: {e:#}");
            }
        }
    }

    fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        let _g = self.beat.lock().unwrap_or_else(|p| p.into_inner());
        self.wake.notify_all();
    }
}

/// Maps run events to notifications; with a watchdog interval, a thread pings every half
/// interval while the last heartbeat is at most one interval old (before READY=1 it pings
/// unconditionally: start-up is bounded by the unit's TimeoutStartSec).
#[derive(Debug)]
pub struct SystemdObserver {
    notify: Arc<Notify>,
}

impl SystemdObserver {
    pub fn start(
        notifier: Notifier,
        watchdog: Option<Duration>,
        stats_every_s: f64,
    ) -> Result<SystemdObserver> {
        let notify = Arc::new(Notify {
            notifier,
            beat: Mutex::new(Instant::now()),
            wake: Condvar::new(),
            ready: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            warned: AtomicBool::new(false),
        });
        if let Some(interval) = watchdog {
            if stats_every_s <= 0.0 || stats_every_s * 2.0 > interval.as_secs_f64() {
                tracing::warn!(
                    "[pipeline] stats_every_s = {stats_every_s} feeds a {:.1} s systemd watchdog: \
                     keep it under half the interval",
                    interval.as_secs_f64()
                );
            }
            tracing::info!(
                "systemd watchdog: {:.1} s, pinged every {:.1} s while inference runs",
                interval.as_secs_f64(),
                interval.as_secs_f64() / 2.0
            );
            let s = notify.clone();
            std::thread::Builder::new()
                .name("sd-watchdog".into())
                .spawn(move || ping(&s, interval))
                .context("starting the systemd watchdog thread")?;
        }
        Ok(SystemdObserver { notify })
    }
}

fn ping(s: &Notify, interval: Duration) {
    let half = interval / 2;
    let mut silent = false;
    let mut beat = s.beat.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        beat = s
            .wake
            .wait_timeout(beat, half)
            .unwrap_or_else(|p| p.into_inner())
            .0;
        if s.stopping.load(Ordering::Relaxed) {
            return;
        }
        let age = beat.elapsed();
        if !s.ready.load(Ordering::Relaxed) || age <= interval {
            s.send("WATCHDOG=1");
            silent = false;
        } else if !silent {
            tracing::error!(
                "no inference heartbeat for {:.1} s: systemd watchdog not fed",
                age.as_secs_f64()
            );
            silent = true;
        }
    }
}

impl EventObserver for SystemdObserver {
    fn event(&self, event: &FieldEvent) {
        let s = &self.notify;
        if matches!(event, FieldEvent::Started(_) | FieldEvent::Stats(_)) {
            *s.beat.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        }
        match event {
            FieldEvent::Started(_) => {
                s.ready.store(true, Ordering::Relaxed);
                s.send("READY=1\nSTATUS=serving");
            }
            FieldEvent::RoundStarted(_) => s.send("STATUS=serving; adapting"),
            FieldEvent::Committed(_) => s.send("STATUS=serving; new weights committed"),
            FieldEvent::RolledBack(_) => s.send("STATUS=serving; round rolled back"),
            FieldEvent::ResetToSource(_) => s.send("STATUS=serving; reset to the source weights"),
            FieldEvent::Stopped(_) => {
                s.stop();
                s.send("STOPPING=1\nSTATUS=stopped");
            }
            _ => {}
        }
    }
}

impl Drop for SystemdObserver {
    fn drop(&mut self) {
        self.notify.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldtune_field::events::{Started, Stats};
    use fieldtune_field::RunSummary;

    fn started() -> FieldEvent {
        FieldEvent::Started(Started::default())
    }

    fn stats() -> FieldEvent {
        FieldEvent::Stats(Stats::default())
    }

    fn recv(sock: &UnixDatagram, wait: Duration) -> Option<String> {
        sock.set_read_timeout(Some(wait)).unwrap();
        let mut buf = [0u8; 256];
        match sock.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(_) => None,
        }
    }

    fn abstract_name() -> String {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        format!("@fieldtune-test-{}-{t}", std::process::id())
    }

    #[test]
    fn sends_to_a_path_socket_and_an_abstract_name() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        Notifier::connect(path.to_str().unwrap())
            .unwrap()
            .send("READY=1")
            .unwrap();
        assert_eq!(
            recv(&server, Duration::from_secs(2)).as_deref(),
            Some("READY=1")
        );

        let name = abstract_name();
        let sa = SocketAddr::from_abstract_name(&name.as_bytes()[1..]).unwrap();
        let server = UnixDatagram::bind_addr(&sa).unwrap();
        Notifier::connect(&name)
            .unwrap()
            .send("WATCHDOG=1")
            .unwrap();
        assert_eq!(
            recv(&server, Duration::from_secs(2)).as_deref(),
            Some("WATCHDOG=1")
        );
    }

    #[test]
    fn bad_addresses_are_named() {
        let e = format!("{:#}", Notifier::connect("relative/sock").unwrap_err());
        assert!(e.contains("relative/sock"), "{e}");
        let d = tempfile::tempdir().unwrap();
        let gone = d.path().join("nobody-listens");
        let n = Notifier::connect(gone.to_str().unwrap()).unwrap();
        let e = format!("{:#}", n.send("READY=1").unwrap_err());
        assert!(e.contains("nobody-listens") && e.contains("READY=1"), "{e}");
    }

    #[test]
    fn watchdog_interval_follows_systemd_variables() {
        let me = std::process::id().to_string();
        assert_eq!(
            watchdog_interval(Some("30000000"), None),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            watchdog_interval(Some("500000"), Some(&me)),
            Some(Duration::from_millis(500))
        );
        assert_eq!(watchdog_interval(Some("30000000"), Some("1")), None);
        assert_eq!(watchdog_interval(Some("0"), None), None);
        assert_eq!(watchdog_interval(Some("soon"), None), None);
        assert_eq!(watchdog_interval(None, None), None);
    }

    #[test]
    fn ready_pings_while_inference_beats_then_silence_then_stopping() {
        let name = abstract_name();
        let sa = SocketAddr::from_abstract_name(&name.as_bytes()[1..]).unwrap();
        let server = UnixDatagram::bind_addr(&sa).unwrap();
        let interval = Duration::from_millis(300);
        let obs = SystemdObserver::start(Notifier::connect(&name).unwrap(), Some(interval), 0.05)
            .unwrap();
        // Start-up (before READY=1): pinged regardless of heartbeats.
        assert_eq!(
            recv(&server, Duration::from_secs(2)).as_deref(),
            Some("WATCHDOG=1")
        );
        obs.event(&started());
        let mut got = Vec::new();
        while let Some(m) = recv(&server, Duration::from_millis(50)) {
            got.push(m);
        }
        assert!(
            got.iter().any(|m| m == "READY=1\nSTATUS=serving"),
            "{got:?}"
        );
        // Heartbeats every 50 ms for 1 s: pings every ~150 ms.
        let t = Instant::now();
        let mut pings = 0;
        while t.elapsed() < Duration::from_secs(1) {
            obs.event(&stats());
            if let Some(m) = recv(&server, Duration::from_millis(50)) {
                pings += usize::from(m == "WATCHDOG=1");
            }
        }
        assert!(pings >= 4, "{pings} pings in 1 s at a 150 ms period");
        // Inference goes silent: pings stop once the last beat is older than the interval.
        std::thread::sleep(interval + Duration::from_millis(200));
        while recv(&server, Duration::from_millis(10)).is_some() {}
        assert_eq!(recv(&server, Duration::from_millis(600)), None);
        // A beat again feeds it again; stopping ends the pings.
        obs.event(&stats());
        assert_eq!(
            recv(&server, Duration::from_secs(1)).as_deref(),
            Some("WATCHDOG=1")
        );
        obs.event(&FieldEvent::Stopped(RunSummary::default()));
        let mut rest = Vec::new();
        while let Some(m) = recv(&server, Duration::from_millis(400)) {
            rest.push(m);
        }
        assert_eq!(
            rest.last().map(String::as_str),
            Some("STOPPING=1\nSTATUS=stopped")
        );
    }

    #[test]
    fn chain_tells_both() {
        #[derive(Debug, Default)]
        struct Count(Mutex<usize>);
        impl EventObserver for Count {
            fn event(&self, _: &FieldEvent) {
                *self.0.lock().unwrap() += 1;
            }
        }
        let a = Arc::new(Count::default());
        let b = Arc::new(Count::default());
        let both = chain(Some(a.clone()), Some(b.clone())).unwrap();
        both.event(&stats());
        assert_eq!((*a.0.lock().unwrap(), *b.0.lock().unwrap()), (1, 1));
        assert!(chain(None, None).is_none());
    }
}
