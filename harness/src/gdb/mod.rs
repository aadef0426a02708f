//! The gdb server: a [`gdbstub`] target over a [`Machine`], served on one TCP
//! connection with gdbstub's blocking event loop.
//!
//! What gdb gets:
//! - registers: the general registers, RIP, EFLAGS, the segment selectors,
//!   the x87/SSE state, `fs_base`, `gs_base`, `k_gs_base`, `cr0`, `cr2`,
//!   `cr3`, `cr4`, `cr8` and `efer` (lunavm's own target description, see
//!   [`arch`]). Writes take effect; a segment-selector write changes only the
//!   selector, not the cached base, limit or attributes; a control-register
//!   value KVM refuses gets an error reply.
//! - memory by guest-virtual address through the vCPU's page tables; an
//!   unmapped address gets an error reply.
//! - continue, single step, Ctrl-C, and breakpoints: software breakpoints
//!   (`Z0`, gdb's `break`) are `int3`s written into guest memory and hidden
//!   from memory reads (`machine::swbp`), or a debug register when the
//!   address is not mapped yet (a kernel before it maps itself); hardware
//!   breakpoints (`Z1`, `hbreak`) are debug registers from the allocator
//!   shared with Lua (four).
//! - watchpoints (`Z2`-`Z4`: `watch`, `rwatch`, `awatch`) are page watches
//!   (`machine::watch`), which fire for guest kernel code too, or debug
//!   registers where the watch mode uses them (`machine::drwatch`: where the
//!   startup probe finds that data breakpoints fire; not on this project's
//!   software-nested KVM).
//!
//! - `monitor` commands (replies are text gdb prints; errors are text too and
//!   never end the session):
//!   - `monitor help`: lists the commands.
//!   - `monitor regs`: the general registers, RIP, RFLAGS, every segment
//!     (selector, base, limit, attributes), CR0/2/3/4/8, EFER, GDT/IDT base
//!     and limit, and some MSRs (APIC base, SYSENTER, STAR/LSTAR/CSTAR/FMASK,
//!     FS/GS/kernel-GS base; `unreadable` when KVM refuses one), a line each.
//!   - `monitor clock`: virtual time (ns and formatted), guest-caused exits
//!     and the platform's next timer deadline.
//!   - `monitor watches`: the watch mechanism, each watch with its own
//!     (page watch or debug register), and the KVM memory slots.
//!   - `monitor record on|off`, `monitor record`: checkpoints for
//!     `reverse-stepi` and `reverse-continue` (see [`reverse`]).
//!   - `monitor lua CODE`: runs CODE in a Lua state with the scenario API
//!     bound to this machine (globals persist between commands); prints what
//!     it printed and returned, or the error.
//!   - `monitor snapshot take NAME`, `restore NAME`, `list`, `drop NAME`:
//!     in-memory snapshots kept by this gdb session (gone when it ends).
//!     `restore` replies with the pages copied; a snapshot taken at a
//!     breakpoint stop restores to that stop (a `continue` steps over the
//!     breakpoint instead of stopping on it at once). gdb caches registers and
//!     memory across a `monitor` command: after a restore run
//!     `maintenance flush register-cache` (alias `flushregs`) so gdb reads
//!     the restored state.
//!
//! While the guest runs on a continue (a single step needs none), a helper
//! thread watches the socket (without reading
//! it) and raises the run's interrupt flag when gdb sends anything (Ctrl-C);
//! the machine then stops with [`StopReason::Interrupted`] and the byte is
//! read by the event loop on this thread.

pub mod arch;
mod conn;
mod monitor;
pub mod reverse;
mod target;

use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gdbstub::common::Signal;
use gdbstub::conn::{Connection, ConnectionExt};

use conn::GdbConn;
use gdbstub::stub::{run_blocking, DisconnectReason, GdbStub, SingleThreadStopReason};
use gdbstub::target::Target;

use crate::machine::{Machine, MachineError, StopReason};
use crate::script::Scenario;

pub use target::GdbTarget;

