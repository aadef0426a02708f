//! Forward-progress kicks: a guest that spins without exits (waiting for an
//! interrupt that only virtual time can bring) would never return from
//! KVM_RUN. A watchdog thread signals the vCPU thread when no exit has happened
//! for [`KICK_INTERVAL`] of host time; KVM_RUN then returns EINTR and the run
//! loop moves virtual time on. Kicks are host-timed, so each is a determinism
//! hole: counted, reported, and an error under `--strict`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::thread::JoinHandle;
use std::time::Duration;

/// Host time without an exit after which the vCPU is kicked.
pub const KICK_INTERVAL: Duration = Duration::from_millis(20);

/// Kick intervals a kick waits while the run loop holds kicks (an
/// interrupt window is requested): about 10 s of host time.
const HOLD_LIMIT: u32 = 500;

/// The real-time signal used for kicks (SIGRTMIN + this).
const KICK_SIGNAL_OFFSET: libc::c_int = 2;

static HANDLER: Once = Once::new();

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN() + KICK_SIGNAL_OFFSET
}

#[derive(Default)]
struct Shared {
    /// Bumped at every exit.
    progress: AtomicU64,
    /// The vCPU thread is inside the run loop.
    running: AtomicBool,
    /// pthread_t of the thread in the run loop.
    target: AtomicU64,
    /// The watchdog should end.
    stop: AtomicBool,
    /// Kicks wait (up to [`HOLD_LIMIT`] intervals): an interrupt is pending
    /// and KVM was asked for an exit when the guest can take it. A mutex,
    /// not an atomic: the watchdog decides and signals under it, so a kick
    /// decided before the run loop set the hold cannot land in the held run
    /// (it lands before, where it is harmless, or makes that KVM_RUN return
    /// before the guest runs an instruction).
    hold: Mutex<bool>,
}

/// The watchdog.
pub struct Kicker {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Kicker {
    /// Starts the watchdog (one thread, asleep unless a run is in progress).
    pub fn start() -> Kicker {
        HANDLER.call_once(|| {
            // A failure leaves the default action (termination) in place, so
            // kicks are then simply not sent.
            let _ = vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick);
        });
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("lunavm-kick".into())
            .spawn(move || watchdog(&s))
            .ok();
        Kicker { shared, thread }
    }

    /// Marks the start of a run on the calling thread.
    pub fn enter(&self) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        self.shared.target.store(me, Ordering::Relaxed);
        self.shared.running.store(true, Ordering::Release);
    }

    /// Marks the end of a run.
    pub fn leave(&self) {
        self.shared.running.store(false, Ordering::Release);
    }

    /// Notes forward progress (an exit).
    pub fn progress(&self) {
        self.shared.progress.fetch_add(1, Ordering::Relaxed);
    }

    /// Holds kicks while the guest is entered with an interrupt window
    /// requested. On software-nested KVM the window exit of kernel code
    /// comes at a later point of the emulator's own choosing (the same in
    /// every run); a kick before it would open a host-timed point where the
    /// interrupt is injected instead. The watchdog still kicks after about
    /// 10 s (a guest spinning with interrupts off).
    pub fn hold(&self, hold: bool) {
        *self.shared.hold.lock().unwrap_or_else(|e| e.into_inner()) = hold;
    }
}

impl Drop for Kicker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

fn watchdog(s: &Shared) {
    let mut last = s.progress.load(Ordering::Relaxed);
    let mut idle = Duration::ZERO;
    let mut held = 0u32;
    let step = KICK_INTERVAL / 4;
    while !s.stop.load(Ordering::Acquire) {
        std::thread::park_timeout(step);
        let now = s.progress.load(Ordering::Relaxed);
        if !s.running.load(Ordering::Acquire) || now != last {
            last = now;
            idle = Duration::ZERO;
            held = 0;
            continue;
        }
        idle += step;
        if idle >= KICK_INTERVAL {
            idle = Duration::ZERO;
            // Decide and signal under the hold lock (see `Shared::hold`).
            let hold = s.hold.lock().unwrap_or_else(|e| e.into_inner());
            if s.progress.load(Ordering::Relaxed) != last {
                continue; // An exit came meanwhile.
            }
            if *hold && held < HOLD_LIMIT {
                held += 1;
                continue;
            }
            held = 0;
            let target = s.target.load(Ordering::Relaxed);
            if s.running.load(Ordering::Acquire) {
                // SAFETY: `target` is the pthread_t of the thread inside the run
                // loop (`running` is set only while it is there, and the Machine
                // that owns this watchdog joins it before it goes away); the
                // signal has a no-op handler installed.
                unsafe { libc::pthread_kill(target, kick_signal()) };
            }
        }
    }
}
