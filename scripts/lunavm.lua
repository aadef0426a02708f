---@meta
-- LuaLS annotations for lunavm's Lua scenario API (the reference is
-- scripts/README.md). This file is never run: point the Lua language server at
-- this folder (`"workspace.library": ["<repo>/scripts"]`) for completion,
-- hovers and type checks. The helper library's annotations are in
-- lib/guest_meta.lua (`require("lunavm.guest")`) and lib/hex_meta.lua
-- (`require("lunavm.hex")`).
--
-- Conventions: integers are Lua 5.4 64-bit integers (guest values at or above
-- 2^63 read as negative numbers); every function raises a Lua error (a string
-- that starts with "file:line: ns.name: ") on misuse.

---A size: bytes, or a string with a unit ("64M", "4K", "1G").
---@alias lunavm.Size integer|string

---A duration: nanoseconds, or a string with a unit ("500us", "20ms", "2s").
---@alias lunavm.Duration integer|string

---Why `vm.run` returned.
---@alias lunavm.Reason
---| "exit"              # the guest wrote to port 0xf4: `status`
---| "done"              # ucall DONE: `status`
---| "assert"            # ucall ASSERT: `message`, `args`
---| "sync"              # ucall SYNC with `sync=true` or a matching id: `id`, `args`
---| "breakpoint"        # an execution breakpoint of `breakpoint=`: `addr`
---| "serial"            # the `serial=` regex matched: `match`
---| "hook"              # a hook or device called `vm.stop()`: `hook`
---| "halt"              # `hlt` with nothing to wake the guest: `interrupts`
---| "shutdown"          # triple fault: `regs`
---| "emulation_failure" # an instruction neither KVM nor lunavm could run: `message`, `bytes`
---| "exit_budget"       # `exits=` used up: `exits`
---| "time_budget"       # `time=` used up: `time`
---| "error"             # KVM failed to enter the guest or gave an unexpected exit: `message`
---| "watch"             # a watch (set by gdb) was hit: `id`, `addr`, `size`, `write`, `value`
---| "detached"          # `vm.gdb`: gdb detached, the machine is where gdb left it

---A ucall command name.
---@alias lunavm.UcallCommand "PRINT"|"SYNC"|"COV_MAP"|"CMP"|"FUZZ_POINT"|"DONE"|"ASSERT"

---The kinds `hook.exit` takes.
---@alias lunavm.ExitKind "pio"|"mmio"|"hlt"|"emulation"

---Which accesses an access hook sees (default "both").
---@alias lunavm.Direction "read"|"write"|"both"

---Register names of `cpu.get`, `cpu.set` and `cpu.regs`.
---@alias lunavm.Register
---| "rax" | "rbx" | "rcx" | "rdx" | "rsi" | "rdi" | "rbp" | "rsp"
---| "r8" | "r9" | "r10" | "r11" | "r12" | "r13" | "r14" | "r15"
---| "rip" | "rflags"
---| "cs" | "ds" | "es" | "fs" | "gs" | "ss" # selectors
---| "fs_base" | "gs_base"
---| "cr0" | "cr2" | "cr3" | "cr4" | "cr8" | "efer"

---Segment names of `cpu.segment` and `cpu.set_segment`.
---@alias lunavm.SegmentName "cs"|"ds"|"es"|"fs"|"gs"|"ss"|"tr"|"ldt"

---A status for `t.result`.
---@alias lunavm.ResultStatus "pass"|"fail"|"skip"

-- ---------------------------------------------------------------------------
-- vm
-- ---------------------------------------------------------------------------

---A boot module: a file path, or a path with its own command line.
---@class lunavm.Module
---@field path string The file to load.
---@field cmdline? string The module's command line (default: its path).

---Options of `vm.boot`.
---@class lunavm.BootOptions
---@field guest? string A built-in guest (default "hello"); not with `kernel`.
---@field kernel? string A kernel file (ELF with a PVH note, or multiboot); not with `guest`.
---@field mem? lunavm.Size Guest RAM (default 128M).
---@field cmdline? string The kernel command line.
---@field modules? (string|lunavm.Module)[] Boot modules (multiboot guests).
---@field cpu? "baseline"|"host" The CPU profile (default "baseline").
---@field seed? integer Seed of every entropy source (RDRAND/RDSEED completions, virtio-rng).
---@field disk? string A virtio disk image ("PATH" or "PATH,rw"), as `--disk`.
---@field disks? string[] Several virtio disks, in slot order.
---@field net? boolean A virtio-net card (frames through `virtio.send`/`virtio.recv`).
---@field pcap? string With `net`: capture every frame to this pcap file.
---@field vconsole? boolean A virtio-console (`virtio.write`/`virtio.read`).
---@field rng? boolean A virtio-rng fed from the seed.
---@field syscall_compat? "auto"|"on"|"off" When lunavm finishes SYSCALLs the host leaves at CPL3 (default "auto": when the startup probe finds it needed), as `--syscall-compat`.
---@field watch_mode? "auto"|"debugreg"|"page" The mechanism of `hook.watch{vaddr=}` and gdb's watchpoints, as `--watch-mode` (default "auto": debug registers where the startup probe finds data breakpoints firing at CPL0 and CPL3, else page watches; "debugreg" is an error on a host where they fire at neither).