/// Errors of the gdb server.
#[derive(Debug, thiserror::Error)]
pub enum GdbError {
    /// The listening socket could not be opened or accepted on.
    #[error("Cannot listen for gdb on {addr}")]
    Listen {
        /// The address.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The machine failed while gdb drove it.
    #[error(transparent)]
    Machine(#[from] MachineError),
    /// The Lua session behind `monitor lua` could not be set up.
    #[error("Cannot set up the Lua session for gdb: {0}")]
    Lua(crate::script::ScriptError),
    /// Reverse execution failed (a replay diverged).
    #[error(transparent)]
    Reverse(#[from] reverse::ReverseError),
    /// A `monitor lua` chunk left the session without a machine.
    #[error("The Lua session has no machine any more")]
    NoMachine,
}

/// How a gdb session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// The guest ended the run (or failed) while gdb drove it; gdb was told.
    Finished(StopReason),
    /// gdb detached or killed the session: the run goes on without gdb.
    Detached,
}

/// How one gdb connection ended.
enum ConnectionEnd {
    /// As the session does.
    Session(SessionEnd),
    /// The connection broke (gdb died, or sent what the stub cannot parse):
    /// the guest stays stopped and the next gdb may connect.
    Lost,
}

/// Listens on `addr`, waits for a gdb connection and serves it until gdb
/// detaches or the guest ends the run; when a connection breaks instead
/// (gdb killed, malformed packets), waits for the next one with the guest
/// stopped. The guest does not run before gdb connects (it is at its first
/// instruction). Returns the machine (a `monitor lua` chunk may have
/// replaced it) and how the session ended.
pub fn serve(
    machine: Machine,
    addr: &str,
    qemu_exit_codes: bool,
) -> (Option<Machine>, Result<SessionEnd, GdbError>) {
    let mut target = match GdbTarget::new(machine, qemu_exit_codes) {
        Ok(t) => t,
        Err(e) => return (None, Err(e)),
    };
    let result = serve_target(&mut target, addr);
    (target.into_machine(), result)
}

/// Serves gdb on `addr` for the machine of a Lua session (a scenario's
/// `vm.gdb`), as [`serve`] does; the machine stays in the session.
pub fn serve_scenario(lua: Scenario, addr: &str) -> Result<SessionEnd, GdbError> {
    let mut target = GdbTarget::with_scenario(lua, false);
    serve_target(&mut target, addr)
}

/// Listens on `addr` and serves gdb connections to `target`.
fn serve_target(target: &mut GdbTarget, addr: &str) -> Result<SessionEnd, GdbError> {
    let listen_err = |source| GdbError::Listen {
        addr: addr.to_string(),
        source,
    };
    let addrs: Vec<_> = addr.to_socket_addrs().map_err(listen_err)?.collect();
    let listener = TcpListener::bind(&addrs[..]).map_err(listen_err)?;
    let shown = listener
        .local_addr()
        .map_or_else(|_| addr.to_string(), |a| a.to_string());
    eprintln!("lunavm: waiting for gdb on {shown}");
    loop {
        let (stream, peer) = listener.accept().map_err(listen_err)?;
        eprintln!("lunavm: gdb connected from {peer}");
        // gdb's packets are small and interactive.
        let _ = stream.set_nodelay(true);
        match serve_connection(target, stream)? {
            ConnectionEnd::Session(end) => return Ok(end),
            ConnectionEnd::Lost => {
                eprintln!("lunavm: waiting for gdb again on {shown} (the guest stays stopped)");
            }
        }
    }
}

/// Serves one gdb connection.
fn serve_connection(target: &mut GdbTarget, stream: TcpStream) -> Result<ConnectionEnd, GdbError> {
    let gdb = GdbStub::new(GdbConn::new(stream));
    let result = gdb.run_blocking::<EventLoop>(target);
    // gdb's breakpoints and watchpoints do not outlive its session.
    target.clear_debug_state()?;
    let end = match result {
        Ok(DisconnectReason::TargetExited(_) | DisconnectReason::TargetTerminated(_)) => {
            eprintln!("lunavm: gdb session ended with the guest");
            SessionEnd::Detached
        }
        Ok(DisconnectReason::Disconnect) => {
            eprintln!("lunavm: gdb detached; running on");
            SessionEnd::Detached
        }
        Ok(DisconnectReason::Kill) => {
            eprintln!("lunavm: gdb sent kill; running on without it");
            SessionEnd::Detached
        }
        Err(e) => {
            if e.is_target_error() {
                if let Some(err) = e.into_target_error() {
                    return Err(err);
                }
                return Ok(ConnectionEnd::Lost);
            }
            eprintln!("lunavm: gdb connection lost: {e}");
            if target.finished.is_none() {
                return Ok(ConnectionEnd::Lost);
            }
            SessionEnd::Detached
        }
    };
    Ok(ConnectionEnd::Session(match target.finished.take() {
        Some(stop) => SessionEnd::Finished(stop),
        None => end,
    }))
}

/// Raises `flag` when `stream` has data to read (or fails), without reading
/// it, until `done` is set.
fn watch_socket(stream: &TcpStream, flag: &AtomicBool, done: &AtomicBool) {
    let mut byte = [0u8; 1];
    while !done.load(Ordering::Acquire) {
        match stream.peek(&mut byte) {
            // Data, or end of file: either way the run must stop for gdb.
            Ok(_) => {
                flag.store(true, Ordering::Release);
                return;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                flag.store(true, Ordering::Release);
                return;
            }
        }
    }
}

/// How often the socket watcher looks at its stop flag.
const WATCH_TICK: Duration = Duration::from_millis(10);

/// gdbstub's blocking event loop over the machine.
struct EventLoop;

type WaitResult = Result<
    run_blocking::Event<SingleThreadStopReason<u64>>,
    run_blocking::WaitForStopReasonError<
        <GdbTarget as Target>::Error,
        <GdbConn as Connection>::Error,
    >,
>;

impl EventLoop {
    /// Runs the machine as the last resume asked, stopping when gdb sends a
    /// byte.
    fn run_machine(target: &mut GdbTarget, conn: &mut GdbConn) -> WaitResult {
        use run_blocking::{Event, WaitForStopReasonError as E};
        if target.reversing() {
            return Ok(Event::TargetStopped(
                target.run_reverse().map_err(E::Target)?,
            ));
        }
        if target.stepping() {
            // One instruction: it ends without gdb's help.
            let stop = target.run(None).map_err(E::Target)?;
            return match target.stop_reason(stop) {
                Some(reason) => Ok(Event::TargetStopped(reason)),
                None => Ok(Event::TargetStopped(SingleThreadStopReason::Signal(
                    Signal::SIGINT,
                ))),
            };
        }
        if conn.has_buffered_input() {
            // gdb already sent more (a Ctrl-C right after the continue).
            let byte = conn.read().map_err(E::Connection)?;
            return Ok(Event::IncomingData(byte));
        }
        let flag = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let watcher = conn.stream().try_clone().map_err(E::Connection)?;
        // The watcher peeks with a timeout (a socket option shared with
        // `conn`, which nobody reads while the guest runs); reset below.
        watcher
            .set_read_timeout(Some(WATCH_TICK))
            .map_err(E::Connection)?;
        // Not joined: it notices `done` within a tick, and the stop must not
        // wait for that.
        {
            let (flag, done) = (flag.clone(), done.clone());
            std::thread::spawn(move || watch_socket(&watcher, &flag, &done));
        }
        let stop = target.run(Some(flag));
        done.store(true, Ordering::Release);
        conn.stream()
            .set_read_timeout(None)
            .map_err(E::Connection)?;
        let stop = stop.map_err(E::Target)?;
        match target.stop_reason(stop) {
            Some(reason) => Ok(Event::TargetStopped(reason)),
            None => {
                // Interrupted: gdb sent something (Ctrl-C); hand it over.
                let byte = conn.read().map_err(E::Connection)?;
                Ok(Event::IncomingData(byte))
            }
        }
    }
}

impl run_blocking::BlockingEventLoop for EventLoop {
    type Target = GdbTarget;
    type Connection = GdbConn;
    type StopReason = SingleThreadStopReason<u64>;

    fn wait_for_stop_reason(target: &mut Self::Target, conn: &mut Self::Connection) -> WaitResult {
        Self::run_machine(target, conn)
    }

    fn on_interrupt(
        _target: &mut Self::Target,
    ) -> Result<Option<Self::StopReason>, <Self::Target as Target>::Error> {
        Ok(Some(SingleThreadStopReason::Signal(Signal::SIGINT)))
    }
}
