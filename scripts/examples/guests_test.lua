-- The built-in guests (harness/guests/guests.txt) and the vm.boot options they
-- show: cmdline=, mem=, modules=, cpu=, seed=.
local guest = require("lunavm.guest")
local hex = require("lunavm.hex")

budget = { time = "2s", wall = "20s" }

function test_hello()
  vm.boot{guest = "hello", cmdline = "status=0 who=lua"}
  guest.finish(0)
  t.eq(serial.output(), "Hello from lunavm guest 'hello'!\ncmdline: status=0 who=lua\n")
end

function test_exits()
  vm.boot{guest = "exits", cmdline = "count=500"}
  guest.finish(0)
  guest.expect_line("exits: done 500")
  t.ok(vm.exits().pio_out >= 500)
end

function test_ucall()
  vm.boot{guest = "ucall"}
  local ev = vm.run{sync = 1}
  t.eq(ev.reason, "sync")
  ev = vm.run{}
  t.eq(ev.reason, "done")
  guest.expect_line("ucall: all commands sent")
end

-- poke with nobody touching anything prints the untouched values.
function test_poke_untouched()
  vm.boot{guest = "poke"}
  guest.finish(0)
  t.eq(table.concat(guest.lines(), "\n"), table.concat({
    "buf: poke buffer",
    "buf[200]: 0x00",
    "value: 0x1122334455667788",
    "alias: alias page",
    "rbx: 0x0 r12: 0x0",
    "msr 0x174: 0x10",
    "interrupt 0x40: 0",
    "exception: -1",
    "port 0x600: 0xffffffff",
    "mmio 0xd0000000: 0xffffffff",
    "input? ",
    "got: (skipped)",
    "target called",
    "poke: done",
  }, "\n"))
end

-- emulate prints one "emulate: NAME ok" or "emulate: NAME FAIL: why" line per
-- check (two for intn): each becomes a result of its own
-- (guests_test.lua::test_emulate/NAME). The last line counts checks and failures.
function test_emulate()
  vm.boot{guest = "emulate"}
  local ev = vm.run{}
  t.eq(ev.reason, "exit")
  local lines, failed = 0, 0
  for _, line in ipairs(guest.lines()) do
    local name, rest = line:match("^emulate: (.-) (ok.*)$")
    if name then
      t.result(name, "pass", rest)
    else
      name, rest = line:match("^emulate: (.-) FAIL: (.*)$")
      if name then
        t.result(name, "fail", rest)
        failed = failed + 1
      end
    end
    if name then lines = lines + 1 end
  end
  t.eq(lines, 10, "int3, intn 0x80, intn 0x21, fwait, cmpxchg16b, xgetbv, rdrand, rdseed, clac, badenc")
  guest.expect_line(string.format("emulate: 9 checks, %d failed", failed))
  t.eq(ev.status, failed, "the exit status is the number of failed checks")
end

function test_faults()
  vm.boot{guest = "faults"}
  guest.finish(0)
  guest.expect_line("faults: page fault at 0x100000000 handled")
  guest.expect_line("faults: int3 handled")
end

-- mb_hello: a 32-bit multiboot guest that prints its cmdline, memory and
-- modules; modules are files, given as paths or {path=, cmdline=}.
function test_mb_hello_modules_and_memory()
  local first, second = os.tmpname(), os.tmpname()
  local f = assert(io.open(first, "wb"))
  f:write("first module\n")
  f:close()
  f = assert(io.open(second, "wb"))
  f:write("second\0binary")
  f:close()
  local ok, err = pcall(vm.boot, {guest = "mb_hello", mem = "64M", cmdline = "hi there",
    modules = {first, {path = second, cmdline = "two"}}})
  os.remove(first)
  os.remove(second)
  if not ok then error(err, 0) end
  local prints = {}
  hook.ucall("PRINT", function(ev) prints[#prints + 1] = ev.msg end)
  guest.finish(0)
  guest.expect_line("Hello from lunavm guest 'mb_hello' (multiboot)!")
  guest.expect_line("cmdline: hi there")
  guest.expect_line("mem_upper: 64512 KiB") -- 64 MiB minus the first MiB
  guest.expect_line("modules: 2")
  t.ok(serial.output():find("module 0: start 0x%x+ end 0x%x+: first module\n"), serial.output())
  t.ok(serial.output():find("module 1: start 0x%x+ end 0x%x+: second\n"), serial.output())
  t.eq(table.concat(prints, "|"), "32-bit ucall")
  t.eq(cpu.segment("cs").l, 0, "32-bit protected mode")
  t.ok(guest.expect_error(vm.boot, {guest = "mb_hello"}):find("already booted", 1, true))
end

function test_missing_module()
  local msg = guest.expect_error(vm.boot, {guest = "mb_hello", modules = {"/nonexistent/module"}})
  t.ok(msg:find("cannot read module /nonexistent/module", 1, true), msg)
end

-- cpu="baseline" (the default) hides CMPXCHG16B from CPUID; cpu="host" passes
-- on what KVM supports, and every x86-64 host with KVM has it.
function test_cpu_profile_baseline()
  vm.boot{guest = "emulate", cmdline = "only=cmpxchg16b", cpu = "baseline"}
  guest.finish(0)
  guest.expect_line("emulate: cmpxchg16b ok (#UD, not enumerated)")
end

function test_cpu_profile_host()
  vm.boot{guest = "emulate", cmdline = "only=cmpxchg16b", cpu = "host"}
  guest.finish(0)
  guest.expect_line("emulate: cmpxchg16b ok")
end

-- SplitMix64, lunavm's entropy stream (harness/src/entropy.rs).
local function splitmix64(seed)
  local s = seed
  return function()
    s = s + 0x9e3779b97f4a7c15
    local z = s
    z = (z ~ (z >> 30)) * 0xbf58476d1ce4e5b9
    z = (z ~ (z >> 27)) * 0x94d049bb133111eb
    return z ~ (z >> 31)
  end
end

-- seed=N: RDRAND values that lunavm supplies (when KVM's emulator fails on
-- RDRAND and lunavm completes it) are the SplitMix64 stream of the seed.
function test_seed_drives_rdrand()
  vm.boot{guest = "emulate", cmdline = "only=rdrand", seed = 7}
  local completed = 0
  hook.exit("emulation", function(ev)
    if ev.entry == "rdrand" then completed = completed + 1 end
  end)
  guest.finish(0)
  guest.expect_line("emulate: rdrand ok")
  if completed == 0 then
    t.skip("this host's CPU runs RDRAND natively in the guest (no emulation exit), "
      .. "so the values come from the hardware, not from seed=")
  end
  local next = splitmix64(7)
  guest.expect_line(string.format("emulate: rdrand: %s %s", hex.u64(next()), hex.u64(next())))
end