---Stop conditions of `vm.run`; all optional, the first that holds ends the run.
---@class lunavm.RunOptions
---@field exits? integer Stop after this many guest-caused exits ("exit_budget").
---@field time? lunavm.Duration Stop after this much virtual time ("time_budget").
---@field serial? string Stop when this Rust regex matches the unread serial output ("serial").
---@field breakpoint? integer|integer[] Stop at an execution breakpoint ("breakpoint").
---@field sync? boolean|integer Stop at every ucall SYNC (true) or at the one with this id ("sync").

---The event table `vm.run` returns: always `reason` and `rip`, the other
---fields by reason.
---@class lunavm.Event
---@field reason lunavm.Reason Why the run ended.
---@field rip integer RIP when it ended.
---@field status? integer "exit": the value written to port 0xf4; "done": the DONE status.
---@field message? string "assert": "file:line: expression"; "emulation_failure", "error": what happened.
---@field args? integer[] "assert", "sync": the ucall's arguments (for "sync", args[1] is the id).
---@field id? integer "sync": the sync id.
---@field addr? integer "breakpoint": the breakpoint's address.
---@field match? string "serial": the matched text.
---@field hook? integer "hook": the id of the handle whose callback called `vm.stop()`.
---@field interrupts? boolean "halt": RFLAGS.IF at the `hlt`.
---@field regs? table<string, integer> "shutdown": the register dump.
---@field bytes? string "emulation_failure": the instruction's bytes.
---@field exits? integer "exit_budget": the `exits=` budget.
---@field time? integer "time_budget": the `time=` budget in nanoseconds.

---Exit counters of `vm.exits`.
---@class lunavm.ExitCounters
---@field pio_in integer Port reads.
---@field pio_out integer Port writes (ucalls and debug-exit writes included).
---@field mmio_read integer MMIO reads.
---@field mmio_write integer MMIO writes.
---@field hlt integer HLT exits.
---@field emulation_failure integer Emulation failures (completed by lunavm or not).
---@field total integer The sum of the above.
---@field unclaimed_pio_reads integer Port reads no device claimed.
---@field unclaimed_pio_writes integer Port writes no device claimed.
---@field unclaimed_mmio_reads integer MMIO reads no device claimed.
---@field unclaimed_mmio_writes integer MMIO writes no device claimed.

---What `vm.syscall_compat` reports.
---@class lunavm.SyscallCompat
---@field mode "auto"|"on"|"off" The requested mode.
---@field active boolean Whether the path is on.
---@field probe_syscall string What SYSCALL from CPL3 did in the startup probe: "works", "wrong CPL 3" or "failed: ...".
---@field probe_sysret string What SYSRET from CPL0 did in the probe.
---@field handler? integer The guest #PF handler the path's breakpoint is on.
---@field completed integer SYSCALLs lunavm finished (the completion entry `syscall`).
---@field page_faults integer Other page faults that passed the breakpoint.
---@field starved boolean No debug register was free for the breakpoint.
---@field lstar_trap boolean The guest's LSTAR writes exit to lunavm (MSR filter).

---What `vm.watch_mode` reports.
---@class lunavm.WatchMode
---@field mode "auto"|"debugreg"|"page" The requested mode.
---@field debug_regs boolean Whether watches take debug registers where they fit one.
---@field probe string What the startup probe measured, e.g. "data breakpoints do not fire at CPL0 and do not fire at CPL3".
---@field cpl0 boolean Data breakpoints fire for CPL0 code.
---@field cpl3 boolean Data breakpoints fire for CPL3 code.
---@field page_watches integer Page watches set.
---@field debug_reg_watches integer Watches set on a debug register.
---@field no_free_debug_reg integer Watches that fell back to pages for want of a free debug register.
---@field page_hits integer Hits reported by page watches.
---@field debug_reg_hits integer Hits reported by debug registers.
---@field filtered_writes integer Writes a debug-register read watch saw and dropped.

---The machine.
vm = {}

