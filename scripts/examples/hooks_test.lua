-- Hooks: observe and steer the guest (hook.*, handle:remove, vm.stop).
local guest = require("lunavm.guest")

budget = { time = "1s", wall = "20s" }

-- `exits in=1 count=N` reads port 0x80 N times and prints the sum: a read hook's
-- return value replaces what the guest reads.
function test_pio_read_hook_replaces_the_value()
  vm.boot{guest = "exits", cmdline = "in=1 count=10"}
  local seen = {}
  hook.pio{port = 0x80, on = "read", fn = function(ev)
    seen[#seen + 1] = ev
    return 3
  end}
  guest.finish(0)
  guest.expect_line("exits: sum 30")
  t.eq(#seen, 10)
  t.eq(seen[1].port, 0x80)
  t.eq(seen[1].size, 1)
  t.eq(seen[1].write, false)
  t.eq(seen[1].value, 0, "what the POST-code port returned before the hook")
end

-- Step 7 of `poke` reads port 0x600 (nothing there: all-ones) and prints it,
-- then writes 0xcafe to 0x600 and 0x1234 to 0x602.
function test_pio_hook_on_poke()
  guest.boot_to_sync({guest = "poke"}, 6)
  local events = {}
  hook.pio{port = {0x600, 0x603}, on = "both", fn = function(ev)
    events[#events + 1] = string.format("%s 0x%x/%d 0x%x",
      ev.write and "w" or "r", ev.port, ev.size, ev.value)
    if not ev.write then return 0x1234abcd end
  end}
  guest.run_to_sync(7)
  guest.expect_line("port 0x600: 0x1234abcd")
  t.eq(table.concat(events, ", "),
    "r 0x600/4 0xffffffff, w 0x600/4 0xcafe, w 0x602/2 0x1234")
end

-- A write hook on the UART's data register sees every byte the guest prints,
-- after the divisor-latch byte (1) the runtime's serial_init writes there.
function test_pio_write_hook_sees_serial_bytes()
  vm.boot{guest = "hello", cmdline = "greet"}
  local bytes = {}
  hook.pio{port = 0x3f8, on = "write", fn = function(ev)
    bytes[#bytes + 1] = string.char(ev.value)
  end}
  guest.finish(0)
  t.eq(table.concat(bytes), "\1" .. serial.output())
  guest.expect_line("cmdline: greet")
end

-- Step 8 of `poke` reads MMIO 0xd0000000 and writes 0xbeef to 0xd0000004.
function test_mmio_hook()
  guest.boot_to_sync({guest = "poke"}, 7)
  local events = {}
  hook.mmio{addr = {0xd0000000, 0xd0000fff}, fn = function(ev)
    events[#events + 1] = string.format("%s 0x%x/%d 0x%x",
      ev.write and "w" or "r", ev.addr, ev.size, ev.value)
    return 0x5151 -- ignored for writes
  end}
  local reads = 0
  hook.mmio{addr = 0xd0000000, on = "read", fn = function() reads = reads + 1 end}
  guest.run_to_sync(8)
  guest.expect_line("mmio 0xd0000000: 0x5151")
  t.eq(table.concat(events, ", "), "r 0xd0000000/4 0xffffffff, w 0xd0000004/4 0xbeef")
  t.eq(reads, 1)
end

-- hook.exec: a breakpoint on poke_target, whose address poke passes at sync
-- 10. The hook stops the run, so this passes whether or not the host lets the
-- guest resume over a hardware breakpoint (see the next test).
function test_exec_hook_runs()
  local ev = guest.boot_to_sync({guest = "poke"}, 10)
  local target = ev.args[2]
  local calls, addr, rip = 0, nil, nil
  local h = hook.exec(target, function(e)
    calls = calls + 1
    addr, rip = e.addr, cpu.get("rip")
    vm.stop()
  end)
  ev = vm.run{}
  t.eq(ev.reason, "hook")
  t.eq(ev.hook, h.id)
  t.eq(calls, 1)
  t.eq(addr, target)
  t.eq(rip, target)
  t.eq(ev.rip, target)
  t.ok(not guest.has_line("target called"), "stopped before poke_target ran")
  h:remove()
  guest.finish(0)
  t.eq(calls, 1, "a removed hook does not fire")
  guest.expect_line("target called")
end

-- The README: "fn runs when the guest reaches addr, then the guest continues".
-- The hook must run once and the guest must finish. (The hook stops the run
-- if it fires again at the same place, so a guest that cannot get past the
-- breakpoint fails this test instead of spinning until the wall budget.)
-- Known to fail on software-nested kvm_pvm hosts: the harness resumes over a
-- breakpoint by setting RFLAGS.RF (harness/src/machine/run.rs), which that
-- KVM ignores, so the breakpoint hits again and again at the same RIP.
function test_exec_hook_guest_continues()
  local ev = guest.boot_to_sync({guest = "poke"}, 10)
  local target = ev.args[2]
  local calls = 0
  hook.exec(target, function()
    calls = calls + 1
    if calls > 3 then vm.stop() end
  end)
  ev = vm.run{}
  t.eq(calls, 1, string.format(
    "hook.exec fired %d times at 0x%x: the guest did not continue past the breakpoint",
    calls, target))
  t.eq(ev.reason, "done")
  guest.expect_line("target called")
end

-- hook.ucall with a command, and with nil for every command.
function test_ucall_hooks()
  vm.boot{guest = "ucall"}
  local all, prints, syncs = {}, {}, {}
  hook.ucall(nil, function(ev) all[#all + 1] = ev.cmd end)
  hook.ucall("PRINT", function(ev) prints[#prints + 1] = ev.msg end)
  hook.ucall("SYNC", function(ev) syncs[#syncs + 1] = ev.args end)
  local ev = vm.run{}
  t.eq(ev.reason, "done")
  t.eq(table.concat(all, " "), "PRINT SYNC COV_MAP CMP FUZZ_POINT DONE")
  t.eq(table.concat(prints, "|"), "hello via ucall")
  t.eq(#syncs, 1)
  t.eq(syncs[1][1], 1, "SYNC(1)")
  t.ok(guest.expect_error(hook.ucall, "NOPE", print):find("unknown ucall command", 1, true))
end

function test_exit_hook_hlt()
  vm.boot{guest = "hello", cmdline = "halt=1"}
  local kinds = {}
  hook.exit("hlt", function(ev) kinds[#kinds + 1] = ev.kind end)
  local ev = vm.run{}
  t.eq(ev.reason, "halt")
  t.eq(ev.interrupts, false)
  t.eq(table.concat(kinds, " "), "hlt")
  t.eq(vm.exits().hlt, 1)
end

-- `emulate only=int3`: on hosts where int3 fails in KVM's instruction
-- emulator, lunavm completes it and the "emulation" hook sees the entry.
function test_exit_hook_emulation()
  vm.boot{guest = "emulate", cmdline = "only=int3"}
  local entries = {}
  hook.exit("emulation", function(ev)
    t.eq(ev.kind, "emulation")
    entries[#entries + 1] = ev.entry
  end)
  guest.finish(0)
  guest.expect_line("emulate: int3 ok")
  if #entries == 0 then
    t.skip("this host runs int3 natively (no emulation exit), so the emulation hook has nothing to see")
  end
  t.eq(entries[1], "int3")
  t.eq(vm.exits().emulation_failure, #entries)
end

-- `hello probe=1` writes and reads the unclaimed port 0x510 and MMIO 0xd0000000.
function test_exit_hooks_pio_and_mmio()
  vm.boot{guest = "hello", cmdline = "probe=1"}
  local ports, probe, mmios = 0, {}, {}
  hook.exit("pio", function(ev)
    ports = ports + 1
    if ev.port == 0x510 then
      probe[#probe + 1] = string.format("%s 0x%x", ev.write and "w" or "r", ev.value)
    end
  end)
  hook.exit("mmio", function(ev)
    mmios[#mmios + 1] = string.format("%s 0x%x 0x%x", ev.write and "w" or "r", ev.addr, ev.value)
  end)
  guest.finish(0)
  t.eq(table.concat(probe, ", "), "w 0x12345678, r 0xffffffff")
  t.eq(table.concat(mmios, ", "), "w 0xd0000000 0x12345678, r 0xd0000000 0xffffffff")
  -- Every port exit (this guest sends no ucalls). The debug-exit write that
  -- ends the run is not reported today (it stops the run before hooks run),
  -- so allow for that one.
  local e = vm.exits()
  t.ok(ports >= e.pio_in + e.pio_out - 1, string.format("%d of %d port exits", ports, e.pio_in + e.pio_out))
  t.ok(ports > #serial.output(), "every serial byte is a port exit")
end

-- handle:remove() and hook.remove(handle): after removal a hook no longer fires.
function test_remove_hooks()
  guest.boot_to_sync({guest = "poke"}, 6)
  local fired = 0
  local function replace()
    fired = fired + 1
    return 0x77
  end
  local hp = hook.pio{port = 0x600, on = "read", fn = replace}
  local hm = hook.mmio{addr = 0xd0000000, on = "read", fn = replace}
  local hu = hook.ucall("SYNC", replace)
  t.eq(hp:remove(), true)
  t.eq(hook.remove(hm), true)
  t.eq(hu:remove(), true)
  t.eq(hook.remove(hp), false, "already removed")
  guest.run_to_sync(8)
  t.eq(fired, 0)
  guest.expect_line("port 0x600: 0xffffffff")
  guest.expect_line("mmio 0xd0000000: 0xffffffff")
  -- A hook installed after a removal works.
  hook.pio{port = 0x3f8, on = "write", fn = replace}
  guest.run_to_sync(10) -- step 9 prints "input? "
  t.ok(fired > 0)
end

-- vm.stop() inside a hook ends vm.run with reason "hook" and the handle's id;
-- outside a hook it is an error.
function test_stop_inside_a_hook()
  guest.boot_to_sync({guest = "poke"}, 6)
  local h = hook.pio{port = 0x602, on = "write", fn = function(ev)
    t.eq(ev.value, 0x1234)
    vm.stop()
  end}
  local ev = vm.run{sync = 7}
  t.eq(ev.reason, "hook")
  t.eq(ev.hook, h.id)
  t.eq(type(ev.rip), "number")
  guest.run_to_sync(7) -- the guest goes on from there
  t.ok(guest.expect_error(vm.stop):find("only valid inside a hook", 1, true))
end
