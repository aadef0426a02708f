-- The machine: vm.boot, vm.booted, vm.run and its stop conditions and event
-- reasons, vm.exits, vm.state_hash.
local guest = require("lunavm.guest")
local hex = require("lunavm.hex")

budget = { time = "1s", wall = "20s" }

function test_boot()
  t.eq(vm.booted(), false)
  t.ok(guest.expect_error(vm.run):find("vm.boot", 1, true), "running needs a machine")
  t.ok(guest.expect_error(vm.boot, {guest = "nope"}):find("no built-in guest named 'nope'", 1, true))
  t.ok(guest.expect_error(vm.boot, {guest = "hello", kernel = "/x"}):find("not both", 1, true))
  t.ok(guest.expect_error(vm.boot, {kernel = "/nonexistent/vmlinux"}):find("cannot read kernel", 1, true))
  t.ok(guest.expect_error(vm.boot, {cpu = "pentium"}):find("pentium", 1, true))
  t.eq(vm.booted(), false, "failed boots leave no machine")
  vm.boot{} -- the default guest is hello
  t.eq(vm.booted(), true)
  t.ok(guest.expect_error(vm.boot, {guest = "poke"}):find("already booted", 1, true))
  guest.finish(0)
  guest.expect_line("Hello from lunavm guest 'hello'!")
end

-- mem= sizes RAM: 64M ends at 0x4000000.
function test_boot_memory_size()
  vm.boot{guest = "hello", mem = "64M"}
  mem.write8(0x4000000 - 1, 1)
  t.ok(guest.expect_error(mem.read8, 0x4000000):find("outside guest RAM", 1, true))
end

function test_exit_reason()
  vm.boot{guest = "hello", cmdline = "status=3"}
  local ev = vm.run{}
  t.eq(ev.reason, "exit")
  t.eq(ev.status, 3)
  t.eq(math.type(ev.rip), "integer")
end

function test_done_reason()
  vm.boot{guest = "ucall"}
  local ev = vm.run{}
  t.eq(ev.reason, "done")
  t.eq(ev.status, 0)
end

function test_assert_reason()
  vm.boot{guest = "ucall", cmdline = "assert=1"}
  local ev = vm.run{}
  t.eq(ev.reason, "assert")
  t.ok(ev.message:find("1 + 1 == 3", 1, true), ev.message)
  t.eq(ev.args[2], 2, "left")
  t.eq(ev.args[3], 3, "right")
end

function test_halt_reason()
  vm.boot{guest = "hello", cmdline = "halt=1"}
  local ev = vm.run{}
  t.eq(ev.reason, "halt")
  t.eq(ev.interrupts, false)
end

function test_shutdown_reason()
  vm.boot{guest = "faults", cmdline = "triple=1"}
  local ev = vm.run{}
  t.eq(ev.reason, "shutdown")
  t.eq(ev.regs.rip, ev.rip)
  t.neq(ev.regs.cr0 & 1, 0, "CR0.PE in the register dump")
  guest.expect_line("faults: triple fault next")
end