---Builds the machine and loads the kernel (default: `guest="hello"`, 128M,
---`cpu="baseline"`). Errors if already booted.
---
---Example: `vm.boot{guest="poke", cmdline="input=1"}`
---@param opts? lunavm.BootOptions
function vm.boot(opts) end

---Runs until the guest stops the run or a condition holds.
---
---Example: `local ev = vm.run{sync=1}`
---@param opts? lunavm.RunOptions
---@return lunavm.Event event
function vm.run(opts) end

---Serves gdb on the stopped machine (as `lunavm run --gdb`) until gdb
---detaches (`reason="detached"`) or the run ends under gdb (the event
---`vm.run` would give). Blocks while gdb drives the machine.
---
---Example: `local ev = vm.gdb{addr="127.0.0.1:1234"}`
---@param opts {addr: string}|string
---@return lunavm.Event event
function vm.gdb(opts) end

---Inside a hook or device callback: the current `vm.run` returns with
---`reason="hook"` once the callback returns. An error anywhere else.
function vm.stop() end

---Whether `vm.boot` has run.
---@return boolean
function vm.booted() end

---A hash of guest memory and the vCPU registers, in hex: equal hashes, equal
---machines (the hash `lunavm run --report` records).
---@return string hash
function vm.state_hash() end

---Exit counters since boot.
---@return lunavm.ExitCounters
function vm.exits() end

---The SYSCALL compatibility path: what the host does, what lunavm did.
---@return lunavm.SyscallCompat
function vm.syscall_compat() end

---The watch mechanism: the mode, what the startup probe measured of the
---debug registers, and what was set and hit.
---@return lunavm.WatchMode
function vm.watch_mode() end

-- ---------------------------------------------------------------------------
-- mem
-- ---------------------------------------------------------------------------

---What `mem.translate` found about a mapping.
---@class lunavm.TranslateInfo
---@field page_size integer Size of the page that maps the address (4096, 2 MiB, 4 MiB, 1 GiB).
---@field writable boolean Writable at every level.
---@field user boolean Accessible from user mode at every level.
---@field executable boolean Not no-execute at any level (NX honoured only with EFER.NXE).

---Guest memory: physical (`p`) and virtual (`v`, through the vCPU's page
---tables; permissions are ignored, as a debugger's access does).
mem = {}

---@param p integer Guest-physical address.
---@return integer value
function mem.read8(p) end
---@param p integer Guest-physical address.
---@return integer value Little-endian.
function mem.read16(p) end
---@param p integer Guest-physical address.
---@return integer value Little-endian.
function mem.read32(p) end
---@param p integer Guest-physical address.
---@return integer value Little-endian (negative at or above 2^63).
function mem.read64(p) end

---@param p integer Guest-physical address.
---@param v integer Value, truncated to 8 bits.
function mem.write8(p, v) end
---@param p integer Guest-physical address.
---@param v integer Value, truncated to 16 bits, written little-endian.
function mem.write16(p, v) end
---@param p integer Guest-physical address.
---@param v integer Value, truncated to 32 bits, written little-endian.
function mem.write32(p, v) end
---@param p integer Guest-physical address.
---@param v integer Value, written little-endian.
function mem.write64(p, v) end

---Bytes as a Lua string.
---@param p integer Guest-physical address.
---@param len integer Number of bytes (at most 64 MiB).
---@return string bytes
function mem.read(p, len) end

---Writes a Lua string's bytes.
---@param p integer Guest-physical address.
---@param bytes string
function mem.write(p, bytes) end

---Bytes up to the first NUL (not included), or `max` bytes.
---@param p integer Guest-physical address.
---@param max? integer Default 4096.
---@return string s
function mem.read_cstr(p, max) end

---Writes `s` and a NUL.
---@param p integer Guest-physical address.
---@param s string
function mem.write_cstr(p, s) end

---Sets `len` bytes to `byte`.
---@param p integer Guest-physical address.
---@param len integer Number of bytes (at most 64 MiB).
---@param byte integer 0..255.
function mem.fill(p, len, byte) end

---@param v integer Guest-virtual address.
---@return integer value
function mem.vread8(v) end
---@param v integer Guest-virtual address.
---@return integer value Little-endian.
function mem.vread16(v) end
---@param v integer Guest-virtual address.
---@return integer value Little-endian.
function mem.vread32(v) end
---@param v integer Guest-virtual address.
---@return integer value Little-endian.
function mem.vread64(v) end

---@param v integer Guest-virtual address.
---@param x integer Value, truncated to 8 bits.
function mem.vwrite8(v, x) end
---@param v integer Guest-virtual address.
---@param x integer Value, truncated to 16 bits.
function mem.vwrite16(v, x) end
---@param v integer Guest-virtual address.
---@param x integer Value, truncated to 32 bits.
function mem.vwrite32(v, x) end
---@param v integer Guest-virtual address.
---@param x integer Value.
function mem.vwrite64(v, x) end

---Bytes through the page tables.
---@param v integer Guest-virtual address.
---@param len integer Number of bytes.
---@return string bytes
function mem.vread(v, len) end

---Writes bytes through the page tables.
---@param v integer Guest-virtual address.
---@param bytes string
function mem.vwrite(v, bytes) end

---A C string through the page tables (up to the NUL, or `max` bytes).
---@param v integer Guest-virtual address.
---@param max? integer Default 4096.
---@return string s
function mem.vread_cstr(v, max) end

---Writes `s` and a NUL through the page tables.
---@param v integer Guest-virtual address.
---@param s string
function mem.vwrite_cstr(v, s) end

---Translates a virtual address with the vCPU's current paging mode (off,
---32-bit, PAE, 4- and 5-level, large pages).
---
---Example: `local p, info = mem.translate(v); if not p then print(info) end`
---@param v integer Guest-virtual address.
---@return integer|nil p The physical address, or nil when unmapped.
---@return lunavm.TranslateInfo|string info The mapping, or why it is unmapped.
---@overload fun(v: integer): nil, string
function mem.translate(v) end

