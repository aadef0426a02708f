-- The test-suite Linux kernel (scripts/linux/build-kernel.sh) on the
-- deterministic platform: booted once by setup_once, snapshotted, and every
-- test starts from the booted machine.
local linux = require("lunavm.linux")

budget = { time = "60s", wall = "900s" }

function setup_once()
  linux.boot{timeout = "40s"}
end

function test_the_kernel_reached_init()
  local out = serial.output()
  t.match(out, "Linux version 6%.1")
  t.match(out, "Command line: nokaslr clearcpuid=")
  t.match(out, "Run /init as init process")
end

function test_kunit_suites_pass()
  local results = linux.kunit_results(serial.output())
  t.ok(#results >= 3, "KUnit suites ran: " .. #results)
  t.eq(linux.report_kunit(serial.output()), 0, "failed suites")
end

function test_the_booted_kernel_keeps_running_from_the_snapshot()
  local before = serial.output()
  local ev = vm.run{time = "200ms"}
  t.eq(ev.reason, "time_budget")
  t.eq(serial.output(), before, "an idle init prints nothing more")
  t.ok(not serial.output():find("Kernel panic"), "no panic")
end

function test_kernel_symbols_resolve()
  local f = linux.files()
  local addr = linux.symbol(f.system_map, "start_kernel")
  t.ok(addr ~= 0, "start_kernel")
  t.eq(addr >> 40, 0xffffff, "a kernel-text address (nokaslr)")
end