function test_sync_conditions()
  vm.boot{guest = "poke"}
  -- sync=true: the next SYNC, whatever its id.
  local ev = vm.run{sync = true}
  t.eq(ev.reason, "sync")
  t.eq(ev.id, 1)
  t.eq(ev.args[1], 1)
  t.eq(#ev.args, 3, "SYNC(1, &buf, 256)")
  t.eq(ev.args[3], 256)
  -- sync=ID: runs through other sync points up to that one.
  ev = vm.run{sync = 3}
  t.eq(ev.id, 3)
  t.eq(hex.u64(ev.args[2]), "0xffff800000200000")
  guest.expect_line("value: 0x1122334455667788")
  -- No condition: sync points do not stop the run.
  ev = vm.run{}
  t.eq(ev.reason, "done")
end

function test_breakpoint_condition()
  local ev = guest.boot_to_sync({guest = "poke"}, 10)
  local target = ev.args[2]
  ev = vm.run{breakpoint = target}
  t.eq(ev.reason, "breakpoint")
  t.eq(ev.addr, target)
  t.eq(ev.rip, target)
  t.eq(cpu.get("rip"), target)
  t.ok(not guest.has_line("target called"))
  guest.finish(0)
  guest.expect_line("target called")
end

-- A list: the run stops at whichever comes first.
function test_breakpoint_list()
  local ev = guest.boot_to_sync({guest = "poke"}, 10)
  local target = ev.args[2]
  -- 0x1000 is never executed.
  ev = vm.run{breakpoint = {0x1000, target}, exits = 1000}
  t.eq(ev.reason, "breakpoint")
  t.eq(ev.addr, target)
end

function test_exit_budget()
  vm.boot{guest = "exits", cmdline = "count=1000"}
  local ev = vm.run{exits = 25}
  t.eq(ev.reason, "exit_budget")
  t.eq(ev.exits, 25)
  ev = vm.run{exits = 25}
  t.eq(ev.exits, 25)
  t.eq(vm.exits().total, 50)
  -- The guest goes on to its end when nothing else stops it.
  guest.finish(0)
  guest.expect_line("exits: done 1000")
end

function test_time_budget()
  vm.boot{guest = "exits", cmdline = "count=1000"}
  local ev = vm.run{time = "20us", exits = 1000}
  t.eq(ev.reason, "time_budget", "the first condition that holds wins")
  t.eq(ev.time, 20000)
end

-- `hello probe=1` makes one access each to an unclaimed port and unclaimed MMIO.
function test_exit_counters()
  vm.boot{guest = "hello", cmdline = "probe=1"}
  local e = vm.exits()
  t.eq(e.total, 0)
  guest.finish(0)
  e = vm.exits()
  t.eq(e.mmio_read, 1)
  t.eq(e.mmio_write, 1)
  t.eq(e.unclaimed_pio_reads, 1)
  t.eq(e.unclaimed_pio_writes, 1)
  t.eq(e.unclaimed_mmio_reads, 1)
  t.eq(e.unclaimed_mmio_writes, 1)
  t.eq(e.hlt, 0)
  t.eq(e.emulation_failure, 0)
  t.eq(e.total, e.pio_in + e.pio_out + e.mmio_read + e.mmio_write + e.hlt + e.emulation_failure)
  -- Every byte printed is at least one port write (LSR polls are reads).
  t.ok(e.pio_out > #serial.output())
  t.ok(e.pio_in >= #serial.output())
end

-- Equal hashes, equal machines: a change to memory or registers changes the
-- hash, and undoing it brings the old hash back. (Hashing reads all of RAM:
-- a small machine keeps this quick.)
function test_state_hash()
  local ev = guest.boot_to_sync({guest = "poke", mem = "8M"}, 2)
  local v = ev.args[2]
  local h0 = vm.state_hash()
  t.eq(type(h0), "string")
  t.ok(h0:match("^%x+$"), h0)
  t.eq(vm.state_hash(), h0, "stable")
  mem.write8(v, 0x99)
  local h1 = vm.state_hash()
  t.neq(h1, h0, "memory is hashed")
  mem.write8(v, 0x88)
  t.eq(vm.state_hash(), h0)
  local rbx = cpu.get("rbx")
  cpu.set("rbx", rbx + 1)
  t.neq(vm.state_hash(), h0, "registers are hashed")
  cpu.set("rbx", rbx)
  t.eq(vm.state_hash(), h0)
  guest.run_to_sync(3)
  t.neq(vm.state_hash(), h0, "the guest ran")
end

function test_run_option_errors()
  vm.boot{guest = "poke"}
  t.ok(guest.expect_error(vm.run, {sync = "one"}):find("sync= takes true or an id", 1, true))
  t.ok(guest.expect_error(vm.run, {breakpoint = "main"}):find("breakpoint= takes", 1, true))
  t.ok(guest.expect_error(vm.run, {serial = "("}):find("pattern", 1, true))
  t.ok(guest.expect_error(vm.run, {exits = -1}):find("exits must be >= 0", 1, true))
  t.ok(guest.expect_error(vm.run, {time = "soon"}):find("not a duration", 1, true))
end