-- ---------------------------------------------------------------------------
-- cpu
-- ---------------------------------------------------------------------------

---Every register of `cpu.regs`.
---@class lunavm.Regs
---@field rax integer
---@field rbx integer
---@field rcx integer
---@field rdx integer
---@field rsi integer
---@field rdi integer
---@field rbp integer
---@field rsp integer
---@field r8 integer
---@field r9 integer
---@field r10 integer
---@field r11 integer
---@field r12 integer
---@field r13 integer
---@field r14 integer
---@field r15 integer
---@field rip integer
---@field rflags integer
---@field cs integer Selector.
---@field ds integer Selector.
---@field es integer Selector.
---@field fs integer Selector.
---@field gs integer Selector.
---@field ss integer Selector.
---@field fs_base integer
---@field gs_base integer
---@field cr0 integer
---@field cr2 integer
---@field cr3 integer
---@field cr4 integer
---@field cr8 integer
---@field efer integer

---A segment register in full (`cpu.segment`); `cpu.set_segment` takes any
---subset of the fields.
---@class lunavm.Segment
---@field selector integer
---@field base integer
---@field limit integer
---@field type integer
---@field dpl integer
---@field present integer 0 or 1.
---@field db integer 0 or 1.
---@field s integer 0 or 1.
---@field l integer 0 or 1.
---@field g integer 0 or 1.

---The vCPU.
cpu = {}

---Reads a register.
---@param name lunavm.Register
---@return integer value
function cpu.get(name) end

---Writes a register; takes effect when the guest next runs. Segment names set
---the selector only.
---@param name lunavm.Register
---@param value integer
function cpu.set(name, value) end

---Every register with its value.
---@return lunavm.Regs
function cpu.regs() end

---A segment register in full.
---@param name lunavm.SegmentName
---@return lunavm.Segment
function cpu.segment(name) end

---Changes the given fields of a segment register.
---
---Example: `cpu.set_segment("fs", {base = 0x1000})`
---@param name lunavm.SegmentName
---@param fields lunavm.Segment|table<string, integer>
function cpu.set_segment(name, fields) end

---Reads an MSR (any MSR KVM lets userspace access).
---@param index integer
---@return integer value
function cpu.rdmsr(index) end

---Writes an MSR.
---@param index integer
---@param value integer
function cpu.wrmsr(index, value) end

---Injects an exception, delivered when the guest next runs.
---@param vector integer 0..31.
---@param error_code? integer Pushed as the exception's error code.
function cpu.inject_exception(vector, error_code) end

---Injects an external interrupt; errors if the guest has interrupts disabled
---(RFLAGS.IF = 0, an interrupt shadow, or one already pending).
---@param vector integer 32..255.
function cpu.inject_interrupt(vector) end

-- ---------------------------------------------------------------------------
-- pio, mmio
-- ---------------------------------------------------------------------------

---Host-side port access (qtest style): reads and writes device registers as
---the guest would, no guest involved. (`pio`, not `io`: Lua's `io` library
---stays available.)
pio = {}

---@param port integer
---@return integer value
function pio.inb(port) end
---@param port integer
---@return integer value
function pio.inw(port) end
---@param port integer
---@return integer value
function pio.inl(port) end

---Example: `pio.outb(0x3f8, 65)` prints `A` on the serial port.
---@param port integer
---@param v integer Truncated to 8 bits.
function pio.outb(port, v) end
---@param port integer
---@param v integer Truncated to 16 bits.
function pio.outw(port, v) end
---@param port integer
---@param v integer Truncated to 32 bits.
function pio.outl(port, v) end

---Host-side MMIO access to device registers (Lua devices and the bus).
mmio = {}

---@param a integer Guest-physical address.
---@return integer value
function mmio.read8(a) end
---@param a integer Guest-physical address.
---@return integer value
function mmio.read16(a) end
---@param a integer Guest-physical address.
---@return integer value
function mmio.read32(a) end
---@param a integer Guest-physical address.
---@return integer value
function mmio.read64(a) end

---@param a integer Guest-physical address.
---@param v integer Truncated to 8 bits.
function mmio.write8(a, v) end
---@param a integer Guest-physical address.
---@param v integer Truncated to 16 bits.
function mmio.write16(a, v) end
---@param a integer Guest-physical address.
---@param v integer Truncated to 32 bits.
function mmio.write32(a, v) end
---@param a integer Guest-physical address.
---@param v integer
function mmio.write64(a, v) end

-- ---------------------------------------------------------------------------
-- dev, hook and handles
-- ---------------------------------------------------------------------------

---A hook or device; `dev.*` and `hook.*` return one.
---@class lunavm.Handle
---@field id integer The id `vm.run` reports in `ev.hook`.
local Handle = {}

---Removes the hook or device.
---@return boolean removed False if it was already removed.
function Handle:remove() end

---A device written in Lua (`dev.pio`, `dev.mmio`).
---@class lunavm.DeviceSpec
---@field base integer First port or address.
---@field size integer Number of ports or bytes (> 0).
---@field name? string Shown in errors (default "lua-device").
---@field read? fun(offset: integer, size: integer): integer Called on reads; missing: reads are all-ones.
---@field write? fun(offset: integer, size: integer, value: integer) Called on writes; missing: writes are dropped.
---@field save? fun(): any For snapshots: returns the device's state (with `restore`).
---@field restore? fun(state: any) For snapshots: takes back what `save` returned.
---@field stateless? boolean For snapshots: the device has no state.

---Devices written in Lua.
dev = {}

---Claims ports `[base, base+size)`.
---
---Example: `dev.pio{base=0x600, size=4, read=function(off, size) return 42 end}`
---@param spec lunavm.DeviceSpec
---@return lunavm.Handle
function dev.pio(spec) end

---Claims an MMIO range (in the MMIO hole, 0xc0000000-0xffffffff, or any
---address that is not RAM).
---@param spec lunavm.DeviceSpec
---@return lunavm.Handle
function dev.mmio(spec) end

---A guest port or MMIO access, seen by `hook.pio`, `hook.mmio` and
---`hook.exit("pio"/"mmio")` after the device handled it.
---@class lunavm.AccessEvent
---@field port? integer The port (port hooks).
---@field addr? integer The guest-physical address (MMIO hooks).
---@field size integer Access size in bytes.
---@field value integer The value written, or the value the device returned for a read.
---@field write boolean True for a write.

---@class lunavm.PioHookSpec
---@field port integer|integer[] A port or {FIRST, LAST}.
---@field on? lunavm.Direction Default "both".
---@field fn fun(ev: lunavm.AccessEvent): integer? A read hook that returns an integer replaces the value the guest reads.

---@class lunavm.MmioHookSpec
---@field addr integer|integer[] An address or {FIRST, LAST}.
---@field on? lunavm.Direction Default "both".
---@field fn fun(ev: lunavm.AccessEvent): integer? A read hook that returns an integer replaces the value the guest reads.

---What `hook.exec` passes.
---@class lunavm.ExecEvent
---@field addr integer The breakpoint's address.

---What `hook.ucall` passes.
---@class lunavm.UcallEvent
---@field cmd lunavm.UcallCommand
---@field args integer[] The ucall's arguments.
---@field msg string Its message (PRINT, ASSERT), else "".

---What `hook.exit("hlt")` and `hook.exit("emulation")` pass (`"pio"` and
---`"mmio"` pass a `lunavm.AccessEvent`).
---@class lunavm.ExitEvent
---@field kind "hlt"|"emulation"
---@field entry? string "emulation", for an instruction lunavm completed: the completion-table entry ("int3", "rdrand", ...).

---Observe and steer the guest. Any hook may call `vm.stop()`.
hook = {}

---Called on each guest port access in the range, after the device handled it.
---
---Example: `hook.pio{port=0x80, on="read", fn=function(ev) return 3 end}`
---@param spec lunavm.PioHookSpec
---@return lunavm.Handle
function hook.pio(spec) end

---The same for MMIO exits.
---@param spec lunavm.MmioHookSpec
---@return lunavm.Handle
function hook.mmio(spec) end

---An execution breakpoint (debug registers, 4 at most): `fn` runs when the
---guest reaches `addr`, then the guest continues.
---@param addr integer Guest-virtual address.
---@param fn fun(ev: lunavm.ExecEvent)
---@return lunavm.Handle
function hook.exec(addr, fn) end

---A data watch: `fn` runs after each guest access to `size` bytes (default 8)
---at guest-physical `addr` (or guest-virtual `vaddr`, translated now) that
---`on` selects ("write", the default; "read"; "access"). A page watch: the
---watched page is made read-only or taken out of its memory slot, so it
---fires for guest kernel code too; lunavm completes each access itself. A
---read or access watch must not be on a page holding code or page tables.
---With `vaddr`, where the watch mode uses debug registers (`vm.watch_mode()`)
---and the range is 1, 2, 4 or 8 bytes aligned to its size, a free debug
---register watches the linear address instead. `ev.old` is the value a
---write replaced.
---
---Example: `hook.watch{vaddr=0x105000, fn=function(ev) print(ev.value) end}`
---@param spec {addr?: integer, vaddr?: integer, size?: integer, on?: "write"|"read"|"access", fn: fun(ev: {addr: integer, size: integer, write: boolean, value: integer, old?: integer})}
---@return lunavm.Handle
function hook.watch(spec) end

---Called on ucalls of one command, or of all (`cmd` nil).
---@param cmd lunavm.UcallCommand|nil
---@param fn fun(ev: lunavm.UcallEvent)
---@return lunavm.Handle
function hook.ucall(cmd, fn) end

---Called on every exit of a kind.
---@param kind lunavm.ExitKind
---@param fn fun(ev: lunavm.ExitEvent|lunavm.AccessEvent): integer?
---@return lunavm.Handle
function hook.exit(kind, fn) end

---Called after the guest notifies a queue of a virtio device and the device
---handled it; `ev.value` is the queue index.
---@param spec {dev: lunavm.VirtioDev, fn: fun(ev: lunavm.AccessEvent)}
---@return lunavm.Handle
function hook.virtio(spec) end

---Removes a hook or device (the same as `handle:remove()`).
---@param handle lunavm.Handle
---@return boolean removed False if it was already removed.
function hook.remove(handle) end

-- ---------------------------------------------------------------------------
-- serial
-- ---------------------------------------------------------------------------

---The 16550 UART at 0x3f8.
serial = {}

---Queues bytes for the guest to read.
---@param s string
function serial.write(s) end

---Output since the last `serial.read`, `serial.expect` or `serial=` stop
---(consumes it).
---@return string
function serial.read() end

---Everything the guest has written.
---@return string
function serial.output() end

---Runs the guest until the Rust regex matches the unread output (tested as
---each byte arrives: end it with "\n" for a whole line); returns the match and
---consumes output up to its end. Errors, with the unread output, on timeout or
---if the guest stops first.
---
---Example: `serial.expect("ip: \\S+\n", "2s")`
---@param regex string
---@param timeout? lunavm.Duration Virtual time (default "1s").
---@return string match
function serial.expect(regex, timeout) end

-- ---------------------------------------------------------------------------
-- clock
-- ---------------------------------------------------------------------------

---Virtual time: every guest port or MMIO exit costs a fixed amount, no host
---time enters.
clock = {}

---Virtual nanoseconds since boot.
---@return integer ns
function clock.now() end

---Moves virtual time forward (no guest code runs).
---@param duration lunavm.Duration
function clock.step(duration) end

-- ---------------------------------------------------------------------------
-- snapshot
-- ---------------------------------------------------------------------------

---What a restore did.
---@class lunavm.RestoreStats
---@field pages integer Pages copied back.
---@field full boolean Whether all of RAM was copied.

---@class lunavm.RestoreOptions
---@field verify? boolean Check that the restored memory and registers hash to the snapshot's.

---A snapshot `snapshot.take` returned.
---@class lunavm.Snapshot
---@field id integer
local Snapshot = {}

---Restores it (the same as `snapshot.restore(self, opts)`).
---@param opts? lunavm.RestoreOptions
---@return lunavm.RestoreStats
function Snapshot:restore(opts) end

---Frees it (the same as `snapshot.drop(self)`).
---@return boolean dropped
function Snapshot:drop() end

---Writes it to a file (the same as `snapshot.save(self, path)`).
---@param path string
function Snapshot:save(path) end

---Capture and restore the whole machine.
-- ---------------------------------------------------------------------------
-- virtio
-- ---------------------------------------------------------------------------

---A virtio device: its slot number (0-based) or its kind (the first of it).
---@alias lunavm.VirtioDev integer|"blk"|"net"|"console"|"rng"

---A virtio slot.
---@class lunavm.VirtioSlot
---@field slot integer
---@field kind "blk"|"net"|"console"|"rng"
---@field base integer Guest-physical base of its registers.
---@field irq integer Its interrupt line.

---The virtio devices from the host side.
virtio = {}

---The devices.
---@return lunavm.VirtioSlot[]
function virtio.list() end

---A device's status, counters, queues and device-specific state.
---@param dev lunavm.VirtioDev
---@return table
function virtio.state(dev) end

---Queues an Ethernet frame for the guest.
---@param dev lunavm.VirtioDev
---@param frame string
function virtio.send(dev, frame) end

---The oldest frame the guest sent, or nil.
---@param dev lunavm.VirtioDev
---@return string?
function virtio.recv(dev) end

---Queues console input for the guest.
---@param dev lunavm.VirtioDev
---@param s string
function virtio.write(dev, s) end

---Console output since the last read.
---@param dev lunavm.VirtioDev
---@return string
function virtio.read(dev) end

---Reads the disk as the guest sees it.
---@param dev lunavm.VirtioDev
---@param offset integer
---@param len integer
---@return string
function virtio.disk_read(dev, offset, len) end

---Writes the disk (the overlay, or the file when opened rw).
---@param dev lunavm.VirtioDev
---@param offset integer
---@param bytes string
function virtio.disk_write(dev, offset, bytes) end

snapshot = {}

---Captures the machine. Every Lua device needs `save=`/`restore=` or
---`stateless=true`.
---@return lunavm.Snapshot
function snapshot.take() end

---Restores a snapshot; Lua devices get their saved values back.
---@param handle lunavm.Snapshot
---@param opts? lunavm.RestoreOptions
---@return lunavm.RestoreStats
function snapshot.restore(handle, opts) end

---Frees a snapshot.
---@param handle lunavm.Snapshot
---@return boolean dropped
function snapshot.drop(handle) end

---Writes a snapshot to a file: the machine only, not Lua devices or hooks.
---@param handle lunavm.Snapshot
---@param path string
function snapshot.save(handle, path) end

---Replaces the machine with one restored from a file.
---@param path string
function snapshot.load(path) end

-- ---------------------------------------------------------------------------
-- sym
-- ---------------------------------------------------------------------------

---A symbol table `sym.load` or `sym.guest` returned.
---@class lunavm.Symbols
---@field count integer How many symbols it holds.
---@field source string The file it came from (`guest:NAME` for a built-in guest).
local Symbols = {}

---The address of symbol `name` (a global one when there are several); an
---error naming the symbol when there is none.
---@param name string
---@return integer
function Symbols:addr(name) end

---The address of symbol `name`, or nil.
---@param name string
---@return integer?
function Symbols:lookup(name) end

---The size in bytes of symbol `name` (an ELF gives it; a System.map never), or nil.
---@param name string
---@return integer?
function Symbols:size(name) end

---The code symbol holding `addr`: `"name+0x12"` (`"name"` at its start),
---its name and the offset; nil when no code symbol holds it.
---@param addr integer
---@return string? symbol
---@return string? name
---@return integer? offset
function Symbols:resolve(addr) end

---The same as `sym.backtrace(self, opts)`.
---@param opts? lunavm.BacktraceOptions
---@return lunavm.Frame[]
function Symbols:backtrace(opts) end

---Options of a backtrace.
---@class lunavm.BacktraceOptions
---@field max? integer Frames at most (default 32).
---@field rip? integer Start here instead of the vCPU's RIP.
---@field rsp? integer Start with this RSP.
---@field rbp? integer Start with this RBP.

---One frame of a backtrace.
---@class lunavm.Frame
---@field addr integer RIP (frame 1) or a return address.
---@field symbol string `"name+0x12"`, or the address in hex when no symbol holds it.
---@field name? string The function.
---@field offset? integer The offset of `addr` into it.

---Guest symbol tables (ELF or System.map) and frame-pointer backtraces.
sym = {}

---Loads the symbols of an ELF file (a `vmlinux`, any guest ELF) or of a
---`System.map`.
---@param path string
---@return lunavm.Symbols
function sym.load(path) end

---The symbols of a built-in guest's ELF.
---@param name string
---@return lunavm.Symbols
function sym.guest(name) end

---The frame-pointer backtrace of the vCPU, resolved with `symbols`: the
---chain of saved RBPs, read through the current page tables.
---@param symbols lunavm.Symbols
---@param opts? lunavm.BacktraceOptions
---@return lunavm.Frame[]
function sym.backtrace(symbols, opts) end

-- ---------------------------------------------------------------------------
-- t
-- ---------------------------------------------------------------------------

---Assertions and results. A failure records the test's outcome and raises
---"file:line: message", which ends the test.
t = {}

---Fails unless `v` is truthy.
---@param v any
---@param msg? string
function t.ok(v, msg) end

---Fails unless `a == b`; the message shows both values.
---@param a any
---@param b any
---@param msg? string
function t.eq(a, b, msg) end

---Fails if `a == b`.
---@param a any
---@param b any
---@param msg? string
function t.neq(a, b, msg) end

---Fails unless the string `s` matches the Lua pattern.
---@param s string
---@param pattern string
---@param msg? string
function t.match(s, pattern, msg) end

---Fails now.
---@param msg? string
function t.fail(msg) end

---Ends the test as skipped.
---@param msg? string
function t.skip(msg) end

---Reports a result discovered while running (e.g. one per KUnit case), shown
---as `file::test/name`.
---@param name string
---@param status lunavm.ResultStatus
---@param message? string
function t.result(name, status, message) end

-- ---------------------------------------------------------------------------
-- lunavm test
-- ---------------------------------------------------------------------------

---Budgets of a test file (`lunavm test`): `time` (virtual time, default 10s)
---and `wall` (default 60s), and per test an entry named after it. (Plain
---numbers are nanoseconds for both; prefer strings.)
---
---Example: `budget = { time = "2s", wall = "30s", test_slow = { wall = "120s" } }`
---@type table<string, lunavm.Duration|{time?: lunavm.Duration, wall?: lunavm.Duration}>?
budget = nil

---A fuzz verdict (`fuzz.replay`).
---@class lunavm.FuzzVerdict
---@field class "ok"|"crash"|"hang"
---@field reason string What ended the run: "exit", "done", "triple-fault", "symbol", "exception", "serial", "assert", "emulation", "budget", "halt", "scenario", "other".
---@field title string One line for people.
---@field signature string The crash grouping key (16 hex digits).
---@field pc integer The guest address the verdict is attributed to (0: none).
---@field serial string Serial output since the fuzz point.
---@field exits integer Guest exits of the run.
---@field blocks integer Instrumented basic blocks (breakpoint coverage) the run reached.
---@field vtime integer Virtual time of the run (ns).

---Fuzz scenarios (`lunavm fuzz`) and their regression tests.
---@class lunavm.fuzz
fuzz = {}

---Runs fuzz scenario `scenario`'s fuzz_setup in a fresh machine, then one
---input as `lunavm fuzz` does (fuzz_start, fuzz_inject, run, fuzz_verdict);
---the regression tests `lunavm fuzz --to-test` writes call it.
---@param scenario string The scenario file.
---@param input string The input bytes.
---@param opts? {args?: string[]} The scenario's `arg[1..]`.
---@return lunavm.FuzzVerdict
function fuzz.replay(scenario, input, opts) end

---The arguments of the guest's last ucall FUZZ_POINT, or nil.
---@return {buffer: integer, capacity: integer}?
function fuzz.point() end

---A fuzz scenario's configuration (see scripts/README.md, "Fuzzing").
---@class lunavm.FuzzConfig
---@field elf? string `guest:NAME` or an ELF path: symbols, block and compare breakpoints.
---@field crash_symbols? string|string[] Guest functions whose entry is a crash.
---@field crash_serial? string A regex on the serial output after the fuzz point that is a crash.
---@field ok_status? integer|integer[] Exit values that are a normal end (default {0}).
---@field fatal_vectors? integer[] Exception vectors whose IDT handler entry is a crash.
---@field hang_is_crash? boolean Report hangs as crashes.
---@field done_at_budget? boolean Reaching the budget is a normal end (kernels that idle), not a hang.
---@field max_exits? integer Exits per input before it is a hang (default 100000).
---@field max_time? lunavm.Duration Virtual time per input before it is a hang (default "1s").
---@field instrument? string A regex on function names: only those are instrumented (default all).
---@field coverage? boolean|string|string[] "blocks", "guest", "all", "none" (default all).
---@field cmp? boolean|string|string[] "breakpoints", "guest", "all", "none" (default all).

---Set by a fuzz scenario: its configuration.
---@type lunavm.FuzzConfig?
fuzz_config = nil

---The script's arguments (`lunavm run SCRIPT.lua ARGS...`); `arg[0]` is the script.
---@type table<integer, string>
arg = {}
